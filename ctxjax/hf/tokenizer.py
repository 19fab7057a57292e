"""Tokenizer files that travel with an exported model, so `AutoTokenizer.from_pretrained(out_dir)` works, and
the special token ids its config.json names (transformers' `generate` stops at the config's EOS, not the
tokenizer's)."""

from __future__ import annotations

import json
import os
import shutil

from ctxjax.data.tokenizer import (SentencePieceTokenizer, find_tokenizer_file, generation_config_ids,
                                   load_tokenizer)
from ctxjax.errors import InputError

# Files an HF tokenizer directory may hold; a SentencePiece model is stored under HF's name for it.
SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json",
                   # where transformers 4.43+ keeps chat templates
                   "chat_template.jinja", "chat_template.json")
# Travels with an HF tokenizer directory: its BOS/EOS/pad ids (EOS often a list, e.g. Llama-3's chat-turn
# ends) name that tokenizer's tokens, so it is copied, replaced and cleared together with it.
GENERATION_CONFIG = "generation_config.json"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def exportable_tokenizer(tokenizer_dir: str | None) -> str | None:
    """What save_pretrained should copy from a work directory's tokenizer: a directory of HF tokenizer files
    as it is (tokenizer.json, its config, chat template, generation ids); a SentencePiece model trained by
    ctxjax as its file (so a tokenizer_config.json naming its class is written); nothing for the byte
    tokenizer, which has no Hugging Face form."""
    if tokenizer_dir is None:
        return None
    present = {n for n in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, n))}
    if present - {SENTENCEPIECE_FILE}:
        return tokenizer_dir
    if SENTENCEPIECE_FILE in present:
        return os.path.join(tokenizer_dir, SENTENCEPIECE_FILE)
    return None


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
        raise InputError(f"cannot save tokenizer of type {type(tokenizer).__name__}; pass a path to its "
                         "files, a tokenizers.Tokenizer or a transformers tokenizer")


def _copy_files(path: str, out_dir: str) -> None:
    if os.path.isdir(path):
        found = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(path, n))]
        if not found:
            raise InputError(f"no tokenizer files in {path}; expected one of {TOKENIZER_FILES}")
        for name in found + ([GENERATION_CONFIG] if os.path.exists(os.path.join(path, GENERATION_CONFIG))
                             else []):
            shutil.copy(os.path.join(path, name), os.path.join(out_dir, name))
    elif os.path.isfile(path):
        if path.endswith(".model"):  # SentencePiece
            shutil.copy(path, os.path.join(out_dir, SENTENCEPIECE_FILE))
            _write_config(out_dir, SentencePieceTokenizer.from_file(path).hf_config())
        elif path.endswith(".json"):
            shutil.copy(path, os.path.join(out_dir, "tokenizer.json"))
            _write_config(out_dir, {"tokenizer_class": "PreTrainedTokenizerFast"})
        else:
            raise InputError(f"unknown tokenizer file {path}; pass a tokenizer.json, a SentencePiece .model "
                             "or a directory of HF tokenizer files")
    else:
        raise InputError(f"tokenizer path {path} does not exist")


def _write_config(out_dir: str, config: dict) -> None:
    path = os.path.join(out_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2)


def special_token_ids(directory: str) -> dict:
    """config.json's bos/eos/pad ids for a model directory holding its tokenizer: each from its
    generation_config.json (an imported model's) when that names it, else the tokenizer's own BOS and EOS."""
    ids = dict.fromkeys(SPECIAL_IDS)
    if find_tokenizer_file(directory) is not None:
        tokenizer = load_tokenizer(directory)
        ids.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    return {**ids, **generation_config_ids(directory)}
