"""One bfloat16 train step vs length on a GPU: ctxjax `cudnn` and `blockwise` vs the same model in PyTorch
(sdpa).

    PYTHONPATH=. python bench/attention_gpu.py                       # on a machine with a CUDA GPU
    PYTHONPATH=. python bench/attention_gpu.py --lengths 4096,8192 --platform cpu   # a dry run anywhere

The model of bench/attention_memory.py (Llama-style, d=256, 4 layers, 4 heads of 64, vocab 8192, batch 1) in
bfloat16 compute with float32 parameters for ctxjax (`ExecutionConfig(dtype="bfloat16")`), and
`torch.autocast(bfloat16)` over float32 parameters for PyTorch: the mixed precision each side's users train
with. One process per implementation, all lengths in it:
- step time: the best of 3 timed steps after a warm-up step (synchronised);
- memory: for JAX the bytes XLA plans for the compiled step (arguments, outputs, temporaries; known before
  it runs); for PyTorch `torch.cuda.max_memory_allocated` over the timed steps. Both are device memory.
An implementation stops at the first length that fails (out of memory). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_memory import GIB, MODEL  # noqa: E402  (the same model as the CPU benchmark)

IMPLEMENTATIONS = ("cudnn", "blockwise", "torch-sdpa")


def best_step_time(step, sync, repeats=3):
    step()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def jax_step(kernel, length):
    import jax
    import jax.numpy as jnp
    import optax

    from ctxjax import ModelConfig, Transformer, init_params
    from ctxjax.execution import ExecutionConfig
    from ctxjax.loss import chunked_cross_entropy

    cfg = ModelConfig(vocab_size=MODEL["vocab"], d_model=MODEL["d_model"], n_layers=MODEL["n_layers"],
                      n_heads=MODEL["n_heads"], d_ff=MODEL["d_ff"], family="llama", max_seq_len=length,
                      param_dtype="float32")
    run = ExecutionConfig(attention=kernel, dtype="bfloat16")
    model, optimizer = Transformer(cfg, run), optax.adamw(1e-4)
    params = init_params(cfg, jax.random.PRNGKey(0))
    opt_state = optimizer.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, length), 0, MODEL["vocab"], jnp.int32)
    targets = jnp.roll(tokens, -1, axis=1)

    def train_step(params, opt_state):
        def loss_fn(params):
            hidden = model.apply({"params": params}, tokens, return_hidden=True)
            return chunked_cross_entropy(hidden, params["lm_head"]["kernel"], targets, chunk=1024)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(train_step).lower(params, opt_state).compile()
    plan = compiled.memory_analysis()
    planned = plan.argument_size_in_bytes + plan.output_size_in_bytes + plan.temp_size_in_bytes
    state = {"params": params, "opt": opt_state, "loss": None}

    def step():
        state["params"], state["opt"], state["loss"] = compiled(state["params"], state["opt"])

    seconds = best_step_time(step, lambda: jax.block_until_ready(state["loss"]))
    return dict(step_s=seconds, memory_gib=planned / GIB, loss=float(state["loss"]))


def torch_step(length):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=MODEL["vocab"], hidden_size=MODEL["d_model"],
                      intermediate_size=MODEL["d_ff"],
                      num_hidden_layers=MODEL["n_layers"], num_attention_heads=MODEL["n_heads"],
                      num_key_value_heads=MODEL["n_heads"], max_position_embeddings=length,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, MODEL["vocab"], (1, length), device=device)
    result = {}

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result["loss"] = float(loss)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()  # allocate the optimizer state outside the measured peak's baseline
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = best_step_time(step, sync)
    memory = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    return dict(step_s=seconds, memory_gib=memory, loss=result["loss"])


def child(name, lengths):
    for length in lengths:
        try:
            result = torch_step(length) if name == "torch-sdpa" else jax_step(name, length)
        except Exception as e:  # out of memory ends this implementation's sweep
            print("RESULT " + json.dumps(dict(name=name, length=length, failed=str(e).splitlines()[0][:120])),
                  flush=True)
            return
        print("RESULT " + json.dumps(dict(result, name=name, length=length)), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--platform", default="", help="JAX_PLATFORMS for the JAX children (e.g. cpu)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.child:
        return child(args.child, lengths)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TOKENIZERS_PARALLELISM="false")
    if args.platform:
        env["JAX_PLATFORMS"] = args.platform
    rows = []
    for name in args.only.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--lengths", args.lengths],
                             capture_output=True, text=True, env=env)
        found = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not found:
            last_line = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
            found = [dict(name=name, length=lengths[0], failed=last_line)]
        for r in found:
            print(json.dumps(r), flush=True)
        rows += found
    print("\n| implementation | length | step (s) | device memory (GiB) | note |\n|---|---:|---:|---:|---|")
    for r in sorted(rows, key=lambda r: (r["length"], IMPLEMENTATIONS.index(r["name"]))):
        step = f"{r['step_s']:.3f}" if "step_s" in r else "—"
        memory = f"{r['memory_gib']:.2f}" if r.get("memory_gib") is not None else "—"
        print(f"| {r['name']} | {r['length']} | {step} | {memory} | {r.get('failed', '')} |")


if __name__ == "__main__":
    main()
