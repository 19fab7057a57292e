"""`Checkpointer`: the Orbax CheckpointManager of one work directory, WORKDIR/checkpoints/<step>/.

Every step directory holds three items:
- `state`: the train state, any pytree of arrays ({'step', 'params', 'opt_state'}, or {'params'} alone for a
  params-only checkpoint); saved sharded as it is, restored into whatever shardings the caller asks for.
- `data`: the data iterator's JSON state, so a resumed run continues the token stream where it stopped.
- `meta`: JSON with the model config, train config, stage, step and `params_only` (see ctxjax.checkpoint.meta).

Orbax writes each step into a temporary directory and renames it when complete, so a crash never leaves a
checkpoint that looks finished. Async saves copy arrays to host memory before `save` returns, so the caller
may donate or overwrite the state right after; the write to disk continues in the background.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ctxjax.checkpoint.meta import check_compatible

CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
_ITEMS = ("state", "data", "meta")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CHECKPOINTS)


def tokenizer_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), TOKENIZER)


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
            raise ValueError(_no_checkpoints_message(self.workdir))
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
            raise ValueError(_no_checkpoints_message(self.workdir))
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(f"{self.workdir} has no checkpoint at step {step}; available steps: {steps}")
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
            raise ValueError(f"this Checkpointer of {self.workdir} was opened read_only; open it without to save")
        if step in self._manager.all_steps() or not (force or self.should_save(step)):
            return False
        meta = {**meta, "step": int(step), "params_only": is_params_only(state)}
        for name, value in (("data_state", data_state), ("meta", meta)):
            _check_json(name, value)  # fail here, not later in a background thread
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))
        saved = self._manager.save(step, args=args, force=True)
        if wait:
            self.wait()
        return bool(saved)

    # ---- restoring ----
    def restore_meta(self, step: int | None = None) -> dict:
        """The metadata JSON alone (cheap: no arrays are read). See ctxjax.checkpoint.meta."""
        step = self.resolve_step(step)
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

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
            raise ValueError(f"checkpoint {step} in {self.workdir} holds only params (it was imported or written "
                             "by write_params_checkpoint); restore {'params': abstract_params} and build fresh "
                             "optimizer state")
        restore_args = jax.tree.map(_restore_arg, abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=True),
            data=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored.state, dict(restored.data or {}), meta

    def check_compatible(self, model_config, step: int | None = None) -> dict:
        """restore_meta(step), after refusing (one line) a checkpoint of a model with other parameter shapes."""
        meta = self.restore_meta(step)
        check_compatible(meta, model_config, workdir=self.workdir)
        return meta

    def saved_shapes(self, step: int | None = None):
        """The stored state's tree of jax.ShapeDtypeStruct (no shardings), read from metadata only."""
        step = self.resolve_step(step)
        tree = self._manager.item_metadata(step)["state"].tree
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
                            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))

    # ---- lifetime ----
    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        raise ValueError(f"checkpoint {name} must be JSON-able (plain dicts, lists, numbers, strings): {e}") from None


def _no_checkpoints_message(workdir: str) -> str:
    if not os.path.isdir(workdir):
        return f"work directory {workdir} does not exist; pass the --workdir of a training run or import-hf"
    return (f"{workdir} has no checkpoints (nothing in {os.path.join(workdir, CHECKPOINTS)}); "
            "train there or run `ctxjax import-hf HF_DIR --workdir W` first")
