"""`Checkpointer`: the Orbax CheckpointManager of one work directory, WORKDIR/checkpoints/<step>/.

Every step directory holds three items:
- `state`: the train state, any pytree of arrays ({'step', 'params', 'opt_state'}, or {'params'} alone for a
  params-only checkpoint); saved sharded as it is, restored into whatever shardings the caller asks for.
- `data`: the data iterator's JSON state, so a resumed run continues the token stream where it stopped.
- `meta`: JSON with the model config, train config, stage, step and `params_only` (see
  ctxjax.checkpoint.meta).

Orbax writes each step into a temporary directory and renames it when complete, so a crash never leaves a
checkpoint that looks finished. Async saves copy arrays to host memory before `save` returns, so the caller
may donate or overwrite the state right after; the write to disk continues in the background.

A step damaged after it was written (a truncated file, a missing one, a disk error) raises `CheckpointDamaged`
naming the step and the item; `newest_readable` then falls back to the newest step that reads, and a training
run moves the damaged ones aside (`set_aside`: into WORKDIR/damaged_checkpoints, never deleted).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from ctxjax.checkpoint.meta import check_compatible, upgrade
from ctxjax.errors import CheckpointDamaged, InputError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"  # where a training run moves steps it could not read (never deleted)
TOKENIZER = "tokenizer"
T = TypeVar("T")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CHECKPOINTS)


def tokenizer_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), TOKENIZER)


def workdir_protected_paths(workdir: str, meta: dict | None = None) -> list[str]:
    """What an export from this work directory must never replace, hold or write inside: its checkpoints,
    tokenizer, logs and token cache, and the Hugging Face model it was imported from (named by `meta`, else by
    the latest checkpoint's metadata when it can be read)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    paths = [checkpoint_dir(workdir), tokenizer_dir(workdir), os.path.join(workdir, "metrics.jsonl"),
             os.path.join(workdir, "tensorboard"), os.path.join(workdir, "token_cache")]
    if meta is None and os.path.isdir(checkpoint_dir(workdir)):
        try:
            with Checkpointer(workdir, read_only=True) as checkpointer:
                meta = checkpointer.restore_meta() if checkpointer.all_steps() else {}
        except InputError:
            meta = {}
    meta = meta or {}
    sources = (meta.get("imported_from"), meta.get("train_config", {}).get("init_from_hf"))
    return paths + [os.path.abspath(s) for s in sources if s]


class Checkpointer:
    """Save and restore train state + data-iterator state + metadata in WORKDIR/checkpoints.

    save_every: `should_save(step)` is true on multiples of it (and when a preemption signal arrived); None
    saves only when forced. Steps already on disk are never overwritten.
    read_only: open existing checkpoints without creating directories (export, eval).
    """

    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, save_every: int | None = None,
                 async_save: bool = True, read_only: bool = False):
        self.workdir = os.path.abspath(os.path.expanduser(workdir))
        self.directory = checkpoint_dir(workdir)
        if read_only and not os.path.isdir(self.directory):
            raise InputError(_no_checkpoints_message(self.workdir))
        self.save_every, self.read_only = save_every, read_only
        # Orbax's own read_only mode logs four warnings per open; refusing saves here is quieter.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            should_save_fn=lambda step, _last: bool(save_every) and step % save_every == 0,
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=not read_only,  # leftovers of a crashed save
        )
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # ---- what is there ----
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def resolve_step(self, step: int | None) -> int:
        """`step`, or the latest one when None; a one-line error naming the available steps otherwise."""
        steps = self.all_steps()
        if not steps:
            raise InputError(_no_checkpoints_message(self.workdir))
        if step is None:
            return steps[-1]
        if step not in steps:
            raise InputError(f"{self.workdir} has no checkpoint at step {step}; available steps: {steps}")
        return step

    # ---- saving ----
    def should_save(self, step: int) -> bool:
        """True on multiples of save_every and after a preemption notice, never for a step already saved."""
        return step not in self._manager.all_steps() and self._manager.should_save(step)

    def save(self, step: int, state, *, data_state: dict, meta: dict, force: bool = False,
             wait: bool = False) -> bool:
        """Save when `should_save(step)` or `force`; returns whether a save was started. An existing step is
        kept as it is (False). `meta` comes from `checkpoint_meta(...)`; its step and params_only are set here
        from `step` and `state`, so they cannot disagree with what is stored."""
        if self.read_only:
            raise InputError(f"this Checkpointer of {self.workdir} was opened read_only; open it without to "
                             "save")
        if step in self._manager.all_steps() or not (force or self.should_save(step)):
            return False
        meta = {**meta, "step": int(step), "params_only": is_params_only(state)}
        for name, value in (("data_state", data_state), ("meta", meta)):
            _check_json(name, value)  # fail here, not later in a background thread
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))
        with _Writing(self, step):
            saved = self._manager.save(step, args=args, force=True)
        if wait:
            self.wait()
        return bool(saved)

    # ---- restoring ----
    def restore_meta(self, step: int | None = None) -> dict:
        """The metadata JSON alone (cheap: no arrays are read). See ctxjax.checkpoint.meta."""
        step = self.resolve_step(step)
        with self._reading(step, "meta"):
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            if not isinstance(meta, dict):
                raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
            return upgrade(meta)

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step` (default: latest).

        abstract_state: a pytree of jax.ShapeDtypeStruct (or arrays) whose shardings say where each restored
        array goes, on any mesh or device count; a leaf without a sharding is restored as a numpy array.
        It may name a subset of what was saved: `{'params': abstract_params}` restores only the params, from a
        full checkpoint or from a params-only one (`meta['params_only']`), whose data_state is {}.
        """
        step = self.resolve_step(step)
        meta = self.restore_meta(step)
        if meta.get("params_only") and not is_params_only(abstract_state):
            raise InputError(f"checkpoint {step} in {self.workdir} holds only params (it was imported or "
                             "written by write_params_checkpoint); restore {'params': abstract_params} and "
                             "build fresh optimizer state")
        restore_args = jax.tree.map(_restore_arg, abstract_state)
        with self._reading(step, "data"):
            data = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
            if data is not None and not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        with self._reading(step, "state"):
            args = ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=True))
            state = self._manager.restore(step, args=args).state
        return state, dict(data or {}), meta

    def check_compatible(self, model_config, step: int | None = None) -> dict:
        """restore_meta(step), after refusing (one line) a checkpoint of a model with other parameter
        shapes."""
        meta = self.restore_meta(step)
        check_compatible(meta, model_config, workdir=self.workdir)
        return meta

    def saved_shapes(self, step: int | None = None):
        """The stored state's tree of jax.ShapeDtypeStruct (no shardings), read from metadata only."""
        step = self.resolve_step(step)
        with self._reading(step, "state"):
            tree = self._manager.item_metadata(step)["state"].tree
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))

    # ---- damage ----
    def _reading(self, step: int, item: str):
        return _Reading(self, step, item)

    def newest_readable(self, read: Callable[[int], T], *, at_most: int | None = None) -> tuple[int, T]:
        """(step, read(step)) for the newest step (at most `at_most`) that `read` gets through without
        CheckpointDamaged; each damaged step costs one warning. When none reads: one InputError naming every
        step tried and why (nothing is deleted). Other errors (another model's checkpoint, say) propagate at
        once."""
        steps = [s for s in reversed(self.all_steps()) if at_most is None or s <= at_most]
        if not steps:
            raise InputError(_no_checkpoints_message(self.workdir))
        damaged = []
        for step in steps:
            try:
                return step, read(step)
            except CheckpointDamaged as error:
                damaged.append(error)
                log.warning("%s%s", error, "; trying the previous step" if step != steps[-1] else "")
        raise InputError(f"no checkpoint in {self.directory} can be read ({'; '.join(map(str, damaged))}); "
                         "nothing was deleted: repair or move the checkpoints away, or choose a new "
                         "--workdir")

    def set_aside(self, step: int) -> str:
        """Move damaged step `step` out of the checkpoints into WORKDIR/damaged_checkpoints (a resumed run
        could not save that step again while it is there); returns where it went."""
        target = os.path.join(self.workdir, DAMAGED, str(step))
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(self.workdir, DAMAGED, f"{step}.{n}"), n + 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(self.directory, str(step)), target)
        self.reload()
        return target

    def reload(self) -> None:
        """Read the list of steps from disk again (another process may have changed it)."""
        self._manager.reload()

    # ---- lifetime ----
    def wait(self) -> None:
        """Block until every started save is on disk."""
        with _Writing(self, None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Reading:
    """Turns whatever Orbax, tensorstore or the JSON reader raise while reading one item of one step into
    CheckpointDamaged naming both (the checkpoints are fine on disk when nothing was changed by hand or a
    failing disk, so any failure here means damage)."""

    def __init__(self, checkpointer: Checkpointer, step: int, item: str):
        self.checkpointer, self.step, self.item = checkpointer, step, item

    def __enter__(self):
        step_dir = os.path.join(self.checkpointer.directory, str(self.step))
        if os.path.isdir(step_dir) and not os.listdir(step_dir):
            self._damaged("the step directory", "it is empty")
        missing = _missing_file(os.path.join(step_dir, self.item), self.item)
        if missing:  # found before Orbax tries: it would fail more slowly and less clearly
            self._damaged(self.item, f"{missing} is missing")
        # Orbax logs its own warnings about what it could not find before it raises; the one line below says
        # it.
        self._absl_level = _ABSL.level
        _ABSL.setLevel(logging.ERROR)
        return self

    def __exit__(self, kind, error, tb):
        _ABSL.setLevel(self._absl_level)
        if error is None or not isinstance(error, Exception) or isinstance(error, InputError):
            return False
        # tensorstore appends its whole JSON spec to the message: keep the sentence before it.
        why = " ".join(str(error).split("[tensorstore_spec")[0].split())
        self._damaged(self.item, (why[:160] + "...") if len(why) > 160 else why or type(error).__name__)

    def _damaged(self, item: str, why: str):
        raise CheckpointDamaged(f"checkpoint step {self.step} in {self.checkpointer.workdir} is damaged "
                                f"({item}: {why})", self.step, item) from None


class _Writing:
    """A save that the disk refuses (full, read-only, gone) is one line naming the directory and what a rerun
    resumes from, instead of Orbax's traceback from its writer threads. Anything else propagates."""

    def __init__(self, checkpointer: Checkpointer, step: int | None):
        self.checkpointer, self.step = checkpointer, step

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        text = str(error) if error is not None else ""
        full = isinstance(error, OSError) and error.errno == errno.ENOSPC or "RESOURCE_EXHAUSTED" in text
        refused = isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM,
                                                                 errno.ENOENT)
        if not (full or refused):
            return False
        steps = [s for s in self.checkpointer.all_steps() if self.step is None or s < self.step]
        why = "the disk is full" if full else (getattr(error, "strerror", None) or text.split(":")[0])
        which = f"checkpoint step {self.step}" if self.step is not None else "a checkpoint"
        raise InputError(f"{which} could not be written to {self.checkpointer.directory}: {why}; free space "
                         "(or make it writable) and rerun: the run resumes from step "
                         f"{steps[-1] if steps else 0}") from None


_ABSL = logging.getLogger("absl")
# Orbax logs a failed background write with its whole traceback, then raises the same error in the thread that
# waits for the write (save or wait, where _Writing turns a full disk into one line): the log is a duplicate.
_ABSL.addFilter(lambda record: "_SignalingThread.run() raised an exception" not in str(record.msg))
# Files without which an item cannot be read at all (the array data files are named by the OCDBT manifest).
_REQUIRED = {"state": ("_METADATA", "manifest.ocdbt"), "data": ("metadata",), "meta": ("metadata",)}


def _missing_file(item_dir: str, item: str) -> str:
    """The first required path of an item that does not exist ('' when all do)."""
    if not os.path.isdir(item_dir):
        return item_dir
    return next((os.path.join(item_dir, n) for n in _REQUIRED[item]
                 if not os.path.exists(os.path.join(item_dir, n))),
                "")


def _silence_abandoned_io() -> None:
    """A failed Orbax read or write leaves tensorstore I/O in flight: its callbacks find the event loop closed
    ('RuntimeError: Event loop is closed' tracebacks from a background thread), its futures' errors are never
    retrieved (asyncio logs them at exit) and its coroutines are collected at shutdown. Harmless, and not to
    be shown to a user who already got one line about the damaged checkpoint or the full disk. Installed once,
    on import: the tracebacks start before the failure reaches the caller."""
    previous = sys.unraisablehook
    if getattr(previous, "_ctxjax_filter", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if isinstance(error, ImportError) and "shutting down" in str(error):  # an abandoned write's coroutine
            return
        previous(unraisable)

    hook._ctxjax_filter = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage())


_silence_abandoned_io()


def is_params_only(state) -> bool:
    return isinstance(state, dict) and set(state) == {"params"}


def _restore_arg(leaf) -> ocp.RestoreArgs:
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=getattr(leaf, "dtype", None))
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=tuple(leaf.shape), dtype=leaf.dtype)


def _check_json(name: str, value) -> None:
    try:
        json.dumps(value)
    except TypeError as e:
        raise InputError(f"checkpoint {name} must be JSON-able (plain dicts, lists, numbers, strings): "
                         f"{e}") from None


def _no_checkpoints_message(workdir: str) -> str:
    if not os.path.isdir(workdir):
        return f"work directory {workdir} does not exist; pass the --workdir of a training run or import-hf"
    return (f"{workdir} has no checkpoints (nothing in {os.path.join(workdir, CHECKPOINTS)}); "
            "train there or run `ctxjax import-hf HF_DIR --workdir W` first")
