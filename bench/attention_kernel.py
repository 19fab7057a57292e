"""One attention call, forward and backward, at one length: ctxjax `cpu` and `blockwise` (per tile) vs
PyTorch.

    .venv/bin/python bench/attention_kernel.py                       # 16k tokens, 4 heads of 64, batch 1
    .venv/bin/python bench/attention_kernel.py --length 4096 --tiles 512x512,1024x512
    .venv/bin/python bench/attention_kernel.py --window 4096     # Mistral-style sliding window, both sides

The attention layer of bench/attention_memory.py's model on its own (causal, float32, random q, k, v), so
tile sizes and kernel changes can be compared in seconds rather than whole train steps. Each measurement runs
in its own process. For blockwise it also profiles one forward+backward and sums the durations of XLA's
operations into matrix multiplications (the `dot` fusions) and everything else (softmax, masks, slicing, loop
overhead); the `cpu` kernel is one fused call, so it has no such split.
Independent operations may run at once on different cores, so the two sums can exceed the wall time; they
say where the time goes, e.g. whether the matmuls alone already take longer than PyTorch's whole call.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

HEADS, HEAD_DIM = 4, 64


def best_of(fn, repeats=3):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_torch(length, window):
    import torch

    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, requires_grad=True) for _ in range(3))
    # sdpa has no window argument: a windowed causal mask is an explicit [L, L] boolean (as transformers
    # does).
    mask = None
    if window:
        distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        mask = (distance >= 0) & (distance < window)

    def attention():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                is_causal=mask is None)

    def forward():
        with torch.no_grad():
            attention()

    def forward_backward():
        attention().sum().backward()

    return dict(forward_s=best_of(forward), forward_backward_s=best_of(forward_backward))


def _dot_share(run):
    """Seconds XLA spent in dot fusions and in all other thunks during one `run()`, from a profiler trace."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        run()
        jax.profiler.stop_trace()
        path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    # XLA:CPU names library matmul fusions after the library (ynn_/xnn_/onednn_fusion) and plain ones dot.N.
    seconds = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "Pjit", "Slinky", "while", "cond")):
            continue
        kind = "dots" if "_fusion" in name and name.split("_fusion")[0] in ("ynn", "xnn", "onednn") \
            or name.startswith("dot") else "other"
        seconds[kind] += e["dur"] / 1e6
    return dict(dots_s=seconds["dots"], other_ops_s=seconds["other"])


def measure_jax(length, tile, window):
    """`tile` is "cpu" for the fused CPU kernel, else blockwise's QxK tile."""
    import functools

    import jax
    import jax.numpy as jnp

    from ctxjax.attention.blockwise import blockwise_attention
    from ctxjax.attention.cpu import cpu_attention

    if tile == "cpu":
        kernel = cpu_attention
    else:
        block_q, block_k = (int(x) for x in tile.split("x"))
        kernel = functools.partial(blockwise_attention, block_q=block_q, block_k=block_k)
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, length, HEADS, HEAD_DIM)) for i in range(3))
    positions = jnp.arange(length, dtype=jnp.int32)[None]
    segments = jnp.zeros((1, length), jnp.int32)

    def attention_sum(q, k, v):
        return kernel(q, k, v, q_segment_ids=segments, kv_segment_ids=segments, q_positions=positions,
                      kv_positions=positions, scale=HEAD_DIM**-0.5, sliding_window=window).sum()

    forward = jax.jit(attention_sum)
    forward_backward = jax.jit(jax.grad(attention_sum, argnums=(0, 1, 2)))
    result = dict(forward_s=best_of(lambda: jax.block_until_ready(forward(q, k, v))),
                  forward_backward_s=best_of(lambda: jax.block_until_ready(forward_backward(q, k, v))))
    if tile == "cpu":
        return result
    return dict(result, **_dot_share(lambda: jax.block_until_ready(forward_backward(q, k, v))))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--tiles", default="512x512,1024x512", help="comma-separated QxK tile sizes")
    parser.add_argument("--window", type=int, default=0, help="sliding window (0: plain causal attention)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "torch":
            result = measure_torch(args.length, args.window)
        else:
            result = measure_jax(args.length, args.child, args.window)
        print("RESULT " + json.dumps(result))
        return
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    print("| implementation | length | window | forward (s) | forward+backward (s) | profiled dots (s) | "
          "profiled other (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for child in ["torch", "cpu"] + args.tiles.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", child, "--length", str(args.length),
                              "--window", str(args.window)],
                             capture_output=True, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"| {child} | {args.length} | {args.window} | failed: "
                  f"{(out.stderr.strip().splitlines() or ['?'])[-1]} |")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        name = {"torch": "torch sdpa", "cpu": "ctxjax cpu"}.get(child, f"blockwise {child}")
        dots = f"{r['dots_s']:.2f}" if "dots_s" in r else "—"
        other = f"{r['other_ops_s']:.2f}" if "other_ops_s" in r else "—"
        print(f"| {name} | {args.length} | {args.window or '—'} | {r['forward_s']:.2f} | "
              f"{r['forward_backward_s']:.2f} | {dots} | {other} |", flush=True)


if __name__ == "__main__":
    main()
