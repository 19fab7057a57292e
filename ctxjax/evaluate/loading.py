"""A model to evaluate or generate with, from a training work directory or a Hugging Face directory, with
its tokenizer: the loading shared by `ctxjax eval` and `ctxjax generate`."""

from __future__ import annotations

import os

from ctxjax.errors import InputError
from ctxjax import hf
from ctxjax.data import load_tokenizer
from ctxjax.data.tokenizer import find_tokenizer_file


def load_hf_model(hf_dir: str, **overrides):
    """(ModelConfig, params) via ctxjax.hf (whose errors name the damaged or missing file)."""
    if not os.path.isdir(hf_dir):
        raise InputError(f"{hf_dir} is not a directory; pass a Hugging Face model directory (config.json + "
                         "safetensors) to --hf")
    return hf.load_pretrained(hf_dir, **overrides)


def load_workdir_model(workdir: str, step: int | None = None):
    """(ModelConfig, params, tokenizer directory or None) of a training run's checkpoint."""
    from ctxjax.checkpoint import load_for_inference  # imported here: orbax is slow to import

    return load_for_inference(workdir, step=step)


def resolve_tokenizer(explicit: str | None, *candidates: str | None):
    """`explicit` if given (a path or "bytes"), else the first candidate directory holding tokenizer files."""
    if explicit:
        return load_tokenizer(explicit)
    for path in candidates:
        if path and find_tokenizer_file(path):
            return load_tokenizer(path)
    where = ", ".join(p for p in candidates if p) or "the model directory"
    raise InputError(f"no tokenizer found in {where}; pass --tokenizer PATH (a tokenizer.json, a SentencePiece "
                     ".model, a directory holding one, or 'bytes')")


def load_model(workdir: str | None = None, hf_dir: str | None = None, step: int | None = None,
               tokenizer: str | None = None, **overrides):
    """(ModelConfig, params, Tokenizer) from exactly one of `workdir` and `hf_dir`; `overrides` are
    ModelConfig fields for an HF model (e.g. attention="blockwise")."""
    if (workdir is None) == (hf_dir is None):
        raise InputError("give either a work directory or --hf DIR (exactly one)")
    if hf_dir is not None:
        cfg, params = load_hf_model(hf_dir, **overrides)
        return cfg, params, resolve_tokenizer(tokenizer, hf_dir)
    cfg, params, tokenizer_dir = load_workdir_model(workdir, step)
    if overrides:
        cfg = cfg.replace(**overrides)
    return cfg, params, resolve_tokenizer(tokenizer, tokenizer_dir, os.path.join(workdir, "tokenizer"))
