"""Peak memory and time of one full training step against sequence length: ctxjax kernels vs HF PyTorch
(sdpa).

    .venv/bin/python bench/attention_memory.py            # all measurements; writes docs/benchmarks.md + png
    .venv/bin/python bench/attention_memory.py --only blockwise --lengths 4096   # a quick look, prints only

One tiny Llama-style model (d=256, 4 layers, 4 heads of 64, SwiGLU 768, vocab 8192, untied, float32, batch 1)
is trained for one step (forward, backward, AdamW update) at each length, by each implementation, each
measurement in its own process so that peaks do not mix. Reported per process:
- peak RSS (`ru_maxrss`): everything the process ever held, runtime and compilation included;
- step time: wall time of one compiled step (JAX: the step after compilation; PyTorch: the second step);
- for JAX also the memory XLA planned for the step (arguments + outputs + temporaries), known before running:
  when the plan exceeds the cap the step is not run and only the plan is reported.
A watchdog in the parent kills a child whose RSS passes the cap (default 16 GiB) and skips longer lengths.
The JAX loss is the trainer's (`ctxjax.loss.objective_sums`: chunked over the length, its gradient computed in
the forward pass) on the model's final hidden states; PyTorch uses `LlamaForCausalLM(labels=...)`, i.e. full
logits, as its users do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
MODEL = dict(vocab=8192, d_model=256, n_layers=4, n_heads=4, d_ff=768)

# name -> (framework, attention kernel, remat policy, lengths)
RUNS = {
    "xla": ("jax", "xla", "none", (4096, 8192, 16384)),
    "blockwise": ("jax", "blockwise", "none", (4096, 8192, 16384, 32768)),
    "blockwise+remat": ("jax", "blockwise", "full", (4096, 8192, 16384, 32768, 65536)),
    # The fused C++ kernel for XLA:CPU (`auto`'s choice on CPU beyond 256 tokens).
    "cpu": ("jax", "cpu", "none", (4096, 8192, 16384, 32768)),
    "cpu+remat": ("jax", "cpu", "full", (4096, 8192, 16384, 32768, 65536)),
    # Everything recomputed but the attention output and log-sum-exp: full remat's memory, attention run once.
    "cpu+remat=attention": ("jax", "cpu", "attention", (4096, 8192, 16384, 32768, 65536)),
    # LongLoRA's S²-Attn (training only), in groups of a quarter of the length as the paper trains.
    "blockwise+s2": ("jax", "blockwise", "none", (4096, 8192, 16384, 32768)),
    "torch-sdpa": ("torch", "sdpa", "none", (4096, 8192, 16384, 32768)),
}


def _rss_bytes(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- children: one measurement each


def measure_jax(kernel, remat, length, cap_bytes, steps, s2_group=0):
    import jax
    import jax.numpy as jnp
    import optax

    from ctxjax import ModelConfig, Transformer, init_params
    from ctxjax.adaptation import AdaptationConfig
    from ctxjax.execution import ExecutionConfig
    from ctxjax.loss import objective_sums

    cfg = ModelConfig(vocab_size=MODEL["vocab"], d_model=MODEL["d_model"], n_layers=MODEL["n_layers"],
                      n_heads=MODEL["n_heads"], d_ff=MODEL["d_ff"], family="llama", max_seq_len=length)
    model = Transformer(cfg, ExecutionConfig(attention=kernel, remat=remat),
                        AdaptationConfig(shifted_sparse_group=s2_group))
    params = init_params(cfg, jax.random.PRNGKey(0))
    optimizer = optax.adamw(1e-4)
    opt_state = optimizer.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, length), 0, MODEL["vocab"], jnp.int32)
    targets = jnp.roll(tokens, -1, axis=1)

    def loss_fn(params):
        hidden = model.apply({"params": params}, tokens, return_hidden=True)
        return objective_sums(hidden, params["lm_head"]["kernel"], targets, chunk=1024)[0] / length

    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    compile_s = time.perf_counter() - start
    plan = compiled.memory_analysis()
    planned = plan.argument_size_in_bytes + plan.output_size_in_bytes + plan.temp_size_in_bytes
    result = dict(planned_gib=planned / GIB, compile_s=compile_s)
    if planned > cap_bytes:
        return dict(result, skipped=f"XLA planned {planned / GIB:.1f} GiB, over the cap")
    times = []
    for _ in range(steps):  # like PyTorch below, time the last of `steps` steps
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return dict(result, step_s=times[-1], first_step_s=times[0], loss=float(loss))


def measure_torch(length, steps):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=MODEL["vocab"], hidden_size=MODEL["d_model"],
                      intermediate_size=MODEL["d_ff"],
                      num_hidden_layers=MODEL["n_layers"], num_attention_heads=MODEL["n_heads"],
                      num_key_value_heads=MODEL["n_heads"], max_position_embeddings=length,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, MODEL["vocab"], (1, length))
    times = []
    for _ in range(steps):  # the first step allocates optimizer state and warms allocators; time the last
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return dict(step_s=times[-1], first_step_s=times[0], loss=float(loss))


def child(args):
    framework, kernel, remat, _ = RUNS[args.child]
    if framework == "jax":
        from ctxjax.xla_flags import apply_cpu_flags

        apply_cpu_flags()  # as the ctxjax command line does
        s2_group = args.length // 4 if args.child.endswith("+s2") else 0
        result = measure_jax(kernel, remat, args.length, args.cap_gib * GIB, args.steps, s2_group)
    else:
        result = measure_torch(args.length, args.steps)
    result.update(name=args.child, length=args.length, peak_rss_gib=_peak_rss_bytes() / GIB)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: run children, write the report


def run_child(name, length, cap_gib, time_limit_s, steps):
    cmd = [sys.executable, __file__, "--child", name, "--length", str(length), "--cap-gib", str(cap_gib),
           "--steps", str(steps)]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    env.pop("XLA_FLAGS", None)  # one real CPU device, not the test suite's simulated eight
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    start, peak_seen, killed = time.time(), 0, None
    while proc.poll() is None:
        try:
            peak_seen = max(peak_seen, _rss_bytes(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
        if peak_seen > cap_gib * GIB:
            killed = f"RSS passed the {cap_gib} GiB cap"
        elif time.time() - start > time_limit_s:
            killed = f"over the {time_limit_s} s time limit"
        if killed:
            proc.kill()
            break
        time.sleep(0.2)
    output = proc.communicate()[0]
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return dict(name=name, length=length, skipped=killed or f"failed: {output.strip().splitlines()[-1:]}")


def _cell(value, fmt):
    return "—" if value is None else format(value, fmt)


def write_report(results, out_md, out_png, command):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name in RUNS:
        done = [r for r in results if r["name"] == name and "step_s" in r]
        if not done:
            continue
        lengths = [r["length"] for r in done]
        ax_mem.plot(lengths, [r["peak_rss_gib"] for r in done], "o-", label=name)
        ax_time.plot(lengths, [r["step_s"] for r in done], "o-", label=name)
    for ax, label in ((ax_mem, "peak RSS (GiB)"), (ax_time, "train step time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)

    rows = ["| implementation | length | peak RSS (GiB) | step (s) | XLA-planned (GiB) | compile (s) "
            "| note |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f"| {r['name']} | {r['length']} | {_cell(r.get('peak_rss_gib'), '.2f')} | "
                    f"{_cell(r.get('step_s'), '.1f')} | {_cell(r.get('planned_gib'), '.2f')} | "
                    f"{_cell(r.get('compile_s'), '.0f')} | {r.get('skipped', '')} |")
    text = out_md.read_text() if out_md.exists() else "# Benchmarks\n"
    section = (f"## Attention memory: one train step vs length\n\n"
               f"Command (about {sum(r.get('wall_s', 0) for r in results) / 60:.0f} min on this machine):\n\n"
               f"    {command}\n\n"
               f"Model: Llama-style, d_model={MODEL['d_model']}, {MODEL['n_layers']} layers, "
               f"{MODEL['n_heads']} "
               f"heads of 64, SwiGLU {MODEL['d_ff']}, vocab {MODEL['vocab']}, float32, batch 1; AdamW. "
               f"Each row is its own process. `+remat` = `ExecutionConfig(remat='full')`, "
               f"`+remat=attention` = `remat='attention'`; `+s2` = LongLoRA's S²-Attn in groups of L/4 "
               f"(`AdaptationConfig(shifted_sparse_group=L // 4)`, training only).\n\n"
               + "\n".join(rows) + f"\n\n![memory and time vs length]({out_png.name})\n")
    marker = "## Attention memory: one train step vs length"
    if marker in text:
        head, _, tail = text.partition(marker)
        rest = tail.split("\n## ", 1)
        text = head + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    out_md.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    parser.add_argument("--lengths", default=None,
                        help="comma-separated lengths (default: each run's own list)")
    parser.add_argument("--cap-gib", type=float, default=16.0,
                        help="kill a measurement whose RSS passes this")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="seconds allowed per measurement")
    parser.add_argument("--steps", type=int, default=0, help="steps per measurement, the last one timed "
                        "(default: 2 up to 16k tokens, else 1; 1 for xla)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    args = parser.parse_args()
    if args.child:
        return child(args)
    names = args.only.split(",")
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown --only entries {unknown}; choose from {list(RUNS)}")
    lengths = {name: RUNS[name][3] if args.lengths is None else [int(x) for x in args.lengths.split(",")]
               for name in names}
    results, stopped = [], set()
    # Length-major order: the implementations compared at one length run close together in time, so a
    # change in the machine's load during the run affects them alike.
    for length in sorted({n for ls in lengths.values() for n in ls}):
        for name in names:
            if length not in lengths[name] or name in stopped:
                continue
            # Step time is the last of `steps`; the slow quadratic kernel and the longest runs take one.
            steps = args.steps or (1 if RUNS[name][1] == "xla" or length > 16384 else 2)
            start = time.time()
            result = run_child(name, length, args.cap_gib, args.time_limit, steps)
            result["wall_s"] = time.time() - start
            results.append(result)
            print(json.dumps(result), flush=True)
            if "step_s" not in result:
                stopped.add(name)  # a longer sequence will not fit either
    if not args.no_write and args.lengths is None and args.only == ",".join(RUNS):
        command = "python bench/attention_memory.py"
        write_report(results, REPO / "docs" / "benchmarks.md", REPO / "docs" / "attention_memory.png",
                     command)


if __name__ == "__main__":
    main()
