"""`ctxjax check-logits HF_DIR [--workdir W [--step N]] [--lengths 128,4096]`: run the same tokens through ctxjax
and through transformers (PyTorch, float32) and say whether they give the same answers: per length the largest
logit difference and where it is, the mean KL divergence of the next-token distributions and how often the
top token agrees. Without --workdir ctxjax reads HF_DIR itself (is the import exact for this checkpoint?); with
it, the run's checkpoint is compared with HF_DIR, its export (will the deployed model compute what was trained?).
Exits 1 when a difference exceeds --atol. Needs torch and transformers."""

from __future__ import annotations

import argparse

import numpy as np

from ctxjax.commands.eval import _ints

DEFAULT_SOURCE = "stdlib:eval"


def lengths_argument(text: str) -> tuple[int, ...]:
    lengths = _ints(text)
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated token counts, e.g. 128,4096; got {text!r}")
    return lengths


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("check-logits", help="compare ctxjax's logits with transformers' on a checkpoint",
                                   description=__doc__)
    parser.add_argument("hf_dir", help="a Hugging Face model directory (e.g. written by ctxjax export)")
    parser.add_argument("--workdir", help="compare this run's checkpoint (default: ctxjax's import of HF_DIR)")
    parser.add_argument("--step", type=int, help="checkpoint step of --workdir (default: the latest)")
    parser.add_argument("--lengths", type=lengths_argument, default=(128,),
                        help="comma-separated token counts, one row each; add one past the original context to "
                             "check RoPE scaling (default: 128)")
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help=f"text the rows are cut from, a ctxjax.data source spec (default: {DEFAULT_SOURCE})")
    parser.add_argument("--tokenizer", help="tokenizer path or 'bytes' (default: HF_DIR's, else the run's)")
    parser.add_argument("--random-tokens", action="store_true",
                        help="uniformly random token ids instead of text (also used when there is no tokenizer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    parser.add_argument("--atol", type=_positive_float, default=1e-2,
                        help="largest logit difference accepted (default 0.01; both sides compute in float32)")
    parser.set_defaults(run=run)


def text_rows(lengths, tokenizer, source: str) -> list[np.ndarray]:
    """One row per length: the source's documents, each after BOS, end to end (again from the start if the
    text runs out), cut to the length."""
    from ctxjax.evaluate.documents import load_documents

    stream = np.concatenate(load_documents(source, tokenizer, max_documents=None) or [np.zeros(0, np.int32)])
    if not len(stream):
        raise ValueError(f"source {source} has no text; pass another --source or --random-tokens")
    longest = max(lengths)
    stream = np.tile(stream, -(-longest // len(stream)))
    return [stream[:n] for n in lengths]


def random_rows(lengths, vocab_size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(0, vocab_size, n).astype(np.int32) for n in lengths]


def find_tokenizer(explicit: str | None, *directories: str | None):
    """`explicit`, else the first of `directories` holding a tokenizer, else None (rows of random ids)."""
    from ctxjax.evaluate.loading import resolve_tokenizer

    if explicit:
        return resolve_tokenizer(explicit)
    try:
        return resolve_tokenizer(None, *directories)
    except ValueError:
        return None


def _check_lengths(cfg, lengths) -> None:
    from ctxjax.evaluate.runner import beyond_position_table

    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be positive token counts, e.g. 128,4096; got {lengths}")
    beyond = beyond_position_table(cfg, lengths)
    if beyond:
        raise ValueError(f"length {min(beyond)} is {beyond[min(beyond)]}; choose --lengths up to {cfg.max_seq_len}")


def format_table(results: list[dict], atol: float) -> list[str]:
    lines = ["| length | max abs diff | at position | mean abs diff | mean KL | max KL | top-1 agree | within atol |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['length']} | {r['max_abs']:.2e} | {r['position']} | {r['mean_abs']:.2e} | "
                     f"{r['mean_kl']:.2e} | {r['max_kl']:.2e} | {100 * r['top1_agreement']:.1f}% | "
                     f"{'yes' if r['max_abs'] <= atol else 'NO'} |")
    return lines


def check(cfg, params, hf_dir: str, *, lengths, reference=None, tokenizer=None, source: str = DEFAULT_SOURCE,
          seed: int = 0, atol: float = 1e-2, ours: str = "ctxjax") -> int:
    """Compare (cfg, params) with transformers on `hf_dir` over one row per length, print the table and the
    verdict; 0 when every difference is within `atol`, else 1. Text rows when there is a tokenizer."""
    from ctxjax.data.tokenizer import check_vocab_fits
    from ctxjax.hf.logit_check import compare_logits, load_reference

    if not atol > 0:
        raise ValueError(f"atol must be > 0; got {atol}")
    _check_lengths(cfg, lengths)
    reference = reference if reference is not None else load_reference(hf_dir)
    if tokenizer is None:
        rows, tokens = random_rows(lengths, cfg.vocab_size, seed), f"random ids (seed {seed})"
    else:
        check_vocab_fits(tokenizer, cfg.vocab_size)
        rows, tokens = text_rows(lengths, tokenizer, source), f"{source}, {type(tokenizer).__name__} of {tokenizer.vocab_size} ids"
    print(f"reference: transformers {type(reference).__name__} from {hf_dir} (float32)")
    print(f"ctxjax:    {ours} (float32)")
    print(f"tokens:    {tokens}")
    results = compare_logits(cfg, params, hf_dir, rows, reference=reference)
    print("\n".join(format_table(results, atol)))
    failed = [r for r in results if not r["max_abs"] <= atol]  # `not <=` also catches NaN
    if failed:
        worst = max(failed, key=lambda r: r["max_abs"])
        print(f"logits differ by up to {worst['max_abs']:.3g} (length {worst['length']}, position "
              f"{worst['position']}), more than --atol {atol}: the two models do not compute the same thing")
        return 1
    print(f"every length within --atol {atol}: ctxjax and transformers give the same answers")
    return 0


def run(args) -> int:
    from ctxjax.evaluate.loading import load_hf_model, load_workdir_model
    from ctxjax.hf.logit_check import load_reference

    if args.step is not None and not args.workdir:
        raise ValueError("--step needs --workdir (the run whose checkpoint to compare)")
    reference = load_reference(args.hf_dir)  # first: a missing torch or an unloadable directory fails fast
    if args.workdir:
        cfg, params, tokenizer_dir = load_workdir_model(args.workdir, args.step)
        ours = f"checkpoint of {args.workdir}" + (f" at step {args.step}" if args.step is not None else " (latest)")
    else:
        (cfg, params), tokenizer_dir = load_hf_model(args.hf_dir), None
        ours = f"ctxjax's import of {args.hf_dir}"
    tokenizer = None if args.random_tokens else find_tokenizer(args.tokenizer, args.hf_dir, tokenizer_dir)
    return check(cfg, params, args.hf_dir, lengths=args.lengths, reference=reference, tokenizer=tokenizer,
                 source=args.source, seed=args.seed, atol=args.atol, ours=ours)
