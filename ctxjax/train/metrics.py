"""Where training numbers go: JSON lines (workdir/metrics.jsonl), TensorBoard event files
(workdir/tensorboard, written by tensorboardX, no TensorFlow needed) and a progress bar, all on process 0."""

from __future__ import annotations

import json
import logging
import os

import jax
from tqdm import tqdm

from ctxjax.fs import write_atomically

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool | None = None,
                 redo_evaluation: bool = False):
        """`redo_evaluation`: the run evaluates `start_step` again (a gated stage's end), so that step's
        evaluation and gate records are dropped too."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        # A run killed after its last checkpoint logged steps that the resumed run repeats: drop them, so each
        # step is recorded once (TensorBoard hides its own copies from purge_step on).
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            write_atomically(path, "".join(_records_up_to(path, start_step, redo_evaluation)).encode())
        self._jsonl = open(path, "a")
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()

    def progress(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._bar.n = step
        shown = {k: metrics[k] for k in ("loss", "tokens_per_s", "seq_len", "stage", "lr", "mfu")
                 if k in metrics}
        shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}
        if metrics.get("data_wait_fraction", 0) >= 0.05:  # the pipeline holds the step up: say so
            shown["data_wait"] = f"{metrics['data_wait_fraction']:.0%}"
        by_position = [f"{v:.3g}" for k, v in metrics.items() if k.startswith("loss/pos_")]
        if len(by_position) > 1:  # the loss at the original context, then at each doubling beyond it
            shown["loss_by_pos"] = "|".join(by_position)
        self._bar.set_postfix(shown)

    def note(self, line: str) -> None:
        """A line printed above the progress bar and logged (a stage's gate verdict)."""
        if self.enabled:
            self._bar.write(line)
            log.info(line)

    def set_total(self, total_steps: int) -> None:
        """The run grew (a stage was extended by its gate)."""
        if self.enabled:
            self._bar.total = total_steps
            self._bar.refresh()

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            self._tensorboard.close()
            self._jsonl.close()


def _records_up_to(path: str, last_step: int, redo_evaluation: bool = False) -> list[str]:
    """The lines of a metrics file up to `last_step`. A line that is not a JSON record (the torn last line
    that a kill or a full disk leaves mid-write) is dropped with a warning naming the file and line: the
    metrics are a log of the run, and a resume must never fail on them."""
    kept, torn = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = record.get("step", 0)
            except (ValueError, AttributeError):
                torn.append(number)
                continue
            redone = redo_evaluation and step == last_step and any(k.startswith(("eval/", "gate/"))
                                                                   for k in record)
            if step <= last_step and not redone:
                kept.append(line if line.endswith("\n") else line + "\n")
    if torn:
        log.warning("%s: dropped line(s) %s, which are not whole JSON records (left by a run that was killed "
                    "while writing)", path, ", ".join(map(str, torn)))
    return kept


def _plain(value):
    try:
        value = value.item()
    except AttributeError:
        pass
    return value
