"""What an evaluation or a generation shows while it runs, and how fast it went.

`Progress` draws one bar per task and length (tqdm, as training draws its steps, with the rate and the time
left) on a terminal; `Progress.off()` (the library's default) draws nothing, so tests and batch jobs stay
quiet. `Meter` counts the tokens each task ran through the model (scored: perplexity windows and prompts
read; generated: decoded tokens) and its wall time, for results.json and summary.md. Times include
compilation: they are what a user waits for.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from typing import Callable, TextIO


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """A factory of progress bars: `bar = progress.bar("passkey 1024", total=25, unit="prompt")`, then
    `bar.update(n)` and `bar.close()`. Disabled: every bar is a no-op."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, **tqdm_options):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tqdm_options = tqdm_options

    @classmethod
    def off(cls) -> "Progress":
        return cls(enabled=False)

    @classmethod
    def on_terminal(cls, stream: TextIO | None = None, **tqdm_options) -> "Progress":
        """Bars when `stream` (default stderr) is a terminal; none on a file, a pipe or captured output."""
        stream = stream if stream is not None else sys.stderr
        return cls(stream, enabled=_isatty(stream), **tqdm_options)

    def bar(self, desc: str, total: int, unit: str = "it"):
        if not self.enabled or total <= 0:
            return _NoBar()
        from tqdm import tqdm

        # A terminal that reports no width (a bare pty, some consoles) would get an empty bar from tqdm.
        width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 100, "nrows": 40}
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, **width, **self.tqdm_options)


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class Meter:
    """Tokens scored and generated and wall seconds per task: `with meter.task("ppl"): ...` times the task,
    and `meter.add(scored=..., generated=...)` inside it counts tokens (padding copies excluded)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.tasks: dict[str, dict] = {}
        self._current: str | None = None

    @contextlib.contextmanager
    def task(self, name: str):
        entry = self.tasks.setdefault(name, {"wall_s": 0.0, "tokens_scored": 0, "tokens_generated": 0})
        previous, self._current = self._current, name
        start = self.clock()
        try:
            yield
        finally:
            entry["wall_s"] += self.clock() - start
            self._current = previous

    def add(self, scored: int = 0, generated: int = 0) -> None:
        if self._current is None:
            return
        entry = self.tasks[self._current]
        entry["tokens_scored"] += int(scored)
        entry["tokens_generated"] += int(generated)

    def summary(self) -> dict:
        """{"tasks": {name: {wall_s, tokens_scored, tokens_generated, scored_per_s, generated_per_s}},
        "total": {...}}: what results.json records under "throughput"."""
        tasks = {name: _with_rates(entry) for name, entry in self.tasks.items()}
        total = {key: sum(t[key] for t in self.tasks.values())
                 for key in ("wall_s", "tokens_scored", "tokens_generated")}
        return {"tasks": tasks, "total": _with_rates(total)}


def _with_rates(entry: dict) -> dict:
    wall = entry["wall_s"]
    return {**entry, "wall_s": round(wall, 3),
            "scored_per_s": round(entry["tokens_scored"] / wall, 1) if wall > 0 else None,
            "generated_per_s": round(entry["tokens_generated"] / wall, 1) if wall > 0 else None}


def throughput_lines(throughput: dict | None) -> list[str]:
    """The summary.md section for results["throughput"] ([] when absent: results of older versions)."""
    if not throughput or not throughput.get("tasks"):
        return []

    def row(name, t):
        rate = lambda v: f"{v:,.0f}" if v is not None else "-"  # noqa: E731
        return (f"| {name} | {t['wall_s']:.1f} | {t['tokens_scored']:,} | {rate(t['scored_per_s'])} | "
                f"{t['tokens_generated']:,} | {rate(t['generated_per_s'])} |")

    lines = ["## Throughput", "",
             "Tokens the model scored (perplexity windows and prompts it read) and generated, per task; wall "
             "time includes compilation.", "",
             "| task | wall s | tokens scored | scored tok/s | tokens generated | generated tok/s |",
             "|---|---|---|---|---|---|"]
    lines += [row(name, t) for name, t in throughput["tasks"].items()]
    return lines + [row("all", throughput["total"]), ""]
