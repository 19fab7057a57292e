"""Tokenizers behind one small interface: SentencePiece models, HF `tokenizer.json` files, raw bytes.

A tokenizer is saved as files in a directory (`tokenizer.model` for SentencePiece, `tokenizer.json` for
HF, the names Hugging Face uses), so it travels with checkpoints and exports: `load_tokenizer(dir)` reads
it back, and `ctxjax.hf.save_pretrained(..., tokenizer=dir)` copies it next to an exported model.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence


from ctxjax.data.config import DataError
from ctxjax.errors import read_json
from ctxjax.fs import write_atomically

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
BYTES_FILE = "bytes_tokenizer.json"
# The SentencePiece piece of the mask token that tokenizers trained for masked-language-model runs carry (a
# control symbol: text never encodes to it).
MASK_PIECE = "<mask>"
BYTES_WITH_MASK = "bytes+mask"  # the byte tokenizer plus a mask token (id 258): tiny MLM runs and tests


class Tokenizer:
    """encode/decode text, with the ids the pipeline needs. Subclasses set the attributes below."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    mask_id: int | None = None  # the token a masked-language model reads in place of a hidden one
    pad_id: int | None = None

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that are not text (BOS, EOS, mask, padding...): never masked, never drawn as a random
        replacement by the MLM objective."""
        return tuple(sorted({i for i in (self.bos_id, self.eos_id, self.mask_id, self.pad_id)
                             if i is not None}))

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end a generation: EOS (and for an imported model, every EOS its generation config
        names)."""
        return () if self.eos_id is None else (self.eos_id,)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str) -> str:
        """Write the tokenizer's file into `directory`; returns the file's path."""
        raise NotImplementedError

    def file_bytes(self) -> bytes:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return hashlib.sha1(self.file_bytes()).hexdigest()


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        mask = self._sp.piece_to_id(MASK_PIECE)
        self.mask_id = mask if mask != self._sp.unk_id() else None
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None

    @property
    def special_ids(self):
        # unk, control and byte-fallback-free specials: every piece SentencePiece does not treat as text.
        sp = self._sp
        return tuple(sorted(set(super().special_ids) | {i for i in range(self.vocab_size)
                                                        if sp.is_control(i) or sp.is_unknown(i)}))

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        with open(path, "rb") as f:
            return cls(f.read())

    def encode(self, text):
        return self._sp.encode(text)

    def encode_batch(self, texts):
        # SentencePiece encodes a list on several threads without the GIL.
        return self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])

    def hf_config(self) -> dict:
        """The tokenizer_config.json with which transformers' LlamaTokenizer encodes text to the same ids: a
        dummy prefix only if this model adds one (ctxjax's never do; transformers' default would add one) and
        BOS first, as training documents start (data.add_bos)."""
        sp = self._sp
        first = sp.encode("a", out_type=str)
        pieces = {name: sp.id_to_piece(i) for name, i in
                  (("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()), ("unk_token", sp.unk_id()),
                   ("mask_token", -1 if self.mask_id is None else self.mask_id))
                  if i >= 0}
        return {"tokenizer_class": "LlamaTokenizer", "add_bos_token": self.bos_id is not None,
                "add_eos_token": False, "add_prefix_space": bool(first) and first[0].startswith("\u2581"),
                "legacy": False, **pieces}

    def save(self, directory):
        path = os.path.join(directory, SENTENCEPIECE_FILE)
        write_atomically(path, self._proto)
        return path

    def file_bytes(self):
        return self._proto


def _special_token_id(tokenizer, config: dict, key: str, fallbacks: Sequence[str]) -> int | None:
    value = config.get(key)
    if isinstance(value, dict):  # tokenizer_config.json may store {"content": "<s>", ...}
        value = value.get("content")
    for token in ([value] if value else []) + list(fallbacks):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


class HuggingFaceTokenizer(Tokenizer):
    """An HF fast tokenizer (`tokenizer.json`, e.g. of an imported model) through the `tokenizers` library.

    BOS/EOS come from a `tokenizer_config.json` beside it, else from the usual token spellings; a model with
    only an end-of-text token (GPT-2) uses it for both.
    """

    def __init__(self, json_text: str, special_tokens: dict | None = None,
                 generation_eos: Sequence[int] = ()):
        from tokenizers import Tokenizer as HFTokenizer

        self._generation_eos = tuple(generation_eos)
        self._json = json_text
        self._tok = HFTokenizer.from_str(json_text)
        self._special = dict(special_tokens or {})
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = _special_token_id(self._tok, self._special, "bos_token",
                                        ("<s>", "<|begin_of_text|>", "<bos>", "[BOS]"))
        self.eos_id = _special_token_id(self._tok, self._special, "eos_token",
                                        ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[EOS]"))
        if self.bos_id is None:
            self.bos_id = self.eos_id
        self.mask_id = _special_token_id(self._tok, self._special, "mask_token", ("[MASK]", "<mask>"))
        self.pad_id = _special_token_id(self._tok, self._special, "pad_token", ("[PAD]", "<pad>"))

    @property
    def special_ids(self):
        # BERT's [CLS]/[SEP]/[UNK] and every other added token marked special.
        added = {i for i, token in self._tok.get_added_tokens_decoder().items() if token.special}
        return tuple(sorted(set(super().special_ids) | added))

    @classmethod
    def from_file(cls, path: str) -> "HuggingFaceTokenizer":
        try:
            with open(path, encoding="utf-8") as f:
                json_text = f.read()
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 text (byte {e.start}), so not a tokenizer.json") from None
        config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        special = {}
        if os.path.exists(config_path):
            config = read_json(config_path, "a tokenizer config")
            special = {k: config[k] for k in ("bos_token", "eos_token", "mask_token", "pad_token")
                       if config.get(k)}
        # transformers' generate stops at the generation config's EOS ids (Llama-3 chat models name several).
        eos = generation_config_ids(os.path.dirname(path)).get("eos_token_id")
        return cls(json_text, special, [] if eos is None else [eos] if isinstance(eos, int) else eos)

    @property
    def stop_ids(self):
        return tuple(dict.fromkeys(super().stop_ids + self._generation_eos))

    def encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory):
        path = os.path.join(directory, HF_FILE)
        write_atomically(path, self._json.encode("utf-8"))
        if self._special:
            write_atomically(os.path.join(directory, "tokenizer_config.json"),
                             json.dumps(self._special, indent=2).encode())
        return path

    def file_bytes(self):
        return self._json.encode("utf-8")


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, BOS 256, EOS 257: no training, lossless; for tiny models and tests.
    `with_mask` ("bytes+mask"): also a mask token, id 258 (259 ids), for masked-language-model runs."""

    bos_id = 256
    eos_id = 257

    def __init__(self, with_mask: bool = False):
        self.vocab_size = 259 if with_mask else 258
        self.mask_id = 258 if with_mask else None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory):
        path = os.path.join(directory, BYTES_FILE)
        write_atomically(path, self.file_bytes())
        return path

    def file_bytes(self):
        # Without a mask the bytes are those of every earlier version (the same fingerprint).
        mask = {} if self.mask_id is None else {"mask_id": self.mask_id}
        return json.dumps({"type": "bytes", "bos_id": 256, "eos_id": 257, **mask}).encode()


def generation_config_ids(directory: str) -> dict:
    """The bos/eos/pad ids that a generation_config.json beside a tokenizer names (an imported model's; EOS
    may be a list), or {}."""
    path = os.path.join(directory, "generation_config.json")
    if not os.path.exists(path):
        return {}
    generation = read_json(path, "a generation config")
    return {k: generation[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if generation.get(k) is not None}


def find_tokenizer_file(path: str) -> str | None:
    """The tokenizer file at `path` (a file, or a directory holding one), or None."""
    if os.path.isfile(path):
        return path
    for name in (SENTENCEPIECE_FILE, HF_FILE, BYTES_FILE):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_tokenizer(path: str) -> Tokenizer:
    """A SentencePiece `.model`, an HF `tokenizer.json`, or a directory with one (e.g. WORKDIR/tokenizer)."""
    if path in ("bytes", BYTES_WITH_MASK):
        return ByteTokenizer(with_mask=path == BYTES_WITH_MASK)
    found = find_tokenizer_file(os.path.expanduser(path))
    if found is None:
        raise DataError(f"data.tokenizer={path!r}: no {SENTENCEPIECE_FILE}, {HF_FILE} or .model file there; "
                        "point it at a SentencePiece .model or an HF tokenizer.json, or leave it empty to "
                        "train one")
    if found.endswith(".json"):
        if os.path.basename(found) == BYTES_FILE:
            return ByteTokenizer(with_mask="mask_id" in read_json(found, "a byte tokenizer file"))
        return HuggingFaceTokenizer.from_file(found)
    try:
        return SentencePieceTokenizer.from_file(found)
    except Exception as e:
        raise DataError(f"data.tokenizer={path!r}: {found} is not a SentencePiece model ({e}); pass a "
                        ".model file or a tokenizer.json") from None


def check_mask_token(tokenizer: Tokenizer, where: str = "data.tokenizer") -> int:
    """The mask token's id; a one-line error with the fix when the tokenizer has none."""
    if tokenizer.mask_id is None:
        raise DataError(f"{where}: the tokenizer has no mask token, which masked-language modelling needs; "
                        f"leave data.tokenizer empty to train one with {MASK_PIECE} (data.objective='mlm'), "
                        f"use '{BYTES_WITH_MASK}' instead of 'bytes', or a tokenizer.json whose "
                        "tokenizer_config.json names a mask_token")
    return tokenizer.mask_id


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int | None) -> None:
    if model_vocab_size is not None and tokenizer.vocab_size > model_vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                        f"{model_vocab_size}; set model vocab_size >= {tokenizer.vocab_size} or use a "
                        "smaller tokenizer (data.vocab_size)")
