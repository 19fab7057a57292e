"""Forward-only scoring throughput (what perplexity evaluation does), ctxjax vs transformers (PyTorch), side
by side on the same weights.

    python bench/scoring.py [--model smollm | --hf DIR] [--lengths 1024,4096] [--batch 4] [--windows 16]
    python bench/scoring.py --tiny          # seconds: the suite runs it end to end

Each row scores the same `--windows` random windows of L+1 tokens in batches of `--batch` (`ctxjax eval`'s
default batch_size is 4) to per-token negative log-likelihoods [n, L], in its own process after one warm-up
pass (which gives the NLL); tokens/s counts scored tokens. ctxjax: `ctxjax.evaluate.scoring.model_scorer`
with the evaluation's default execution (`auto` kernel, float32), the scorer `ctxjax eval` uses. PyTorch: the
model's forward (sdpa, float32, inference_mode) and a log-softmax gather of the targets
(`cross_entropy(reduction='none')` on the full logits, as perplexity scripts do). `mean NLL` is printed per
row: the two sides should agree to about 1e-5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (SHAPES, load_ctxjax, load_torch, model_dir, random_tokens, report, run_child,  # noqa: E402
                    timed)


def measure_ctxjax(hf_dir: str, length: int, batch: int, windows: int, repeats: int) -> dict:
    import numpy as np

    from ctxjax.evaluate.scoring import evaluation_execution, model_scorer

    cfg, params = load_ctxjax(hf_dir)
    data = random_tokens(cfg.vocab_size, (windows, length + 1))
    score = model_scorer(cfg, evaluation_execution(), params, batch)
    nll = score(data)  # the warm-up (its first batch compiles) gives the NLL
    seconds = timed(lambda: score(data), repeats)
    return {"seconds": seconds, "mean_nll": float(np.mean(nll, dtype=np.float64))}


def measure_torch(hf_dir: str, length: int, batch: int, windows: int, repeats: int) -> dict:
    import numpy as np
    import torch

    model = load_torch(hf_dir)
    data = torch.from_numpy(random_tokens(model.config.vocab_size, (windows, length + 1)).astype(np.int64))

    @torch.inference_mode()
    def score(windows):
        out = []
        for start in range(0, len(windows), batch):
            rows = windows[start:start + batch]
            logits = model(input_ids=rows[:, :-1]).logits.float()  # [B, L, V]
            out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, 1:],
                                                         reduction="none"))
        return torch.cat(out)

    nll = score(data)  # the warm-up gives the NLL
    seconds = timed(lambda: score(data), repeats)
    return {"seconds": seconds, "mean_nll": float(nll.double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm", choices=sorted(SHAPES), help="shape of a random Llama")
    parser.add_argument("--hf", help="a Hugging Face Llama directory to use instead of a random model")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--windows", type=int, default=16,
                        help="windows scored per length (a multiple of batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the windows (median)")
    parser.add_argument("--implementations", default="ctxjax,torch")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and lengths: an end-to-end check")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.lengths, args.batch, args.windows, args.repeats = "tiny", "32", 2, 4, 1
    if args.child:  # one measurement, in this process
        name, rest = args.child.split(":", 1)
        hf_dir, length = rest.rsplit(":", 1)
        measure = measure_ctxjax if name == "ctxjax" else measure_torch
        report(measure(hf_dir, int(length), args.batch, args.windows, args.repeats))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        hf_dir = model_dir(args, max(lengths) + 1, scratch)
        print(f"model: {args.hf or args.model}; {args.windows} windows per length in batches of {args.batch}")
        print("| implementation | length | batch | seconds | tokens/s | mean NLL | peak RSS (GiB) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for length in lengths:
            for name in args.implementations.split(","):
                result = run_child(__file__, ["--child", f"{name}:{hf_dir}:{length}",
                                              "--batch", str(args.batch), "--windows", str(args.windows),
                                              "--repeats", str(args.repeats)])
                tokens = args.windows * length
                print(f"| {name} | {length} | {args.batch} | {result['seconds']:.3f} | "
                      f"{tokens / result['seconds']:.0f} | {result['mean_nll']:.6f} | "
                      f"{result['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
