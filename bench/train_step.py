"""Training throughput of one step, ctxjax vs the same Llama in Hugging Face transformers (PyTorch), side by
side.

    python bench/train_step.py [--lengths 128,512] [--tokens 4096] [--repeats 5] [--kernels xla,blockwise,cpu]
    python bench/train_step.py --model medium --lora 8 --lengths 1024 --tokens 2048   # LoRA vs PEFT
    python bench/train_step.py --tiny     # seconds: the suite runs it end to end

Same architecture (`--model demo`: d_model 128, 4 layers, 4 heads on 2 KV heads, SwiGLU 512, vocabulary 2048;
`--model medium`: 155M parameters), same batch of tokens per step, float32, one forward + backward + AdamW
update; each measurement runs in its own process after one warm-up step and reports its peak RSS too. PyTorch
uses sdpa attention and all CPU threads. With `--lora R` both sides train only rank-R adapters on q, k, v, o
(ctxjax: `AdaptationConfig.lora_rank`; PyTorch: PEFT's `LoraConfig`, pip install peft), the rest frozen.
ctxjax runs as a library user's own jitted step (`make_train_step`), with what `import ctxjax` sets up.
MFU: the model FLOPs per token that the trainer counts (`ctxjax.flops`, the same work for both sides; frozen
weights get no weight gradient) times tokens/s, over the float32 matmul peak measured (by
`ctxjax.flops.measured_peak_flops`, in its own process) at the start of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import run_child  # noqa: E402

MODELS = {
    "demo": dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512),
    "medium": dict(vocab_size=32000, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, d_ff=2816),
    "tiny": dict(vocab_size=512, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64),
}
LORA_ALPHA = 16.0


def measure_ctxjax(model: dict, length: int, batch: int, repeats: int, kernel: str = "xla",
                   lora: int = 0) -> float:
    import jax
    import numpy as np
    import optax

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ctxjax import ModelConfig, Transformer, init_params
    from ctxjax.adaptation import AdaptationConfig
    from ctxjax.execution import ExecutionConfig
    from ctxjax.optimizer import trainable_labels
    from ctxjax.train.state import state_from_params
    from ctxjax.train.step import make_train_step

    cfg = ModelConfig(**model, max_seq_len=length)
    # Every layer unrolled (configs/demo.py's scan_unroll=4 of 4 layers): on CPU a rolled scan copies each
    # layer's weights out of the stacked parameters and its gradients back in, every step.
    run = ExecutionConfig(attention=kernel, scan_unroll=model["n_layers"])
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
    step = jax.jit(make_train_step(Transformer(cfg, run, adaptation), tx, labels=labels), donate_argnums=0)
    state, _ = step(state, data)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(repeats):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / repeats


def measure_cli(model: dict, length: int, batch: int, repeats: int, kernel: str = "auto",
                lora: int = 0) -> float:
    """The same model and batch trained by `ctxjax train` (the trainer's own step: its AdamW with clipping and
    decay mask, loss by position, the data pipeline; the byte tokenizer over the stdlib corpus): seconds per
    step from the tokens/s it logs over the steps after the one that compiled."""
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, repo)
    from ctxjax import cli

    shape = {**model, "qk_norm": False, "max_seq_len": length}
    overrides = [f"--config.model.{k}={v}" for k, v in shape.items()] + [
        f"--config.execution.attention={kernel}", f"--config.execution.scan_unroll={model['n_layers']}",
        "--config.data.source=stdlib", "--config.data.tokenizer=bytes", "--config.data.mode=pack",
        f"--config.tokens_per_step={batch * length}",
        f"--config.stages=[{{'steps': {repeats + 1}, 'seq_len': {length}, 'lr': 1e-3}}]",
        f"--config.log_every={repeats + 1}", "--config.eval_at_stage_end=False", "--config.export_dir=",
        "--config.checkpoint.every_steps=0"]
    with tempfile.TemporaryDirectory() as work:
        code = cli.main(["train", "--config", os.path.join(repo, "configs", "demo.py"), "--workdir", work,
                         *overrides])
        if code:
            raise SystemExit(f"ctxjax train exited with {code}")
        with open(os.path.join(work, "metrics.jsonl")) as f:
            speed = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r][-1]
    return batch * length / speed


def measure_torch(model: dict, length: int, batch: int, repeats: int, kernel: str = "sdpa",
                  lora: int = 0) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=model["vocab_size"], hidden_size=model["d_model"],
                         intermediate_size=model["d_ff"], num_hidden_layers=model["n_layers"],
                         num_attention_heads=model["n_heads"], num_key_value_heads=model["n_kv_heads"],
                         max_position_embeddings=length, attn_implementation="sdpa")
    net = LlamaForCausalLM(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(r=lora, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    tokens = torch.randint(0, model["vocab_size"], (batch, length))

    def step():
        net(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def flops_per_token(model: dict, length: int, lora: int) -> float:
    """The trainer's count (ctxjax.flops): with adapters every matmul weight is frozen (adapters not
    counted)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ctxjax import ModelConfig, flops

    cfg = ModelConfig(**model, max_seq_len=length)
    return flops.flops_per_token(cfg, length, flops.matmul_params(cfg) if lora else 0)


def measure_peak() -> float:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ctxjax.flops import measured_peak_flops

    return measured_peak_flops()


def measure_torch_peak() -> float:
    """PyTorch's float32 matmul rate, measured as the peak is (not MFU's denominator: it says how much of a
    gap between the two sides is the BLAS each one calls)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch

    from ctxjax.flops import best_matmul_rate

    def square_matmul(size):
        a = torch.ones(size, size)
        return lambda: a @ a  # CPU: returns when done

    return best_matmul_rate(square_matmul)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch = tokens / length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernels", default="xla,blockwise,cpu", help="ctxjax attention kernels to measure")
    parser.add_argument("--model", default="demo", choices=sorted(MODELS))
    parser.add_argument("--lora", type=int, default=0,
                        help="train rank-R adapters only, beside full training")
    parser.add_argument("--cli", action="store_true",
                        help="also `ctxjax train` on the same model and batch (first kernel; full training)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, LoRA too: an end-to-end check")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.lengths, args.tokens, args.repeats = "tiny", "32", 64, 1
        args.kernels, args.lora, args.cli = "xla", 2, True
    model = MODELS[args.model]
    if args.child in ("peak", "torch-peak"):
        print(json.dumps({"peak_flops": measure_peak() if args.child == "peak" else measure_torch_peak()}))
        return
    if args.child:  # one measurement, in this process
        name, kernel, length, lora = args.child.split(":")
        measure = {"ctxjax": measure_ctxjax, "cli": measure_cli, "torch": measure_torch}[name]
        seconds = measure(model, int(length), args.tokens // int(length), args.repeats, kernel, int(lora))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
        print(json.dumps({"seconds": seconds, "peak_rss_gib": peak}))
        return
    def child(*extra):
        return run_child(__file__, [*extra, "--model", args.model])

    peak, torch_peak = (child("--child", which)["peak_flops"] for which in ("peak", "torch-peak"))
    print(f"model: {args.model}; float32 matmul peak measured now: {peak / 1e9:.0f} GFLOP/s (XLA; MFU's "
          f"denominator), {torch_peak / 1e9:.0f} GFLOP/s (PyTorch)")
    print("| implementation | attention | trains | length | batch | step (s) | tokens/s | MFU | "
          "peak RSS (GiB) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    ranks = [0, args.lora] if args.lora else [0]
    kernels = args.kernels.split(",")
    # The command line trains adapters only on an imported model: its row is for full training.
    runs = [(name, kernel, rank) for rank in ranks
            for name, kernel in [("ctxjax", k) for k in kernels]
            + ([("cli", kernels[0])] if args.cli and not rank else []) + [("torch", "sdpa")]]
    for length in map(int, args.lengths.split(",")):
        for name, kernel, rank in runs:
            result = child("--child", f"{name}:{kernel}:{length}:{rank}", "--tokens", str(args.tokens),
                           "--repeats", str(args.repeats))
            batch, trains = args.tokens // length, f"LoRA r={rank}" if rank else "everything"
            tokens_per_s = batch * length / result["seconds"]
            mfu = tokens_per_s * flops_per_token(model, length, rank) / peak
            label = "ctxjax (CLI)" if name == "cli" else name
            print(f"| {label} | {kernel} | {trains} | {length} | {batch} | {result['seconds']:.3f} | "
                  f"{tokens_per_s:.0f} | {mfu:.1%} | {result['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
