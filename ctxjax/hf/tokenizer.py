"""Tokenizer files that travel with an exported model, so `AutoTokenizer.from_pretrained(out_dir)` works."""

from __future__ import annotations

import json
import os
import shutil

# Files an HF tokenizer directory may hold; a SentencePiece model is stored under HF's name for it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


def write_tokenizer(tokenizer, out_dir: str) -> None:
    """`tokenizer`: a directory or file path, a `tokenizers.Tokenizer`, or anything with `save_pretrained`."""
    if isinstance(tokenizer, (str, os.PathLike)):
        _copy_files(os.fspath(tokenizer), out_dir)
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out_dir)
    elif hasattr(tokenizer, "to_str"):  # tokenizers.Tokenizer
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        _write_config(out_dir, {"tokenizer_class": "PreTrainedTokenizerFast"})
    else:
        raise ValueError(f"cannot save tokenizer of type {type(tokenizer).__name__}; pass a path to its files, "
                         "a tokenizers.Tokenizer or a transformers tokenizer")


def _copy_files(path: str, out_dir: str) -> None:
    if os.path.isdir(path):
        found = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(path, n))]
        if not found:
            raise ValueError(f"no tokenizer files in {path}; expected one of {TOKENIZER_FILES}")
        for name in found:
            shutil.copy(os.path.join(path, name), os.path.join(out_dir, name))
    elif os.path.isfile(path):
        if path.endswith(".model"):  # SentencePiece
            shutil.copy(path, os.path.join(out_dir, "tokenizer.model"))
            _write_config(out_dir, {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False})
        elif path.endswith(".json"):
            shutil.copy(path, os.path.join(out_dir, "tokenizer.json"))
            _write_config(out_dir, {"tokenizer_class": "PreTrainedTokenizerFast"})
        else:
            raise ValueError(f"unknown tokenizer file {path}; pass a tokenizer.json, a SentencePiece .model or a "
                             "directory of HF tokenizer files")
    else:
        raise ValueError(f"tokenizer path {path} does not exist")


def _write_config(out_dir: str, config: dict) -> None:
    path = os.path.join(out_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
