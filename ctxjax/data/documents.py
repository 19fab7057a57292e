"""Token ids of a shard's documents, each document tokenized once.

Two ways, same interface (`len`, `tokens(j)`): `PrecomputedDocuments` tokenizes the whole share up front,
in parallel, and caches the result in WORKDIR/token_cache (a rerun or a restored run starts instantly);
`LazyDocuments` tokenizes a document when the stream first reaches it (sources too large to tokenize up
front) and keeps recent ones in memory. A document is [BOS] + ids + [EOS] as configured; a document that
is not UTF-8 becomes empty (so the stream skips it) and is counted, or fails the run, by config.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import os
import zipfile

import numpy as np

from ctxjax.data.config import DataError
from ctxjax.data.sources import DocumentSource, UndecodableDocument
from ctxjax.data.tokenizer import Tokenizer
from ctxjax.fs import remove_stale_temporaries, write_atomically

log = logging.getLogger(__name__)

_EMPTY = np.zeros(0, np.int32)
_ENCODE_BATCH = 64  # documents per call to the tokenizer: enough to keep its threads busy


class DocumentTokenizer:
    """text -> int32 ids with BOS/EOS, applying the decode-error policy; shared by both document stores."""

    def __init__(self, source: DocumentSource, tokenizer: Tokenizer, *, add_bos: bool, add_eos: bool,
                 on_decode_error: str):
        self.source, self.tokenizer = source, tokenizer
        self.prefix = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.suffix = [tokenizer.eos_id] if add_eos and tokenizer.eos_id is not None else []
        self.on_decode_error = on_decode_error
        self.skipped: set[int] = set()

    def _text_or_none(self, doc_id: int) -> str | None:
        try:
            return self.source.text(doc_id)
        except UndecodableDocument as e:
            if self.on_decode_error == "fail":
                raise DataError(f"{e}; fix or remove it, or set data.on_decode_error='skip'") from None
            if not self.skipped:
                log.warning("skipping documents that cannot be read as text (not UTF-8, not JSON, no text "
                            "string; counted in pipeline.stats()); first: %s", e)
            self.skipped.add(doc_id)
            return None

    def tokenize(self, doc_ids) -> list[np.ndarray]:
        texts = [self._text_or_none(int(i)) for i in doc_ids]
        encoded = iter(self.tokenizer.encode_batch([t for t in texts if t is not None]))
        return [_EMPTY if t is None else np.asarray(self.prefix + list(next(encoded)) + self.suffix, np.int32)
                for t in texts]

    def cache_key(self, doc_ids: np.ndarray) -> str:
        h = hashlib.sha1()
        # The decode policy is part of the key: a run that must fail on bad documents never reads a cache
        # written by one that skipped them.
        parts = (self.source.fingerprint(), self.tokenizer.fingerprint(),
                 repr((self.prefix, self.suffix, self.on_decode_error)))
        for part in parts:
            h.update(part.encode())
        h.update(np.ascontiguousarray(doc_ids, np.int64).tobytes())
        return h.hexdigest()


class PrecomputedDocuments:
    """All of a shard's documents tokenized once, kept as one flat array plus offsets. A document that a
    mixture repeats (`source.base_id`) is tokenized and stored once; `rows` maps each shard document to its
    tokens."""

    def __init__(self, doc_tokenizer: DocumentTokenizer, doc_ids: np.ndarray, cache_dir: str | None = None):
        path = os.path.join(cache_dir, doc_tokenizer.cache_key(doc_ids) + ".npz") if cache_dir else None
        if cache_dir:
            remove_stale_temporaries(cache_dir)  # what a killed run (or a full disk) left half-written
        if path and os.path.exists(path) and self._read_cache(path):
            return
        base_id = getattr(doc_tokenizer.source, "base_id", None)
        keys = np.asarray([base_id(int(i)) for i in doc_ids] if base_id else doc_ids, np.int64)
        _, first, self._rows = np.unique(keys, return_index=True, return_inverse=True)
        unique_ids = np.asarray(doc_ids)[first]
        pieces = []
        for start in range(0, len(unique_ids), _ENCODE_BATCH):
            pieces.extend(doc_tokenizer.tokenize(unique_ids[start:start + _ENCODE_BATCH]))
        self.skipped = len(doc_tokenizer.skipped)
        if self.skipped:
            log.warning("skipped %d of %d documents of %s: not readable as text", self.skipped,
                        len(unique_ids), doc_tokenizer.source.spec)
        self._offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
        self._flat = np.concatenate(pieces) if pieces else _EMPTY
        if path:
            buffer = io.BytesIO()
            np.savez(buffer, flat=self._flat, offsets=self._offsets, rows=self._rows, skipped=self.skipped)
            try:
                write_atomically(path, buffer.getvalue())
            except OSError as e:  # the cache only saves time: a full disk here must not stop the run
                log.warning("cannot cache tokens in %s (%s); continuing without the cache", path, e.strerror)

    def _read_cache(self, path: str) -> bool:
        try:
            with np.load(path) as cached:
                self._flat, self._offsets = cached["flat"], cached["offsets"]
                self.skipped = int(cached["skipped"])
                # Caches written before repeats were stored once hold one piece per document, in order.
                self._rows = cached["rows"] if "rows" in cached else np.arange(len(self._offsets) - 1)
            return True
        except (OSError, ValueError, KeyError, EOFError,
                zipfile.BadZipFile) as e:  # damaged by hand or by the disk
            log.warning("token cache %s cannot be read (%s); tokenizing again", path, e)
            return False

    def __len__(self):
        return len(self._rows)

    def tokens(self, j: int) -> np.ndarray:
        row = self._rows[j]
        return self._flat[self._offsets[row]:self._offsets[row + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self._offsets)[self._rows]


class LazyDocuments:
    """Documents tokenized when first asked for; the most recent ones stay in memory up to a token budget."""

    def __init__(self, doc_tokenizer: DocumentTokenizer, doc_id_of, size: int,
                 max_cached_tokens: int = 1 << 24):
        # doc_id_of(j) -> source index: computed per document, never as an array over a huge source.
        self._doc_tokenizer, self._doc_id_of, self._size = doc_tokenizer, doc_id_of, size
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cached_tokens, self._max_cached_tokens = 0, max_cached_tokens

    def __len__(self):
        return self._size

    @property
    def skipped(self) -> int:
        return len(self._doc_tokenizer.skipped)

    def tokens(self, j: int) -> np.ndarray:
        hit = self._cache.get(j)
        if hit is not None:
            self._cache.move_to_end(j)
            return hit
        (ids,) = self._doc_tokenizer.tokenize([self._doc_id_of(j)])
        self._cache[j] = ids
        self._cached_tokens += len(ids)
        while self._cached_tokens > self._max_cached_tokens and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_tokens -= len(evicted)
        return ids

    def lengths(self) -> None:
        return None  # unknown until every document was read
