"""`ctxjax check-logits HF_DIR [--workdir W [--step N]] [--lengths 128,4096]`: run the same tokens through ctxjax
and through transformers (PyTorch, float32) and say whether they give the same answers: per length the largest
logit difference and where it is, the mean KL divergence of the next-token distributions and how often the
top token agrees. Without --workdir ctxjax reads HF_DIR itself (is the import exact for this checkpoint?); with
it, the run's checkpoint is compared with HF_DIR, its export (will the deployed model compute what was trained?).
Exits 1 when a difference exceeds --atol or the top tokens agree at fewer than --min-top1 of the positions.
Needs torch and transformers."""

from __future__ import annotations

import argparse

import numpy as np

from ctxjax.errors import InputError
from ctxjax.commands.eval import int_list

DEFAULT_SOURCE = "stdlib:eval"
DEFAULT_ATOL = 1e-2
# Below 1 so that a real model's near-tie (two top logits within float32 noise) does not fail a long row; a
# wrong rotation or weight disagrees far more often (97.5% at 40 tokens of a tiny model with the wrong RoPE).
DEFAULT_MIN_TOP1 = 0.999


def lengths_argument(text: str) -> tuple[int, ...]:
    lengths = int_list(text)
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive comma-separated token counts, e.g. 128,4096; got {text!r}")
    return lengths


def _fraction_or_positive(upper: float | None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > 0 and (upper is None or value <= upper)):
            bound = f" and <= {upper}" if upper else ""
            raise argparse.ArgumentTypeError(f"expected a number > 0{bound}, got {text!r}")
        return value

    return parse


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
    add_tolerance_arguments(parser)
    parser.set_defaults(run=run)


def add_tolerance_arguments(parser) -> None:
    """--atol and --min-top1; shared with `ctxjax export --check`."""
    parser.add_argument("--atol", type=_fraction_or_positive(None), default=DEFAULT_ATOL,
                        help=f"largest logit difference accepted (default {DEFAULT_ATOL}, for real checkpoints; "
                             "exact float32 gives about 1e-6 on small models, so check those with 1e-4)")
    parser.add_argument("--min-top1", type=_fraction_or_positive(1.0), default=DEFAULT_MIN_TOP1,
                        help=f"smallest share of positions whose top token agrees (default {DEFAULT_MIN_TOP1})")


def text_rows(lengths, tokenizer, source: str) -> list[np.ndarray]:
    """One row per length: the source's documents, each after BOS, end to end (again from the start if the
    text runs out), cut to the length. Reads only as many documents as the longest row needs."""
    from ctxjax.evaluate.documents import iter_texts

    longest, pieces, total = max(lengths), [], 0
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for text in iter_texts(source):
        pieces.append(np.asarray(bos + tokenizer.encode(text), np.int32))
        total += len(pieces[-1])
        if total >= longest:
            break
    if not total:
        raise InputError(f"source {source} has no text; pass another --source or --random-tokens")
    stream = np.concatenate(pieces)
    stream = np.tile(stream, -(-longest // len(stream)))
    return [stream[:n] for n in lengths]


def random_rows(lengths, vocab_size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(0, vocab_size, n).astype(np.int32) for n in lengths]


def find_tokenizer(explicit: str | None, *directories: str | None):
    """`explicit`, else the tokenizer of the first of `directories` that holds one, else None (random ids). A
    tokenizer that is there but cannot be read is an error, not a silent switch to random ids."""
    from ctxjax.data.tokenizer import find_tokenizer_file
    from ctxjax.evaluate.loading import resolve_tokenizer

    if explicit:
        return resolve_tokenizer(explicit)
    found = [d for d in directories if d and find_tokenizer_file(d)]
    return resolve_tokenizer(None, found[0]) if found else None


def check_lengths(cfg, lengths, flag: str = "--lengths") -> None:
    """Refuse lengths the model cannot take, in one line naming `flag` (before anything is run or written)."""
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise InputError(f"{flag} must be positive token counts, e.g. 128,4096; got {lengths}")
    if cfg.position.name == "learned" and max(lengths) > cfg.max_seq_len:
        raise InputError(f"{flag} {max(lengths)} is beyond the model's learned position table ({cfg.max_seq_len} "
                         f"rows); choose {flag} up to {cfg.max_seq_len}")


def _tokens_fit(tokenizer, vocab_size: int) -> None:
    if tokenizer.vocab_size > vocab_size:
        raise InputError(f"the tokenizer has {tokenizer.vocab_size} ids and the model {vocab_size}: pass the model's "
                         "own --tokenizer, or --random-tokens")


def format_table(results: list[dict], atol: float, min_top1: float) -> list[str]:
    lines = ["| length | max abs diff | at position | mean abs diff | mean KL | max KL | top-1 agree "
             "| within tolerance |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['length']} | {r['max_abs']:.2e} | {r['position']} | {r['mean_abs']:.2e} | "
                     f"{r['mean_kl']:.2e} | {r['max_kl']:.2e} | {100 * r['top1_agreement']:.1f}% | "
                     f"{'yes' if _passes(r, atol, min_top1) else 'NO'} |")
    return lines


def _passes(result: dict, atol: float, min_top1: float) -> bool:
    return result["max_abs"] <= atol and result["top1_agreement"] >= min_top1  # NaN fails both


def check(cfg, params, reference, *, lengths, tokenizer=None, source: str = DEFAULT_SOURCE, seed: int = 0,
          atol: float = DEFAULT_ATOL, min_top1: float = DEFAULT_MIN_TOP1, ours: str = "ctxjax") -> int:
    """Compare (cfg, params) with transformers' model `reference` (a Hugging Face directory, or the model loaded
    from one) over one row per length, print the table and the verdict; 0 when every row is within tolerance,
    else 1. Text rows when there is a tokenizer, else random ids."""
    from ctxjax.hf.logit_check import compare_logits, load_reference

    if not atol > 0 or not 0 < min_top1 <= 1:
        raise InputError(f"atol must be > 0 and min_top1 in (0, 1]; got {atol}, {min_top1}")
    check_lengths(cfg, lengths)
    hf_dir = reference if isinstance(reference, str) else reference.name_or_path
    reference = load_reference(reference, cfg.vocab_size) if isinstance(reference, str) else reference
    if tokenizer is None:
        rows, tokens = random_rows(lengths, cfg.vocab_size, seed), f"random ids (seed {seed})"
    else:
        _tokens_fit(tokenizer, cfg.vocab_size)
        rows = text_rows(lengths, tokenizer, source)
        tokens = f"{source}, {type(tokenizer).__name__} of {tokenizer.vocab_size} ids"
    print(f"reference: transformers {type(reference).__name__} from {hf_dir} (float32)")
    print(f"ctxjax:    {ours} (float32)")
    print(f"tokens:    {tokens}")
    results = compare_logits(cfg, params, reference, rows)
    print("\n".join(format_table(results, atol, min_top1)))
    failed = [r for r in results if not _passes(r, atol, min_top1)]
    if failed:
        r = failed[0]
        print(f"at length {r['length']} the logits differ by up to {r['max_abs']:.3g} (position {r['position']}) and "
              f"the top tokens agree at {100 * r['top1_agreement']:.1f}% of positions, beyond --atol {atol} / "
              f"--min-top1 {min_top1}: the two models do not compute the same thing")
        return 1
    print(f"every length within --atol {atol} and --min-top1 {min_top1}: ctxjax and transformers give the same answers")
    return 0


def describe_checkpoint(workdir: str, step: int | None) -> str:
    return f"checkpoint of {workdir}" + (f" at step {step}" if step is not None else " (latest)")


def run(args) -> int:
    from ctxjax.evaluate.loading import load_hf_model, load_workdir_model
    from ctxjax.hf.logit_check import check_hf_directory, load_reference, require_torch

    check_hf_directory(args.hf_dir)
    require_torch()  # before loading anything
    if args.step is not None and not args.workdir:
        raise InputError("--step needs --workdir (the run whose checkpoint to compare)")
    if args.random_tokens and (args.tokenizer or args.source != DEFAULT_SOURCE):
        raise InputError("--random-tokens uses no text: drop --tokenizer / --source, or --random-tokens")
    if args.workdir:
        cfg, params, tokenizer_dir = load_workdir_model(args.workdir, args.step)
        ours = describe_checkpoint(args.workdir, args.step)
    else:
        (cfg, params), tokenizer_dir = load_hf_model(args.hf_dir), None
        ours = f"ctxjax's import of {args.hf_dir}"
    check_lengths(cfg, args.lengths)
    reference = load_reference(args.hf_dir, expected_vocab_size=cfg.vocab_size)
    tokenizer = None if args.random_tokens else find_tokenizer(args.tokenizer, args.hf_dir, tokenizer_dir)
    return check(cfg, params, reference, lengths=args.lengths, tokenizer=tokenizer, source=args.source,
                 seed=args.seed, atol=args.atol, min_top1=args.min_top1, ours=ours)
