"""Held-out documents as token arrays, read through ctxjax.data (the same sources and tokenizers as training)."""

from __future__ import annotations

import numpy as np

from ctxjax.data import DataConfig, open_source
from ctxjax.data.sources import UndecodableDocument


def load_texts(spec: str, max_documents: int | None) -> list[str]:
    """The texts of the first `max_documents` documents of source `spec`; undecodable ones are left out."""
    source = open_source(spec, DataConfig(source=spec, max_documents=max_documents))
    texts = []
    for i in range(len(source)):
        try:
            texts.append(source.text(i))
        except UndecodableDocument:
            continue  # the training pipeline skips these too (data.on_decode_error="skip")
    return texts


def load_documents(spec: str, tokenizer, max_documents: int | None, add_bos: bool = True) -> list[np.ndarray]:
    """Token arrays (int32) of the source's documents, each starting with BOS when `add_bos` and the
    tokenizer has one, so the first real token is scored with the context the model was trained with."""
    bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    return [np.asarray(bos + ids, np.int32) for ids in tokenizer.encode_batch(load_texts(spec, max_documents))]
