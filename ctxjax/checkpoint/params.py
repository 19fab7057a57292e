"""Params-only checkpoints in, params out: the step-0 checkpoint `ctxjax import-hf` writes, and the loader
that `ctxjax export`, eval and generate use (no optimizer, no mesh, no train config needed)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import flax.linen as nn

from ctxjax.errors import InputError
from ctxjax.checkpoint.manager import Checkpointer, checkpoint_dir, tokenizer_dir
from ctxjax.checkpoint.meta import adaptation_of, checkpoint_meta, model_config_of
from ctxjax.config import ModelConfig
from ctxjax.data.tokenizer import Tokenizer, find_tokenizer_file
from ctxjax.data.tokenizer_training import clear_tokenizer_dir, save_to_workdir
from ctxjax.hf.tokenizer import write_tokenizer
from ctxjax.lora import merge_adapters


def ensure_no_checkpoints(workdir: str) -> None:
    """Refuse (one line) a work directory that already holds checkpoints: they are never overwritten."""
    directory = checkpoint_dir(workdir)
    if os.path.isdir(directory):
        steps = Checkpointer(workdir, read_only=True).all_steps()
        if steps:
            raise InputError(f"{os.path.abspath(workdir)} already holds checkpoints (steps {steps}); "
                             "choose a new --workdir")


def write_params_checkpoint(workdir: str, cfg: ModelConfig, params, *, tokenizer=None,
                            hf_architecture: str = "", train_config: dict | None = None, **extra_meta) -> str:
    """Write `params` as the step-0, params-only checkpoint of a new work directory; returns its path.

    tokenizer: written to WORKDIR/tokenizer first (a path to HF tokenizer files or a directory of them, a
    ctxjax.data.Tokenizer, or a tokenizers/transformers tokenizer), so that the checkpoint, which appears last
    and atomically, never exists without it. Params may be numpy or jax arrays; they are stored as they are.
    """
    ensure_no_checkpoints(workdir)
    if tokenizer is not None:
        replace_tokenizer(tokenizer, tokenizer_dir(workdir))
    params = nn.meta.unbox(params)
    meta = checkpoint_meta(cfg, hf_architecture=hf_architecture, train_config=train_config, stage=0,
                           **extra_meta)
    with Checkpointer(workdir, max_to_keep=None, async_save=False) as checkpointer:
        checkpointer.save(0, {"params": params}, data_state={}, meta=meta, force=True, wait=True)
    return os.path.join(checkpoint_dir(workdir), "0")


def load_params(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """(metadata, params) of checkpoint `step` (default: latest; when that is damaged, the newest that reads,
    with a warning), full or params-only. Params are host numpy arrays in their stored dtype, shaped as stored
    (a learned position table grown by a later stage included), LoRA adapters as trained (meta's
    adaptation)."""
    def read(step: int):
        abstract = {"params": checkpointer.saved_shapes(step)["params"]}  # no shardings: numpy on the host
        return checkpointer.restore(abstract, step)

    with Checkpointer(workdir, read_only=True) as checkpointer:
        # An asked-for step that is damaged is an error naming it.
        state, _, meta = read(checkpointer.resolve_step(step)) if step is not None else \
            checkpointer.newest_readable(read)[1]
    return meta, state["params"]


class Inference(NamedTuple):
    cfg: ModelConfig
    params: Any  # host numpy arrays, adapters merged
    # WORKDIR/tokenizer when it holds a tokenizer (ctxjax.data.load_tokenizer reads it)
    tokenizer_dir: str | None
    hf_architecture: str  # the Hugging Face class the model came from ("" if none)


def load_for_inference(workdir: str, step: int | None = None) -> Inference:
    """The model of checkpoint `step` (default: latest, see load_params) as it computes: LoRA adapters merged
    into their weights. Place params with jax.device_put and run them with any ExecutionConfig."""
    meta, params = load_params(workdir, step)
    tokenizer = tokenizer_dir(workdir)
    return Inference(model_config_of(meta), merge_adapters(params, adaptation_of(meta)),
                     tokenizer if find_tokenizer_file(tokenizer) else None, meta.get("hf_architecture", ""))


def replace_tokenizer(tokenizer, directory: str) -> None:
    """Make `tokenizer` (a Tokenizer, or what hf.tokenizer.write_tokenizer copies) the only one in `directory`
    (load_tokenizer must not find a stale one of another kind)."""
    os.makedirs(directory, exist_ok=True)
    if isinstance(tokenizer, Tokenizer):
        save_to_workdir(tokenizer, directory)
        return
    clear_tokenizer_dir(directory)
    write_tokenizer(tokenizer, directory)

