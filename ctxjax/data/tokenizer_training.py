"""Which tokenizer a run uses, training a SentencePiece model on the source when none is given.

Order of precedence: data.tokenizer (a path, or "bytes"); else the tokenizer already in WORKDIR/tokenizer
(left by an earlier run, `ctxjax import-hf`, or a restored checkpoint), unless it was trained here with
other settings; else a new SentencePiece model trained on a sample of the source. The chosen tokenizer is
written to WORKDIR/tokenizer, where checkpoints and exports pick it up.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Iterator

from ctxjax.data.config import DataConfig, DataError
from ctxjax.data.shuffle import IndexShuffle
from ctxjax.data.sources import DocumentSource, UndecodableDocument, open_source
from ctxjax.data.tokenizer import (MASK_PIECE, SentencePieceTokenizer, Tokenizer, find_tokenizer_file,
                                   load_tokenizer)
from ctxjax.errors import read_json
from ctxjax.fs import write_atomically

log = logging.getLogger(__name__)

TRAINED_META_FILE = "trained_with.json"
# SentencePiece splits its input into "sentences" of at most max_sentence_length bytes; chunks of text keep
# newlines (and so indentation) inside pieces instead of cutting the sample at every line.
_CHUNK_CHARS = 4000
# With byte fallback every string round-trips, but 256 byte pieces must fit in the vocabulary.
_MIN_VOCAB_FOR_BYTE_FALLBACK = 512


def sample_training_text(source: DocumentSource, max_chars: int, seed: int = 0) -> Iterator[str]:
    """Chunks of documents taken in a seeded random order until `max_chars` characters were given."""
    order = IndexShuffle(len(source), (seed, 0x70C))
    given = 0
    for k in range(len(source)):
        try:
            text = source.text(order(k))
        except UndecodableDocument:
            continue
        for start in range(0, len(text), _CHUNK_CHARS):
            chunk = text[start:start + _CHUNK_CHARS]
            yield chunk
            given += len(chunk)
            if given >= max_chars:
                return


def train_sentencepiece(texts: Iterator[str], vocab_size: int,
                        mask_token: bool = False) -> SentencePieceTokenizer:
    """A BPE SentencePiece model that reproduces text exactly: no normalisation, no dummy prefix, spaces,
    tabs and newlines kept, byte fallback for characters it never saw (when the vocabulary has room).
    `mask_token`: also a control piece <mask> (id 3) for masked-language modelling; without it the model is
    byte for byte what it was before the option existed."""
    import sentencepiece as spm

    byte_fallback = vocab_size >= _MIN_VOCAB_FOR_BYTE_FALLBACK
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=byte_fallback, character_coverage=0.9995 if byte_fallback else 1.0,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True, hard_vocab_limit=False,
            max_sentence_length=4 * _CHUNK_CHARS, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            **({"control_symbols": [MASK_PIECE]} if mask_token else {}),
            num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"SentencePiece could not train a vocabulary of {vocab_size} ({reason}); use "
                        f"data.vocab_size >= {_MIN_VOCAB_FOR_BYTE_FALLBACK} or a larger source") from None
    return SentencePieceTokenizer(model.getvalue())


def _training_settings(config: DataConfig) -> dict:
    settings = {"source": config.source, "max_documents": config.max_documents,
                "vocab_size": config.vocab_size, "train_chars": config.tokenizer_train_chars,
                "seed": config.seed}
    # Only MLM runs add the key, so the tokenizers of next-token runs stay valid for their workdirs.
    return {**settings, "mask_token": True} if _wants_mask(config) else settings


def _wants_mask(config: DataConfig) -> bool:
    return config.objective == "mlm"


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    return read_json(path)


def clear_tokenizer_dir(directory: str) -> None:
    """Remove every file of WORKDIR/tokenizer, which holds only the run's tokenizer, before another is
    written."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))


def save_to_workdir(tokenizer: Tokenizer, directory: str, trained_with: dict | None = None) -> None:
    """Make `tokenizer` the one in `directory`, removing every other file there (the directory holds only the
    run's tokenizer): a replaced imported tokenizer's companions (tokenizer_config.json, vocab.json, ...)
    would otherwise be exported as if they still described it."""
    if find_tokenizer_file(directory):
        if _fingerprint_at(directory) == tokenizer.fingerprint():
            return
        if not os.path.exists(os.path.join(directory, TRAINED_META_FILE)):  # imported with a model, or given
            log.warning("replacing the tokenizer in %s (imported with the model, or given by an earlier run) "
                        "with another: a pretrained model's embeddings belong to its own tokenizer; set "
                        "data.tokenizer='' to keep it", directory)
    clear_tokenizer_dir(directory)
    tokenizer.save(directory)
    if trained_with is not None:
        write_atomically(os.path.join(directory, TRAINED_META_FILE), json.dumps(trained_with).encode())


def _fingerprint_at(directory: str) -> str | None:
    try:
        return load_tokenizer(directory).fingerprint()
    except DataError:
        return None


def resolve_tokenizer(config: DataConfig, workdir: str | None) -> Tokenizer:
    """The run's tokenizer (see module doc); written to WORKDIR/tokenizer when a workdir is given.

    A trained tokenizer always learns from the training source (config.source), also when the pipeline
    that asks reads the evaluation split."""
    directory = os.path.join(workdir, "tokenizer") if workdir else None
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
        if directory:
            save_to_workdir(tokenizer, directory)
        return tokenizer
    wanted = _training_settings(config)
    if directory and find_tokenizer_file(directory):
        trained_with = _read_json(os.path.join(directory, TRAINED_META_FILE))
        if trained_with is None or trained_with == wanted:
            return load_tokenizer(directory)
        log.warning("WORKDIR/tokenizer was trained with %s; training a new one for %s", trained_with, wanted)
    # Training is deterministic, so processes of a pod that each train one get the same model.
    tokenizer = train_sentencepiece(
        sample_training_text(open_source(config.source, config), config.tokenizer_train_chars, config.seed),
        config.vocab_size, mask_token=_wants_mask(config))
    if directory:
        save_to_workdir(tokenizer, directory, trained_with=wanted)
    return tokenizer
