"""KV-cache generation throughput, `ctxjax.generate` vs transformers' `generate` (PyTorch), side by side on
the same weights: prefill tokens/s and decode tokens/s, greedy.

    python bench/generate.py [--model smollm | --hf DIR] [--prompts 1024,8192] [--batches 1,8] \
        [--new-tokens 64]
    python bench/generate.py --tiny         # seconds: the suite runs it end to end

Each row (implementation, prompt length, batch) runs in its own process: random prompts of exactly P tokens
(the same in both), greedy decoding of N new tokens with no stop token, after one warm-up of each call (ctxjax
compiles there). Prefill is timed as a generation of one token (the prompt's forward and the first token);
decode as the rest: (time of N tokens - time of 1 token), for N - 1 single-token steps per row, so
decode tokens/s = batch x (N - 1) / that difference. `total` is batch x N / the time of the whole generation.
ctxjax: `generate(cfg, params, prompts, N)` with its defaults (prefill with the `auto` kernel, a compiled
decode loop). PyTorch: `model.generate(..., do_sample=False, min_new_tokens=N, max_new_tokens=N)`, sdpa,
float32, its default dynamic cache. `same tokens` compares the PyTorch row's tokens with ctxjax's of the
same shape: rows equal / rows (with random weights near-ties of the logits may flip an argmax; a real
checkpoint, --hf, should give all rows equal).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (SHAPES, load_ctxjax, load_torch, model_dir, random_tokens, report, run_child,  # noqa: E402
                    timed)


def measure_ctxjax(hf_dir: str, prompt: int, batch: int, new_tokens: int, repeats: int) -> dict:
    from ctxjax.generate import generate

    cfg, params = load_ctxjax(hf_dir)
    prompts = random_tokens(cfg.vocab_size, (batch, prompt)).tolist()

    def run(n):
        return generate(cfg, params, prompts, n).sequences  # returns host lists: waits for the result

    # Compiles both; the warm-up's tokens are the row's (an 8k prompt at batch 8 costs a minute a pass).
    run(1)
    tokens = run(new_tokens)
    one, full = timed(lambda: run(1), repeats), timed(lambda: run(new_tokens), repeats)
    return {"one": one, "full": full, "tokens": tokens}


def measure_torch(hf_dir: str, prompt: int, batch: int, new_tokens: int, repeats: int) -> dict:
    import torch

    model = load_torch(hf_dir)
    ids = torch.from_numpy(random_tokens(model.config.vocab_size, (batch, prompt))).long()
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def run(n):
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, min_new_tokens=n,
                             max_new_tokens=n, pad_token_id=0)
        return out[:, prompt:].tolist()

    tokens = run(new_tokens)  # warm-up, prefill and decode
    one, full = timed(lambda: run(1), repeats), timed(lambda: run(new_tokens), repeats)
    return {"one": one, "full": full, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm", choices=sorted(SHAPES), help="shape of a random Llama")
    parser.add_argument("--hf", help="a Hugging Face Llama directory to use instead of a random model")
    parser.add_argument("--prompts", default="1024,8192", help="prompt lengths in tokens")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed generations of each kind (median)")
    parser.add_argument("--implementations", default="ctxjax,torch")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and prompts: an end-to-end check")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.prompts, args.batches, args.new_tokens, args.repeats = "tiny", "32", "2", 4, 1
    if args.child:  # one measurement, in this process
        name, rest = args.child.split(":", 1)
        hf_dir, prompt, batch = rest.rsplit(":", 2)
        measure = measure_ctxjax if name == "ctxjax" else measure_torch
        report(measure(hf_dir, int(prompt), int(batch), args.new_tokens, args.repeats))
        return
    prompts = [int(n) for n in args.prompts.split(",")]
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as scratch:
        # + 64: ctxjax left-pads prompts to a multiple of 64
        hf_dir = model_dir(args, max(prompts) + n + 64, scratch)
        print(f"model: {args.hf or args.model}; greedy, {n} new tokens")
        print("| implementation | prompt | batch | prefill (s) | prefill tokens/s | decode tokens/s | "
              "total (s) | total tokens/s | same tokens | peak RSS (GiB) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for prompt in prompts:
            for batch in map(int, args.batches.split(",")):
                tokens = {}
                for name in args.implementations.split(","):
                    r = run_child(__file__, ["--child", f"{name}:{hf_dir}:{prompt}:{batch}",
                                             "--new-tokens", str(n), "--repeats", str(args.repeats)])
                    tokens[name] = r["tokens"]
                    same = (f"{sum(a == b for a, b in zip(r['tokens'], tokens['ctxjax']))}/{batch}"
                            if name != "ctxjax" and "ctxjax" in tokens else "")
                    decode = batch * (n - 1) / (r["full"] - r["one"]) if n > 1 and r["full"] > r["one"] else 0
                    print(f"| {name} | {prompt} | {batch} | {r['one']:.3f} | "
                          f"{batch * prompt / r['one']:.0f} | {decode:.1f} | {r['full']:.3f} | "
                          f"{batch * n / r['full']:.1f} | {same} | "
                          f"{r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
