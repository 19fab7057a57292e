"""Perplexity by context length, three ways, plus loss by token position.

Conventions. A window of length L is L+1 consecutive tokens of one document: L inputs, and the L next tokens
as targets; target j (0-based) is predicted from j+1 tokens of context. Every window is exactly L long, so a
number reported "at L" was measured at L: a document with fewer than L+1 tokens is skipped at that length
(and counted), never scored with a shorter window.

- nonoverlapping (ALiBi's tables): windows at 0, L, 2L, ...; every target of every window counts. The tail
  of a document shorter than one window is not scored. Early targets of each window see little context,
  so this flatters any model that merely tolerates long inputs.
- sliding (HF's perplexity guide, PI, YaRN): windows at 0, S, 2S, ... and one more ending at the document's
  end when S does not divide; the first window scores all its targets, every later one only the targets no
  earlier window scored, so each target is scored once with at least L-S tokens of context (S is capped at
  L, so at lengths below the stride the windows touch instead of skipping targets).
- fixed_target (Kazemnejad et al., App. F): the last K tokens of each document, scored by the window of
  length L that ends at the document's end. The documents are the same at every length (those long enough
  for the longest evaluated length), so the targets are identical and only the context grows: the one
  measurement that shows whether more context is used.
- per-position loss: the mean NLL of target j over the non-overlapping windows, averaged in buckets of j.
"""

from __future__ import annotations

import math

import numpy as np

from ctxjax.evaluate.progress import Progress
from ctxjax.evaluate.scoring import Scorer


def nonoverlapping_starts(n_tokens: int, length: int) -> list[tuple[int, int]]:
    """(window start, first target that counts) for every full window; [] when the document is too short."""
    return [(s, 0) for s in range(0, n_tokens - length, length)]


def sliding_starts(n_tokens: int, length: int, stride: int) -> list[tuple[int, int]]:
    """Windows at 0, stride, ... plus one ending at the document's end; targets already scored are masked.
    Needs stride <= length (a longer stride would skip targets)."""
    if n_tokens < length + 1:
        return []
    last = n_tokens - length - 1
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)  # stride does not divide: one more window, aligned to the document's end
    out, scored_until = [], 0  # targets [0, scored_until) of the document (by target index) are done
    for s in starts:
        first = max(0, scored_until - s)
        out.append((s, first))
        scored_until = s + length
    return out


def fixed_target_starts(n_tokens: int, length: int, target_tokens: int) -> list[tuple[int, int]]:
    if n_tokens < length + 1 or length < target_tokens:
        return []
    return [(n_tokens - length - 1, length - target_tokens)]


def pick_windows(starts_per_doc: list[list[tuple[int, int]]], max_windows: int) -> list[tuple[int, int, int]]:
    """(document, start, first counted target) of at most `max_windows` windows, taken round-robin over the
    documents (the first window of each, then the second, ...), so one long document cannot crowd out the
    others; in document order, so a document's windows stay together."""
    picked: list[tuple[int, int, int]] = []
    for rank in range(max((len(s) for s in starts_per_doc), default=0)):
        for d, starts in enumerate(starts_per_doc):
            if rank < len(starts) and len(picked) < max_windows:
                picked.append((d, *starts[rank]))
    return sorted(picked)


def score_windows(docs: list[np.ndarray], picked: list[tuple[int, int, int]], length: int, scorer: Scorer,
                  chunk: int | None = None, bar=None):
    """NLL [n, L] of the `picked` windows, the mask [n, L] of targets that count, and how many documents
    contributed. The scorer sees `chunk` windows at a time (None: all at once); `bar` advances after each."""
    if not picked:
        return np.zeros((0, length), np.float32), np.zeros((0, length), bool), 0
    rows = np.stack([docs[d][start:start + length + 1] for d, start, _ in picked])
    mask = np.arange(length)[None, :] >= np.asarray([first for _, _, first in picked])[:, None]
    chunk = chunk or len(rows)
    nll = []
    for start in range(0, len(rows), chunk):
        nll.append(np.asarray(scorer(rows[start:start + chunk]), np.float64))
        if bar is not None:
            bar.update(len(nll[-1]))
    return np.concatenate(nll), mask, len({d for d, _, _ in picked})


def summarize(nll: np.ndarray, mask: np.ndarray, documents: int) -> dict:
    tokens = int(mask.sum())
    mean = float(nll[mask].sum() / tokens)
    return {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": tokens, "windows": int(len(nll)),
            "documents": documents}


def position_buckets(nll: np.ndarray, bucket_size: int) -> dict:
    """Mean NLL of targets [b, b + bucket_size) over all windows: the per-position loss curve."""
    per_position = nll.mean(axis=0)
    starts = list(range(0, len(per_position), bucket_size))
    return {"bucket_size": bucket_size, "starts": starts,
            "nll": [float(per_position[s:s + bucket_size].mean()) for s in starts]}


def perplexity_by_length(docs: list[np.ndarray], lengths, scorer_for_length, *, methods, stride: int | None,
                         target_tokens: int, bucket_size: int | None, max_windows: int,
                         too_long: dict[int, str] | None = None, fixed_context: int | None = None,
                         chunk: int | None = None, progress: Progress | None = None) -> dict:
    """{"<method>": {"<L>": summary}, "per_position": {"<L>": buckets}, "skipped": [...]} over `lengths`.

    `scorer_for_length(L)` returns the scorer for windows of length L. `too_long` maps lengths the model
    cannot take to the reason (e.g. beyond a learned position table); those are skipped like lengths longer
    than every document, each with its reason. `fixed_context`: the fixed target set is the documents that
    fit a window this long (default: the longest usable length). `progress` draws a bar per length that
    advances every `chunk` windows.
    """
    progress = progress or Progress.off()
    lengths = sorted(lengths)
    too_long = dict(too_long or {})
    longest_doc = max((len(d) for d in docs), default=0)
    results: dict = {m: {} for m in methods}
    results["per_position"] = {}
    results["skipped"] = skipped = []
    usable = []
    for length in lengths:
        if length in too_long:
            skipped.append({"length": length, "method": "all", "reason": too_long[length]})
        elif longest_doc < length + 1:
            skipped.append({"length": length, "method": "all",
                            "reason": f"longer than every held-out document (longest: {longest_doc} tokens, "
                                      f"a window of {length} needs {length + 1})"})
        else:
            usable.append(length)
    # The fixed target set: documents long enough for the longest usable length, the same at every length.
    fixed_len = fixed_context or max((n for n in usable if n >= target_tokens), default=None)
    fixed_docs = [d for d in docs if fixed_len is not None and len(d) >= fixed_len + 1]
    bucket = bucket_size or max(1, min(lengths) // 8)

    for length in usable:
        scorer = scorer_for_length(length)
        # Every window of this length first, so its progress bar knows the total.
        picked = {"nonoverlapping": (docs, pick_windows([nonoverlapping_starts(len(d), length) for d in docs],
                                                        max_windows))}
        step = min(stride or max(1, length // 4), length)  # a stride beyond L would leave targets unscored
        if "sliding" in methods:
            picked["sliding"] = (docs, pick_windows([sliding_starts(len(d), length, step) for d in docs],
                                                    max_windows))
        if "fixed_target" in methods:
            if length < target_tokens:
                skipped.append({"length": length, "method": "fixed_target",
                                "reason": f"shorter than the target set (target_tokens={target_tokens})"})
            else:
                picked["fixed_target"] = (fixed_docs, pick_windows(
                    [fixed_target_starts(len(d), length, target_tokens) for d in fixed_docs], max_windows))
        bar = progress.bar(f"ppl {length}", total=sum(len(p) for _, p in picked.values()), unit="window")
        scored = {m: score_windows(d, p, length, scorer, chunk, bar) for m, (d, p) in picked.items()}
        bar.close()
        results["per_position"][str(length)] = position_buckets(scored["nonoverlapping"][0], bucket)
        if "nonoverlapping" in methods:
            results["nonoverlapping"][str(length)] = summarize(*scored["nonoverlapping"])
        if "sliding" in methods:
            results["sliding"][str(length)] = {**summarize(*scored["sliding"]), "stride": step}
        if "fixed_target" in scored:
            results["fixed_target"][str(length)] = {**summarize(*scored["fixed_target"]),
                                                    "target_tokens": target_tokens}
    return results
