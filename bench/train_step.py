"""Training throughput of one step, ctxjax vs the same Llama in Hugging Face transformers (PyTorch), side by side.

    python bench/train_step.py [--lengths 128,512] [--tokens 4096] [--repeats 5] [--kernels xla,blockwise]

Same architecture (the demo model by default: d_model 128, 4 layers, 4 heads on 2 KV heads, SwiGLU 512,
vocabulary 2048), same batch of tokens per step, float32, one forward + backward + AdamW update; each
measurement runs in its own process after one warm-up step. PyTorch uses sdpa attention and all CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODEL = dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512)
UNROLL = 4  # ctxjax only: configs/demo.py's scan_unroll


def measure_ctxjax(length: int, batch: int, repeats: int, kernel: str = "xla") -> float:
    import jax
    import numpy as np
    import optax

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ctxjax import ModelConfig, init_params
    from ctxjax.train.state import state_from_params
    from ctxjax.train.step import make_train_step

    cfg = ModelConfig(**MODEL, max_seq_len=length, attention=kernel, scan_unroll=UNROLL)
    tx = optax.adamw(1e-3)
    state = state_from_params(init_params(cfg, jax.random.PRNGKey(0)), tx)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    data = dict(tokens=tokens, positions=np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
                segment_ids=np.ones_like(tokens), targets=tokens, weights=np.ones(tokens.shape, np.float32))
    step = jax.jit(make_train_step(cfg, tx), donate_argnums=0)
    state, _ = step(state, data)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(repeats):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / repeats


def measure_torch(length: int, batch: int, repeats: int, kernel: str = "sdpa") -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=MODEL["vocab_size"], hidden_size=MODEL["d_model"],
                         intermediate_size=MODEL["d_ff"], num_hidden_layers=MODEL["n_layers"],
                         num_attention_heads=MODEL["n_heads"], num_key_value_heads=MODEL["n_kv_heads"],
                         max_position_embeddings=length, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, MODEL["vocab_size"], (batch, length))

    def step():
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch = tokens / length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernels", default="xla,blockwise", help="ctxjax attention kernels to measure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement, in this process
        name, kernel, length = args.child.split(":")
        measure = measure_ctxjax if name == "ctxjax" else measure_torch
        print(json.dumps({"seconds": measure(int(length), args.tokens // int(length), args.repeats, kernel)}))
        return
    print("| implementation | attention | length | batch | step (s) | tokens/s |")
    print("|---|---|---:|---:|---:|---:|")
    runs = [("ctxjax", kernel) for kernel in args.kernels.split(",")] + [("torch", "sdpa")]
    for length in map(int, args.lengths.split(",")):
        for name, kernel in runs:
            out = subprocess.run([sys.executable, __file__, "--child", f"{name}:{kernel}:{length}", "--tokens",
                                  str(args.tokens), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True).stdout
            seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
            batch = args.tokens // length
            print(f"| {name} | {kernel} | {length} | {batch} | {seconds:.3f} | {batch * length / seconds:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
