"""The RULER grid: for each task, each length (and each depth where the task has one) `trials` prompts, all
prompts of a (task, length) decoded in one call of the completer (one batch, one compilation per shape), each
reply scored by the task's rule; per (task, length) the mean score, and RULER's average over tasks per length.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

from ctxjax.evaluate.progress import Progress
from ctxjax.evaluate.retrieval import Completer
from ctxjax.evaluate.ruler.common import TaskSpec

# A per-task margin of generated tokens beyond the longest answer list ("a, b, c" plus a full stop and so on).
ANSWER_MARGIN = 4


def answer_budget(tokenizer, answers: Sequence[list[str]]) -> int:
    """New tokens for a reply that lists a trial's answers, for the longest of `answers`, rounded up to a
    multiple of 32 so most tasks share one compiled decode loop (a model that stops early stops the loop)."""
    longest = max(len(tokenizer.encode(" " + ", ".join(a))) for a in answers) + ANSWER_MARGIN
    return -(-longest // 32) * 32


def run_task(spec: TaskSpec, complete: Completer, tokenizer, *, lengths: Sequence[int],
             depths: Sequence[float], trials: int, seed: int, answer_tokens: int | None = None,
             too_long: Callable[[int, int], str | None] | None = None, bar=None) -> dict:
    """{"cells": [...], "skipped": [...], "by_length": {length: mean score}} for one task.

    A length whose prompts cannot be built (too short for the template, a tokenizer that cannot write the
    text: `make_trial` raises ValueError) or that `too_long(length, new_tokens)` refuses is skipped with the
    reason. `bar` (a progress bar over the lengths) advances as each length is done or skipped."""
    rng = np.random.RandomState(seed)
    cells, skipped, by_length = [], [], {}
    for length in _advancing(sorted(lengths), bar or Progress.off().bar("", 0)):
        try:
            grid = [(d, spec.make_trial(length, d, rng)) for d in (depths if spec.uses_depth else [None])
                    for _ in range(trials)]
        except ValueError as error:
            skipped.append({"length": length, "reason": str(error)})
            continue
        new_tokens = answer_tokens or answer_budget(tokenizer, [t.answers for _, t in grid])
        reason = too_long(length, new_tokens) if too_long else None
        if reason:
            skipped.append({"length": length, "reason": reason})
            continue
        outputs = complete([t.prompt.tokens for _, t in grid], new_tokens)
        scores = [spec.score(out, t.answers) for out, (_, t) in zip(outputs, grid)]
        for depth in dict.fromkeys(d for d, _ in grid):
            rows = [i for i, (d, _) in enumerate(grid) if d == depth]
            first = grid[rows[0]][1]
            cells.append({
                "length": length, "depth": depth, "trials": len(rows),
                "score": float(np.mean([scores[i] for i in rows])),
                "prompt_tokens": float(np.mean([len(grid[i][1].prompt.tokens) for i in rows])),
                "needle_depth": float(np.mean([grid[i][1].prompt.depth for i in rows])) if spec.uses_depth
                else None,
                "answer_tokens": new_tokens,
                "example": {"answers": first.answers, "output": outputs[rows[0]]},
            })
        by_length[str(length)] = float(np.mean(scores))
    return {"cells": cells, "skipped": skipped, "by_length": by_length}


def _advancing(items, bar):
    """The items, advancing `bar` by one as the loop finishes with each (also when it `continue`s)."""
    for item in items:
        yield item
        bar.update(1)


def run_ruler(specs: dict[str, TaskSpec], complete: Completer, tokenizer, *, lengths: Sequence[int],
              depths: Sequence[float], trials: int, seed: int, answer_tokens: int | None = None,
              too_long: Callable[[int, int], str | None] | None = None,
              log: Callable[[str], None] = lambda message: None, progress: Progress | None = None) -> dict:
    """{"tasks": {name: run_task(...)}, "average": {length: {"score", "tasks"}}, "mean": float | None}.

    Each task draws from its own seed (the run's seed and the task's name), so adding or dropping a task does
    not change another's prompts. "average" is RULER's: the mean over the tasks measured at that length
    ("tasks" says how many); "mean" averages it over the lengths where every task was measured."""
    tasks = {}
    for name, spec in specs.items():
        depth_note = f" x depths {list(depths)}" if spec.uses_depth else ""
        log(f"ruler {name}: lengths {list(lengths)}{depth_note}, {trials} trials each")
        # One batch per length, so the bar counts lengths: its time left is the next batches'.
        bar = (progress or Progress.off()).bar(f"ruler {name}", total=len(lengths), unit="length")
        tasks[name] = run_task(spec, complete, tokenizer, lengths=lengths, depths=depths, trials=trials,
                               seed=zlib.crc32(f"{seed}:{name}".encode()), answer_tokens=answer_tokens,
                               too_long=too_long, bar=bar)
        bar.close()
    average = {}
    for length in sorted(lengths):
        scores = [t["by_length"][str(length)] for t in tasks.values() if str(length) in t["by_length"]]
        if scores:
            average[str(length)] = {"score": float(np.mean(scores)), "tasks": len(scores)}
    complete_lengths = [v["score"] for v in average.values() if v["tasks"] == len(tasks)]
    return {"tasks": tasks, "average": average,
            "mean": float(np.mean(complete_lengths)) if complete_lengths else None}
