"""Held-out documents as token arrays, read through ctxjax.data (the same sources and tokenizers as
training)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ctxjax.data import DataConfig, open_source
from ctxjax.data.sources import UndecodableDocument


def iter_texts(spec: str, max_documents: int | None = None) -> Iterator[str]:
    """The texts of the first `max_documents` documents of source `spec`, read one at a time; undecodable ones
    are left out."""
    source = open_source(spec, DataConfig(source=spec, max_documents=max_documents))
    for i in range(len(source)):
        try:
            yield source.text(i)
        except UndecodableDocument:
            continue  # the training pipeline skips these too (data.on_decode_error="skip")


def load_texts(spec: str, max_documents: int | None) -> list[str]:
    return list(iter_texts(spec, max_documents))


def load_documents(spec: str, tokenizer, max_documents: int | None, add_bos: bool = True) -> list[np.ndarray]:
    """Token arrays (int32) of the source's documents, each starting with BOS when `add_bos` and the
    tokenizer has one, so the first real token is scored with the context the model was trained with."""
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    return [np.asarray(bos + ids, np.int32)
            for ids in tokenizer.encode_batch(load_texts(spec, max_documents))]
