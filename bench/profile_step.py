"""Where a ctxjax train step's time goes on XLA:CPU, and how fast each of its matmul shapes runs beside
PyTorch.

    python bench/profile_step.py --model medium --layers 2        # the 155M model's shapes, two layers
    python bench/profile_step.py --model medium --layers 2 --lora 8   # rank-8 adapters on q, k, v, o only
    python bench/profile_step.py --tiny                           # seconds: the suite runs it end to end

Part 1 traces one compiled step (`jax.profiler`, after a warm-up) of bench/train_step.py's model, with
`--layers` layers and `--batch` x `--length` tokens, and sums XLA's thunks by what they belong to (from each
op's name in the compiled HLO): the loss (the output projection and softmax), MLP, attention, embedding,
norms, the optimizer and global norms (`other`), each split into matmuls (`dot`: YNNPACK fusions and XLA dots)
and everything else. Plain `dot` thunks (here: the weight gradients, X^T dY, which YNNPACK does not take) run
on XLA's Eigen pool and appear in the trace far shorter than their FLOPs allow (they seem to end when
scheduled): the step's wall time minus the traced total shows about how much is missing. It also prints what
XLA's cost analysis says the step reads and writes (GB) and computes (GFLOP).

Part 2 times the step's matmul shapes alone, JAX (with the path XLA chose) beside torch.mm, forward
(X W), input gradient (dY W^T) and weight gradient (X^T dY), alternating, best of 5.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import LORA_ALPHA, MODELS  # noqa: E402

IGNORED = ("ThunkExecutor", "$", "Pjit", "Slinky", "while", "cond")  # containers, not work


def best_of(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def category(op_name: str, kind: str, name: str) -> str:
    if "/while/" in op_name or "loss" in op_name:
        return "loss"
    for part in ("embed", "attn", "mlp", "norm"):
        if f"/{part}" in op_name:
            return part
    return "attn" if name.startswith("ffi_call") or kind == "custom-call" else "other"


def profile(model: dict, layers: int, batch: int, length: int, kernel: str, lora: int = 0) -> None:
    import jax
    import numpy as np
    import optax

    from ctxjax import ModelConfig, Transformer, init_params
    from ctxjax.adaptation import AdaptationConfig
    from ctxjax.execution import ExecutionConfig
    from ctxjax.optimizer import trainable_labels
    from ctxjax.train.state import state_from_params
    from ctxjax.train.step import make_train_step

    cfg = ModelConfig(**{**model, "n_layers": layers}, max_seq_len=length)
    adaptation = AdaptationConfig(lora_rank=lora, lora_alpha=LORA_ALPHA)
    params = init_params(cfg, jax.random.PRNGKey(0), adaptation=adaptation)
    labels = trainable_labels(params, "") if lora else None  # with adapters: only they train
    tx = optax.adamw(1e-3)
    if lora:
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    state = state_from_params(params, tx)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    data = dict(tokens=tokens, positions=np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
                segment_ids=np.ones_like(tokens), targets=tokens, weights=np.ones(tokens.shape, np.float32))
    model = Transformer(cfg, ExecutionConfig(attention=kernel, scan_unroll=layers), adaptation)
    step = jax.jit(make_train_step(model, tx, labels=labels), donate_argnums=0)
    compiled = step.lower(state, data).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ops = {}  # HLO instruction -> (kind, op_name)
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\((.*)$", compiled.as_text(), re.M):
        name, op, rest = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', rest)
        ops[name] = ("dot" if "__ynn_fusion" in rest or op == "dot" else op,
                     op_name.group(1) if op_name else "")
    for _ in range(2):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        state, _ = step(state, data)
        jax.block_until_ready(state)
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        events = json.load(gzip.open(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                                               recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    seconds, top = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(IGNORED) or name not in ops:  # not an op of the step
            continue
        kind, op_name = ops.get(name, ("?", ""))
        seconds[(category(op_name, kind, name), "dot" if kind == "dot" else "other")] += e["dur"] / 1e6
        top[name] += e["dur"] / 1e6
    traced = sum(seconds.values())
    print(f"step: {wall:.3f} s wall, {traced:.3f} s traced; XLA's cost analysis: "
          f"{cost.get('flops', 0) / 1e9:.0f} GFLOP, {cost.get('bytes accessed', 0) / 1e9:.2f} GB accessed")
    print("| part | matmuls (s) | other (s) | share of traced |")
    print("|---|---:|---:|---:|")
    for part in sorted({p for p, _ in seconds}, key=lambda p: -(seconds[(p, "dot")] + seconds[(p, "other")])):
        dot, other = seconds[(part, "dot")], seconds[(part, "other")]
        print(f"| {part} | {dot:.3f} | {other:.3f} | {(dot + other) / traced:.0%} |")
    print("\nlongest thunks:")
    for name, s in top.most_common(12):
        print(f"  {s:.3f} s  {name}  {ops.get(name, ('?', ''))[1][-80:]}")


def matmuls(model: dict, tokens: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    d, f, v = model["d_model"], model["d_ff"], model["vocab_size"]
    print("\n| shape [tokens x in] x [in x out] | product | JAX path | JAX GFLOP/s | torch GFLOP/s |")
    print("|---|---|---|---:|---:|")
    for n_in, n_out in ((d, f), (f, d), (d, v)):
        x, w = rng.standard_normal((tokens, n_in), np.float32), rng.standard_normal((n_in, n_out), np.float32)
        dy = rng.standard_normal((tokens, n_out), np.float32)
        products = {"forward X W": (lambda x, w, dy: x @ w, lambda x, w, dy: x @ w),
                    "input grad dY W^T": (lambda x, w, dy: dy @ w.T, lambda x, w, dy: dy @ w.T),
                    "weight grad X^T dY": (lambda x, w, dy: x.T @ dy, lambda x, w, dy: x.T @ dy)}
        args = [jnp.asarray(a) for a in (x, w, dy)]
        targs = [torch.from_numpy(a) for a in (x, w, dy)]
        for product, (jax_fn, torch_fn) in products.items():
            jitted = jax.jit(jax_fn)
            path = "YNNPACK" if "__ynn_fusion" in jitted.lower(*args).compile().as_text() else "XLA dot"
            flops = 2.0 * tokens * n_in * n_out
            j = best_of(lambda: jitted(*args).block_until_ready())
            t = best_of(lambda: torch_fn(*targs))
            print(f"| [{tokens} x {n_in}] x [{n_in} x {n_out}] | {product} | {path} | "
                  f"{flops / j / 1e9:.0f} | {flops / t / 1e9:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium", choices=sorted(MODELS))
    parser.add_argument("--layers", type=int, default=2, help="layers of the profiled step (fewer: quicker)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--kernel", default="auto", help="ctxjax attention kernel")
    parser.add_argument("--lora", type=int, default=0, help="train rank-R adapters only (as train_step.py)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: an end-to-end check")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.layers, args.batch, args.length, args.lora = "tiny", 2, 2, 32, 2
    model = MODELS[args.model]
    print(f"model: {args.model} with {args.layers} layers, {args.batch} x {args.length} tokens, "
          f"attention {args.kernel}" + (f", LoRA r={args.lora} only" if args.lora else ""))
    profile(model, args.layers, args.batch, args.length, args.kernel, args.lora)
    matmuls(model, args.batch * args.length)


if __name__ == "__main__":
    main()
