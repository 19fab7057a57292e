"""The exceptions a user meets, and what the command line makes of them.

- `InputError`: bad input — a config field, a data source, a checkpoint, a Hugging Face directory, an
  argument. The message is one line naming the file, field or step concerned and the fix; `ctxjax` prints it
  and exits 2. (A subclass of ValueError, which is what bad values have always raised.)
- `CheckpointDamaged`: an `InputError` for one step of a work directory that cannot be read; resuming
  skips it.
- `GateFailed`: an `InputError` raised when a stage's gate (a condition on its stage-end evaluation) fails
  and the stage may not be extended again; its checkpoint is saved first, so a rerun with another gate
  resumes from it (exit 2).
- `TrainingDiverged`: the loss became NaN/inf; `ctxjax train` exits 3 after saying which step.

Anything else is a bug in ctxjax (or in a library under it) and keeps its traceback (exit 1).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any


class InputError(ValueError):
    """A one-line, user-facing problem with what was given; the message names the fix."""


class CheckpointDamaged(InputError):
    """Checkpoint `step` of a work directory cannot be read: `item` (state, data, meta or the step directory)
    is missing or damaged."""

    def __init__(self, message: str, step: int, item: str):
        super().__init__(message)
        self.step, self.item = step, item


class GateFailed(InputError):
    """A stage's gate failed after its checkpoint was saved: the message names the metric, its value and the
    threshold."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; raised at the next sync point, naming the step."""


EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C


def read_json(path: str, what: str = "") -> Any:
    """json.load of `path`, with any failure (missing, unreadable, not UTF-8, not JSON) as one InputError
    naming the file (`what` says what it should be, e.g. "a Hugging Face config")."""
    kind = f" ({what})" if what else ""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}{kind} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path}{kind} is a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}{kind} is not UTF-8 text (byte {e.start}); is it the right file?") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}{kind} is not valid JSON: {e.msg} at line {e.lineno} column "
                         f"{e.colno}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}{kind}: {e.strerror}") from None


@functools.cache
def warn_once(message: str) -> None:
    """A warning about the user's input (a defensible default taken, a setting that does nothing), logged once
    per process however often the value is checked."""
    logging.getLogger("ctxjax").warning(message)
