"""The verdict of a logit check as `ctxjax check-logits` and `ctxjax export --check` print it: token rows cut
from text (or random ids), compared by `logit_check.compare_logits`, one table row per length, and the exit
code (0 when every row is within tolerance)."""

from __future__ import annotations

import numpy as np

from ctxjax.data.tokenizer import find_tokenizer_file
from ctxjax.errors import InputError
from ctxjax.evaluate.documents import iter_texts
from ctxjax.evaluate.loading import resolve_tokenizer
from ctxjax.evaluate.logit_check import compare_logits, load_reference

DEFAULT_SOURCE = "stdlib:eval"
DEFAULT_ATOL = 1e-2
# Below 1 so that a real model's near-tie (two top logits within float32 noise) does not fail a long row; a
# wrong rotation or weight disagrees far more often (97.5% at 40 tokens of a tiny model with the wrong RoPE).
DEFAULT_MIN_TOP1 = 0.999


def text_rows(lengths, tokenizer, source: str) -> list[np.ndarray]:
    """One row per length: the source's documents, each after BOS, end to end (again from the start if the
    text runs out), cut to the length. Reads only as many documents as the longest row needs."""
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
    if explicit:
        return resolve_tokenizer(explicit)
    found = [d for d in directories if d and find_tokenizer_file(d)]
    return resolve_tokenizer(None, found[0]) if found else None


def check_lengths(cfg, lengths, flag: str = "--lengths") -> None:
    """Refuse lengths the model cannot take, in one line naming `flag` (before anything is run or written)."""
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise InputError(f"{flag} must be positive token counts, e.g. 128,4096; got {lengths}")
    limit = cfg.position.max_positions(cfg)
    if limit is not None and max(lengths) > limit:
        raise InputError(f"{flag} {max(lengths)} is beyond {cfg.position.limit_description(cfg)}; choose "
                         f"{flag} up to {limit}")


def _tokens_fit(tokenizer, vocab_size: int) -> None:
    if tokenizer.vocab_size > vocab_size:
        raise InputError(f"the tokenizer has {tokenizer.vocab_size} ids and the model {vocab_size}: pass the "
                         "model's own --tokenizer, or --random-tokens")


def format_table(results: list[dict], atol: float, min_top1: float) -> list[str]:
    lines = ["| length | max abs diff | at position | mean abs diff | mean KL | max KL | top-1 agree "
             "| within tolerance |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r["top1_agreement"] is None:  # a bare encoder's hidden states: no distributions to compare
            mean_kl = max_kl = top1 = "-"
        else:
            mean_kl, max_kl = f"{r['mean_kl']:.2e}", f"{r['max_kl']:.2e}"
            top1 = f"{100 * r['top1_agreement']:.1f}%"
        lines.append(f"| {r['length']} | {r['max_abs']:.2e} | {r['position']} | {r['mean_abs']:.2e} | "
                     f"{mean_kl} | {max_kl} | {top1} | {'yes' if _passes(r, atol, min_top1) else 'NO'} |")
    return lines


def _compared(result: dict) -> str:
    return "last hidden states" if result["top1_agreement"] is None else "logits"


def _passes(result: dict, atol: float, min_top1: float) -> bool:
    top1 = result["top1_agreement"]  # None: hidden states, compared by max_abs alone
    return result["max_abs"] <= atol and (top1 is None or top1 >= min_top1)  # NaN fails both


def check(cfg, params, reference, *, lengths, tokenizer=None, source: str = DEFAULT_SOURCE, seed: int = 0,
          atol: float = DEFAULT_ATOL, min_top1: float = DEFAULT_MIN_TOP1, ours: str = "ctxjax") -> int:
    """Compare (cfg, params) with transformers' model `reference` (a Hugging Face directory, or the model
    loaded from one) over one row per length, print the table and the verdict; 0 when every row is within
    tolerance, else 1. Text rows when there is a tokenizer, else random ids."""
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
    if cfg.output_head == "none":
        print("compared:  last hidden states (a bare encoder has no logits)")
    results = compare_logits(cfg, params, reference, rows)
    print("\n".join(format_table(results, atol, min_top1)))
    failed = [r for r in results if not _passes(r, atol, min_top1)]
    if failed:
        r = failed[0]
        agree = ("" if r["top1_agreement"] is None else
                 f" and the top tokens agree at {100 * r['top1_agreement']:.1f}% of positions")
        print(f"at length {r['length']} the {_compared(r)} differ by up to {r['max_abs']:.3g} (position "
              f"{r['position']}){agree}, beyond --atol {atol} / --min-top1 {min_top1}: the two models do not "
              "compute the same thing")
        return 1
    print(f"every length within --atol {atol} and --min-top1 {min_top1}: ctxjax and transformers give the "
          "same answers")
    return 0


def describe_checkpoint(workdir: str, step: int | None) -> str:
    return f"checkpoint of {workdir}" + (f" at step {step}" if step is not None else " (latest)")
