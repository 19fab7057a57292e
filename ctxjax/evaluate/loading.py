"""A model to evaluate or generate with, from a training work directory or a Hugging Face directory, with
its tokenizer: the loading shared by `ctxjax eval` and `ctxjax generate`."""

from __future__ import annotations

import json
import os

from ctxjax import hf
from ctxjax.data import load_tokenizer
from ctxjax.data.tokenizer import find_tokenizer_file


def load_hf_model(hf_dir: str, **overrides):
    """(ModelConfig, params) via ctxjax.hf, with any failure to read the directory as one ValueError line."""
    if not os.path.isdir(hf_dir):
        raise ValueError(f"{hf_dir} is not a directory; pass a Hugging Face model directory (config.json + "
                         "safetensors) to --hf")
    try:
        return hf.load_pretrained(hf_dir, **overrides)
    except Exception as error:  # e.g. a corrupt safetensors file (SafetensorError), truncated JSON, OSError
        if isinstance(error, ValueError) and not isinstance(error, json.JSONDecodeError):
            raise  # ctxjax.hf's own messages already name the fix
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot load {hf_dir} as a Hugging Face model ({type(error).__name__}: {detail}); "
                         "ctxjax reads Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 and GPT-2 safetensors checkpoints") from None


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
    raise ValueError(f"no tokenizer found in {where}; pass --tokenizer PATH (a tokenizer.json, a SentencePiece "
                     ".model, a directory holding one, or 'bytes')")


def load_model(workdir: str | None = None, hf_dir: str | None = None, step: int | None = None,
               tokenizer: str | None = None, **overrides):
    """(ModelConfig, params, Tokenizer) from exactly one of `workdir` and `hf_dir`; `overrides` are
    ModelConfig fields for an HF model (e.g. attention="blockwise")."""
    if (workdir is None) == (hf_dir is None):
        raise ValueError("give either a work directory or --hf DIR (exactly one)")
    if hf_dir is not None:
        cfg, params = load_hf_model(hf_dir, **overrides)
        return cfg, params, resolve_tokenizer(tokenizer, hf_dir)
    cfg, params, tokenizer_dir = load_workdir_model(workdir, step)
    if overrides:
        cfg = cfg.replace(**overrides)
    return cfg, params, resolve_tokenizer(tokenizer, tokenizer_dir, os.path.join(workdir, "tokenizer"))
