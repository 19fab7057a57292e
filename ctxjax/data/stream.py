"""One shard's stream of documents cut into rows: the packing and cropping logic, and its cursor.

The cursor (epoch, index in the epoch's order, tokens of the current document already emitted, rows
emitted) is all the state there is: every random choice is keyed by values it determines, so restoring a
cursor replays the stream exactly, for any row length asked next.

"pack_whole" packs the same way, except that a document no longer than a row is never cut: when it does not
fit in what is left of a row, the rest of the row is padding. A short document (a retrieval sample, whose
question must see its key) then always lies in one row, at the price of that padding.

In a row, a piece of a document with inputs doc[o:o+m] has targets doc[o+1:o+m+1] where they exist: the
last token of a document has no target (weight 0). A document longer than the rest of a row continues
at position 0 of the next row, so every document token is an input exactly once and, but the first, a
target exactly once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ctxjax.data.config import DataError
from ctxjax.data.pose import pose_positions
from ctxjax.data.shuffle import DocumentOrder

BATCH_KEYS = ("tokens", "positions", "segment_ids", "targets", "weights")


def empty_batch(rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """All padding: segment id 0 and weight 0 everywhere."""
    batch = {k: np.zeros((rows, seq_len), np.int32) for k in BATCH_KEYS if k != "weights"}
    batch["weights"] = np.zeros((rows, seq_len), np.float32)
    return batch


@dataclasses.dataclass
class Cursor:
    epoch: int = 0
    index: int = 0  # position in the epoch's document order
    offset: int = 0  # tokens of the current document already emitted (pack mode)
    rows: int = 0  # rows emitted so far; keys PoSE's random choices

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ShardStream:
    def __init__(self, documents, order: DocumentOrder, *, mode: str, min_doc_tokens: int, seed: int,
                 pose_target_len: int = 0, pose_chunks: int = 2, num_epochs: int | None = None,
                 source_name: str = "the source", masker=None):
        self.documents, self.order, self.mode, self.seed = documents, order, mode, seed
        self.min_tokens = max(2, min_doc_tokens)  # a document needs two tokens for one target
        self.pose_target_len, self.pose_chunks = pose_target_len, pose_chunks
        self.num_epochs, self.source_name = num_epochs, source_name
        self.masker = masker  # a ctxjax.data.masking.Masker for the MLM objective, else None
        self.cursor = Cursor()
        self._longest_seen = 0
        if order.size == 0:
            raise DataError(f"{source_name} has {order.num_docs} documents, fewer than data.num_shards="
                            f"{order.num_shards}; lower num_shards or add documents")
        lengths = documents.lengths()
        if lengths is not None and lengths.max(initial=0) < self.min_tokens:
            self._raise_none_long_enough(int(lengths.max(initial=0)))

    def _raise_none_long_enough(self, longest: int):
        raise DataError(f"no document of {self.source_name} (shard {self.order.shard}) has at least "
                        f"min_doc_tokens={self.min_tokens} tokens (the longest has {longest}); lower "
                        "data.min_doc_tokens or use a source with longer documents")

    def _current_document(self) -> np.ndarray | None:
        """Tokens of the document under the cursor, moving past too-short ones; None after the last epoch."""
        rejected_in_a_row = 0
        while True:
            c = self.cursor
            if self.num_epochs is not None and c.epoch >= self.num_epochs:
                return None
            if c.index >= self.order.size:
                c.epoch, c.index, c.offset = c.epoch + 1, 0, 0
                continue
            doc = self.documents.tokens(self.order.local_index(c.epoch, c.index))
            if len(doc) >= self.min_tokens:
                return doc
            self._longest_seen = max(self._longest_seen, len(doc))
            c.index, c.offset = c.index + 1, 0
            rejected_in_a_row += 1
            # Twice the shard's size in a row spans at least one whole epoch without a usable document.
            if rejected_in_a_row > 2 * self.order.size:
                self._raise_none_long_enough(self._longest_seen)

    def _next_document(self):
        self.cursor.index += 1
        self.cursor.offset = 0

    def _positions(self, length: int, rng_key: tuple) -> np.ndarray:
        if not self.pose_target_len:
            return np.arange(length, dtype=np.int32)
        return pose_positions(length, self.pose_target_len, self.pose_chunks, np.random.default_rng(rng_key))

    def _write_piece(self, batch, row, start, doc, offset, length, segment, rng_key):
        """Inputs doc[offset:offset+length] at batch[row, start:], targets where the document has them."""
        end = start + length
        batch["tokens"][row, start:end] = doc[offset:offset + length]
        n_targets = min(length, len(doc) - offset - 1)
        batch["targets"][row, start:start + n_targets] = doc[offset + 1:offset + 1 + n_targets]
        batch["weights"][row, start:start + n_targets] = 1.0
        batch["segment_ids"][row, start:end] = segment
        batch["positions"][row, start:end] = self._positions(length, rng_key)

    def fill_rows(self, batch: dict[str, np.ndarray], first_row: int, num_rows: int) -> None:
        """Write the shard's next `num_rows` rows into batch[first_row:first_row+num_rows]."""
        fill_row = self._fill_cropped_row if self.mode == "crop" else self._fill_packed_row
        for row in range(first_row, first_row + num_rows):
            fill_row(batch, row)
            if self.masker is not None:  # keyed by the row's place in the stream: a resumed run masks alike
                self.masker.apply(batch, row, (self.seed, self.order.shard, self.cursor.rows))
            self.cursor.rows += 1

    def _fill_packed_row(self, batch, row):
        seq_len = batch["tokens"].shape[1]
        start, segment = 0, 0
        while start < seq_len:
            doc = self._current_document()
            if doc is None:
                return
            offset = self.cursor.offset
            if self.mode == "pack_whole" and start and offset == 0 and seq_len - start < len(doc) <= seq_len:
                return  # it fits in a row but not in what is left of this one: it starts the next, whole
            length = min(seq_len - start, len(doc) - offset)
            segment += 1
            rng_key = (self.seed, self.order.shard, self.cursor.rows, segment, 0x9053)
            self._write_piece(batch, row, start, doc, offset, length, segment, rng_key)
            start += length
            self.cursor.offset = offset + length
            if self.cursor.offset == len(doc):
                self._next_document()

    def _fill_cropped_row(self, batch, row):
        seq_len = batch["tokens"].shape[1]
        doc = self._current_document()
        if doc is None:
            return
        c = self.cursor
        doc_id = self.order.local_to_global(self.order.local_index(c.epoch, c.index))
        # Keyed by the document, not the row, so a document's window does not depend on sharding.
        window_rng = np.random.default_rng((self.seed, c.epoch, doc_id, 0xC209))
        # A window of seq_len inputs needs seq_len + 1 tokens for all its targets.
        offset = int(window_rng.integers(0, len(doc) - seq_len)) if len(doc) > seq_len else 0
        length = min(seq_len, len(doc) - offset)
        pose_key = (self.seed, self.order.shard, c.rows, 1, 0x9053)
        self._write_piece(batch, row, 0, doc, offset, length, 1, pose_key)
        self._next_document()

    def exhausted(self) -> bool:
        return self._current_document() is None
