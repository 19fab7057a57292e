"""A model to evaluate or generate with, from a training work directory or a Hugging Face directory, with
its tokenizer: the loading shared by `ctxjax eval` and `ctxjax generate`."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ctxjax import hf
from ctxjax.checkpoint import load_for_inference
from ctxjax.config import ModelConfig
from ctxjax.data import Tokenizer, load_tokenizer
from ctxjax.data.tokenizer import find_tokenizer_file
from ctxjax.errors import InputError


def load_hf_model(hf_dir: str, **overrides):
    """(ModelConfig, params) via ctxjax.hf (whose errors name the damaged or missing file)."""
    if not os.path.isdir(hf_dir):
        raise InputError(f"{hf_dir} is not a directory; pass a Hugging Face model directory (config.json + "
                         "safetensors) to --hf")
    return hf.load_pretrained(hf_dir, **overrides)


class LoadedModel(NamedTuple):
    cfg: ModelConfig
    params: Any
    tokenizer: Tokenizer
    hf_architecture: str  # the Hugging Face class it came from ("" if none): transformers' behaviour to match


def resolve_tokenizer(explicit: str | None, *candidates: str | None):
    """`explicit` if given (a path or "bytes"), else the first candidate directory holding tokenizer files."""
    if explicit:
        return load_tokenizer(explicit)
    for path in candidates:
        if path and find_tokenizer_file(path):
            return load_tokenizer(path)
    where = ", ".join(p for p in candidates if p) or "the model directory"
    raise InputError(f"no tokenizer found in {where}; pass --tokenizer PATH (a tokenizer.json, a "
                     "SentencePiece .model, a directory holding one, or 'bytes')")


def load_model(workdir: str | None = None, hf_dir: str | None = None, step: int | None = None,
               tokenizer: str | None = None) -> LoadedModel:
    """The model of exactly one of `workdir` (its checkpoint `step`, default the latest) and `hf_dir`, with
    its tokenizer (or `tokenizer`: a path or "bytes")."""
    if (workdir is None) == (hf_dir is None):
        raise InputError("give either a work directory or --hf DIR (exactly one)")
    if hf_dir is not None:
        cfg, params = load_hf_model(hf_dir)
        return LoadedModel(cfg, params, resolve_tokenizer(tokenizer, hf_dir), hf.architecture_of(hf_dir))
    cfg, params, tokenizer_dir, architecture = load_for_inference(workdir, step)
    return LoadedModel(cfg, params, resolve_tokenizer(tokenizer, tokenizer_dir,
                                                      os.path.join(workdir, "tokenizer")),
                       architecture)
