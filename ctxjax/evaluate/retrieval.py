"""What passkey retrieval and needle-in-a-haystack share: a needle placed at a chosen depth of filler text, a
question at the end, greedy generation, and an accuracy grid over lengths x depths.

Prompts are built from token ids of separately encoded pieces (prefix, filler units, needle, question), so
the prompt length is controlled in tokens (within one filler unit of the requested length, never above it)
and the needle's token offset is known exactly. A task supplies the pieces and a scorer; `run_grid` does the
rest. `complete(prompts, max_new_tokens) -> texts` is injected, so the grid logic is testable without a model.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ctxjax.errors import InputError
from ctxjax.evaluate.progress import Progress

Completer = Callable[[list[list[int]], int], list[str]]
THRESHOLDS = (0.8, 0.2)  # YaRN's "passkey context" (>= 80%) and PI's k_max criterion (>= 20%)


@dataclasses.dataclass
class Prompt:
    tokens: list[int]
    needle_start: int  # token offset of the needle in `tokens`
    filler_before: int  # filler tokens before the needle
    filler_total: int  # filler tokens in the whole prompt

    @property
    def depth(self) -> float:
        """The fraction of the filler that precedes the needle (0: right after the prefix)."""
        return self.filler_before / self.filler_total if self.filler_total else 0.0


def template_tokens(prefix: Sequence[int], needle: Sequence[int], question: Sequence[int]) -> int:
    return len(prefix) + len(needle) + len(question)


def build_prompt(prefix: Sequence[int], filler_units: Sequence[Sequence[int]], needle: Sequence[int],
                 question: Sequence[int], length: int, depth: float, first_unit: int = 0,
                 cycle: bool = True) -> Prompt:
    """prefix + filler + needle (at `depth` of the filler) + filler + question, at most `length` tokens.

    Filler units are taken in order from `first_unit` (cycling, unless `cycle` is False: then each unit at
    most once) while they fit; the needle goes between the units where the filler before it comes closest to
    `depth` of all the filler."""
    fixed = template_tokens(prefix, needle, question)
    if length < fixed:
        raise InputError(f"a prompt of {length} tokens cannot hold the template ({fixed} tokens without "
                         f"filler); use lengths >= {fixed}")
    if (cycle and not filler_units) or any(len(u) == 0 for u in filler_units):
        raise InputError("the filler needs at least one non-empty unit of text")
    units, used = [], 0
    most = float("inf") if cycle else len(filler_units) - first_unit
    while len(units) < most:
        unit = filler_units[(first_unit + len(units)) % len(filler_units)]
        if used + len(unit) > length - fixed:
            break
        units.append(unit)
        used += len(unit)
    before = np.concatenate([[0], np.cumsum([len(u) for u in units])]).astype(int)  # filler before unit k
    split = int(np.argmin(np.abs(before - depth * used)))
    filler = [t for u in units[:split] for t in u], [t for u in units[split:] for t in u]
    tokens = [*prefix, *filler[0], *needle, *filler[1], *question]
    return Prompt([int(t) for t in tokens], len(prefix) + len(filler[0]), len(filler[0]), used)


def build_prompt_with_others(prefix: Sequence[int], filler_units: Sequence[Sequence[int]],
                             needle: Sequence[int], others: Sequence[Sequence[int]], question: Sequence[int],
                             length: int, depth: float, rng: np.random.RandomState, what: str) -> Prompt:
    """`build_prompt` with more sentences (`others`: distractors, further values) among the filler: as much
    filler as fits beside all of them, each of `others` between two random filler units, `needle` at `depth`.
    `what` names the fixed parts in the error when `length` cannot hold them."""
    budget = length - template_tokens(prefix, needle, question) - sum(map(len, others))
    if budget < 0:
        raise InputError(f"a prompt of {length} tokens cannot hold {what} ({length - budget} tokens without "
                         f"filler); use lengths >= {length - budget}")
    units: list[Sequence[int]] = []
    while len(filler_units[len(units) % len(filler_units)]) <= budget:  # as much filler as fits
        units.append(filler_units[len(units) % len(filler_units)])
        budget -= len(units[-1])
    for other in others:
        units.insert(rng.randint(len(units) + 1), other)
    return build_prompt(prefix, units, needle, question, length, depth, cycle=False)


@dataclasses.dataclass
class Trial:
    prompt: Prompt
    expected: str  # what the scorer looks for


def run_grid(make_trial: Callable[[int, float, np.random.RandomState], Trial],
             score: Callable[[str, str], bool], complete: Completer, *, lengths: Sequence[int],
             depths: Sequence[float], trials: int, answer_tokens: int, batch_size: int, seed: int,
             skip: dict[int, str] | None = None, progress: Progress | None = None,
             name: str = "grid") -> dict:
    """Accuracy per (length, depth) cell over `trials` prompts each, and the summary lengths.

    `make_trial(length, depth, rng)` may raise ValueError (e.g. a length shorter than the template): that
    length is skipped with the message as its reason, like the lengths in `skip` (length -> reason).
    `progress` draws a bar per length ("<name> <length>") that advances with every batch of prompts."""
    progress = progress or Progress.off()
    rng = np.random.RandomState(seed)
    cells, skipped = [], []
    for length in sorted(lengths):
        if skip and length in skip:
            skipped.append({"length": length, "reason": skip[length]})
            continue
        try:
            grid = [(depth, [make_trial(length, depth, rng) for _ in range(trials)]) for depth in depths]
        except ValueError as error:
            skipped.append({"length": length, "reason": str(error)})
            continue
        bar = progress.bar(f"{name} {length}", total=sum(len(cell) for _, cell in grid), unit="prompt")
        for depth, cell in grid:
            outputs = []
            for start in range(0, len(cell), batch_size):
                batch = cell[start:start + batch_size]
                outputs += complete([t.prompt.tokens for t in batch], answer_tokens)
                bar.update(len(batch))
            correct = sum(score(out, t.expected) for out, t in zip(outputs, cell))
            cells.append({
                "length": length, "depth": depth, "trials": len(cell), "correct": int(correct),
                "accuracy": correct / len(cell),
                "prompt_tokens": float(np.mean([len(t.prompt.tokens) for t in cell])),
                "needle_depth": float(np.mean([t.prompt.depth for t in cell])),
                "example": {"expected": cell[0].expected, "output": outputs[0]},
            })
        bar.close()
    return {"cells": cells, "skipped": skipped,
            **{f"max_length_{round(100 * t)}": max_length_at(cells, t) for t in THRESHOLDS}}


def max_length_at(cells: list[dict], threshold: float) -> int | None:
    """The largest length whose accuracy is >= threshold at every depth (None: no such length)."""
    by_length: dict[int, list[float]] = {}
    for cell in cells:
        by_length.setdefault(cell["length"], []).append(cell["accuracy"])
    passing = [n for n, accs in by_length.items() if min(accs) >= threshold]
    return max(passing) if passing else None
