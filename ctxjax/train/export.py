"""The Hugging Face export at the end of a training run (`config.export_dir`), under the same rule as
`ctxjax export`: it never replaces the work directory, its checkpoints or tokenizer, the model the run started
from, or any directory it did not write itself. Checked before training, so a bad export_dir costs no
hours."""

from __future__ import annotations

import os

import jax

from ctxjax import hf
from ctxjax.checkpoint import tokenizer_dir, workdir_protected_paths
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.fs import is_within
from ctxjax.hf.io import check_output_dir, export_source
from ctxjax.hf.tokenizer import exportable_tokenizer


def export_path(config, workdir: str) -> str:
    """Where the export goes: `export_dir` inside the work directory unless it is absolute."""
    return os.path.abspath(os.path.join(workdir, os.path.expanduser(config.export_dir)))


def protected_paths(config, workdir: str, meta: dict | None) -> list[str]:
    """What an export of this run must never replace, hold or write inside."""
    return workdir_protected_paths(workdir, meta or {}) + (
        [os.path.abspath(config.init_from_hf)] if config.init_from_hf else [])


def exportable(final_cfg: ModelConfig, export_dir: str) -> None:
    """Refuse a run that ends in an export no Hugging Face class can express."""
    if not export_dir:
        return
    try:
        hf.hf_config_from_model(final_cfg)
    except InputError as error:
        raise InputError(f"{error} (this is the model the last stage trains, which the run would export to "
                         "--config.export_dir; change the stages' positions, or set --config.export_dir='' "
                         "and export a checkpoint with `ctxjax export` later)") from None


def check_export(config, workdir: str, meta: dict | None, final_cfg: ModelConfig) -> None:
    """Refuse, before training, an export that could not be written: a model no Hugging Face class computes,
    or an export_dir that is not new, empty or this run's own earlier export."""
    exportable(final_cfg, config.export_dir)
    if not config.export_dir:
        return
    out = export_path(config, workdir)
    try:
        check_output_dir(out, overwrite=_own_export(out, workdir),
                         protected=protected_paths(config, workdir, meta),
                         not_empty="only an earlier export of this run is replaced; choose a new or empty "
                                   "directory")
    except InputError as error:
        raise InputError(f"--config.export_dir={config.export_dir!r}: {error}") from None


def export(config, cfg: ModelConfig, params, workdir: str, meta: dict | None, architecture: str = "") -> str:
    """Write the trained model (adapters merged) as a Hugging Face directory of class `architecture` where it
    computes the model (process 0; parameters gathered to the host). A rerun of a finished run replaces its
    own earlier export, nothing else."""
    out = export_path(config, workdir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params)
    if jax.process_index() != 0:
        return out
    tokenizer = exportable_tokenizer(tokenizer_dir(workdir))  # what `ctxjax export` would copy
    return hf.save_pretrained(cfg, jax.device_get(params), out, tokenizer=tokenizer,
                              architecture=architecture, overwrite=_own_export(out, workdir),
                              protected=protected_paths(config, workdir, meta), source=workdir)


def _own_export(out: str, workdir: str) -> bool:
    """Whether `out` is an export of this run: written from this work directory, or lying inside it (then it
    moved or was copied with it). Whether it is unchanged since is check_output_dir's to say."""
    if not os.path.isdir(out):
        return False
    source = export_source(out)
    return source is not None and (source == os.path.abspath(workdir) or is_within(out, workdir))
