"""The public entry: `make_pipeline(config, workdir)` -> a `Pipeline` of packed batches that resumes exactly.

    pipeline = make_pipeline(config.data, workdir, model_vocab_size=model_config.vocab_size)
    batch = pipeline.next_batch(batch_size, seq_len)  # this process's rows, numpy, see stream.BATCH_KEYS
    saved = pipeline.state()                          # small JSON-able dict; put it in the checkpoint
                                                      # (pipeline.global_state(): all processes' merged)
    pipeline.restore(saved)                           # the next batch is the one that followed `saved`

`batch_size` is the global batch; each process gets batch_size * (its shards / num_shards) rows.
A background thread prepares the next batches for the shape last asked for; asking for another shape
(a new stage of the schedule) drops them and continues from the last batch handed out, so no token is
repeated or skipped.
"""

from __future__ import annotations

import copy
import os
import queue
import threading

import numpy as np

from ctxjax.data import multihost
from ctxjax.data.config import DataConfig, DataError, as_data_config
from ctxjax.data.documents import DocumentTokenizer, LazyDocuments, PrecomputedDocuments
from ctxjax.data.masking import make_masker
from ctxjax.data.shuffle import DocumentOrder
from ctxjax.data.sources import DocumentSource, eval_source_spec, open_source
from ctxjax.data.stream import Cursor, ShardStream, empty_batch
from ctxjax.data.tokenizer import Tokenizer, check_vocab_fits
from ctxjax.data.tokenizer_training import resolve_tokenizer

STATE_FORMAT = 1
_END = object()  # the worker's mark that a finite stream (num_epochs) is exhausted


class Pipeline:
    def __init__(self, config: DataConfig, source: DocumentSource, tokenizer: Tokenizer,
                 streams: dict[int, ShardStream], num_shards: int, documents: list):
        self.config, self.source, self.tokenizer = config, source, tokenizer
        self.num_shards = num_shards
        self._streams = streams
        self._documents = documents
        self._consumed = self._snapshot()  # state after the last batch handed out
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._worker_shape: tuple[int, int] | None = None
        self._stop = threading.Event()

    # ---- producing batches ----
    def _snapshot(self) -> dict:
        return {"format": STATE_FORMAT, "source": self.source.spec, "seed": self.config.seed,
                "num_shards": self.num_shards, "documents": len(self.source),
                "shards": {str(s): stream.cursor.to_dict() for s, stream in self._streams.items()}}

    def _produce(self, batch_size: int, seq_len: int):
        if batch_size % self.num_shards:
            raise DataError(f"batch size {batch_size} is not a multiple of data.num_shards="
                            f"{self.num_shards}; use a multiple of {self.num_shards}")
        if all(stream.exhausted() for stream in self._streams.values()):
            return _END
        rows_per_shard = batch_size // self.num_shards
        batch = empty_batch(rows_per_shard * len(self._streams), seq_len)
        for i, stream in enumerate(self._streams.values()):
            stream.fill_rows(batch, i * rows_per_shard, rows_per_shard)
        return batch, self._snapshot()

    @staticmethod
    def _hand_over(item, out: queue.Queue, stop: threading.Event) -> None:
        """Put `item` in the queue, unless the consumer asks the worker to stop while the queue is full."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _work(self, shape, out: queue.Queue, stop: threading.Event):
        try:
            while not stop.is_set():
                item = self._produce(*shape)
                self._hand_over(item, out, stop)
                if item is _END:
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._hand_over(e, out, stop)

    def _stop_worker(self):
        if self._worker is not None:
            self._stop.set()
            self._worker.join()
            self._worker, self._queue, self._worker_shape = None, None, None
            self._set_cursors(self._consumed)  # forget what was prepared but not handed out

    def next_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """This process's rows of the next global batch of `batch_size` x `seq_len`; StopIteration when a
        finite stream (num_epochs) is exhausted."""
        if self.config.prefetch <= 0:
            item = self._produce(batch_size, seq_len)
        else:
            if self._worker_shape != (batch_size, seq_len):
                self._stop_worker()
                self._stop = threading.Event()
                self._queue = queue.Queue(maxsize=self.config.prefetch)
                self._worker_shape = (batch_size, seq_len)
                self._worker = threading.Thread(
                    target=self._work, args=(self._worker_shape, self._queue, self._stop), daemon=True,
                    name="ctxjax-data")
                self._worker.start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._worker.join()
                self._worker, self._worker_shape = None, None
                self._set_cursors(self._consumed)
                raise item
        if item is _END:
            raise StopIteration("the data stream is exhausted (num_epochs reached)")
        batch, self._consumed = item
        return batch

    def batches(self, batch_size: int, seq_len: int):
        """Iterate batches of one shape until a finite stream ends."""
        while True:
            try:
                yield self.next_batch(batch_size, seq_len)
            except StopIteration:
                return

    # ---- where the stream is ----
    def state(self) -> dict:
        """JSON-able position in the stream: the cursors of this process's shards after the last batch."""
        return copy.deepcopy(self._consumed)

    def global_state(self) -> dict:
        """state() of all processes merged (a collective: every process calls it at the same step); restores
        on any process layout that divides num_shards. With one process it equals state()."""
        return multihost.merge_process_states(self.state())

    def _set_cursors(self, state: dict):
        for s, stream in self._streams.items():
            stream.cursor = Cursor(**state["shards"][str(s)])

    def restore(self, state: dict) -> None:
        """Continue after the batch that `state` was taken after. Accepts a state holding more shards than
        this process's (e.g. one merged from all processes)."""
        self._check_compatible(state)
        self._stop_worker()
        self._set_cursors(state)
        self._consumed = copy.deepcopy({**self._snapshot(), "shards": {
            str(s): state["shards"][str(s)] for s in self._streams}})

    def _check_compatible(self, state: dict):
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"data iterator state has format {state.get('format')}, expected {STATE_FORMAT}; "
                            "it was written by another ctxjax version: start the data stream afresh")
        for key, have in (("num_shards", self.num_shards), ("seed", self.config.seed),
                          ("source", self.source.spec)):
            if state.get(key) != have:
                raise DataError(f"data iterator state was saved with {key}={state.get(key)!r}, this run has "
                                f"{have!r}; set data.{key} to {state.get(key)!r} to resume")
        # The same spec over other documents (data.max_documents changed, files added): the cursors would
        # point into another order. States written before this check have no count.
        if state.get("documents", len(self.source)) != len(self.source):
            raise DataError(f"data iterator state was saved over {state['documents']} documents, "
                            f"data.source={self.source.spec!r} now gives {len(self.source)}; restore "
                            "data.max_documents (or the source's files) as they were to resume")
        missing = [s for s in self._streams if str(s) not in state["shards"]]
        if missing:
            raise DataError(f"data iterator state lacks shards {missing}; restore from the state of the "
                            "process that read them, or from pipeline.global_state()")

    def stats(self) -> dict:
        return {"documents": len(self.source), "shard_documents": sum(len(d) for d in self._documents),
                "skipped_undecodable": sum(d.skipped for d in self._documents)}

    def close(self):
        self._stop_worker()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_pipeline(config=None, workdir: str | None = None, *, source: str | DocumentSource | None = None,
                  tokenizer: Tokenizer | None = None, model_vocab_size: int | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  num_epochs: int | None = None, **overrides) -> Pipeline:
    """A Pipeline over `source` (default: config.source) for this process.

    config: DataConfig, dict or ConfigDict (fields in config.py); `overrides` replace its fields.
    workdir: where the tokenizer (WORKDIR/tokenizer) and token cache (WORKDIR/token_cache) live; None keeps
      everything in memory.
    tokenizer: use this tokenizer instead of resolving one from the config and workdir.
    model_vocab_size: when given, a tokenizer with more ids is an error.
    process_index, process_count: default to jax's; the data is split into config.num_shards shards.
    num_epochs: None streams forever; 1 reads every document once (evaluation), then StopIteration.
    """
    config = as_data_config(config, **overrides)
    source = open_source(source if source is not None else config.source, config)
    tokenizer = tokenizer or resolve_tokenizer(config, workdir)
    check_vocab_fits(tokenizer, model_vocab_size)
    masker = make_masker(config, tokenizer)  # None unless data.objective="mlm"
    process_index, process_count = multihost.process_layout(process_index, process_count)
    num_shards = config.num_shards or process_count
    precompute = source.local_files if config.precompute_tokens is None else config.precompute_tokens
    # A sequential source (tf.data) is read in order: shuffling it would re-read the stream for each document.
    shuffle = config.shuffle and not getattr(source, "sequential", False)
    cache_dir = os.path.join(workdir, "token_cache") if workdir else None
    streams, documents = {}, []
    for shard in multihost.local_shards(num_shards, process_index, process_count):
        order = DocumentOrder(len(source), num_shards, shard, config.seed, shuffle)
        doc_tokenizer = DocumentTokenizer(source, tokenizer, add_bos=config.add_bos, add_eos=config.add_eos,
                                          on_decode_error=config.on_decode_error)
        docs = (PrecomputedDocuments(doc_tokenizer, order.global_ids(), cache_dir) if precompute
                else LazyDocuments(doc_tokenizer, order.local_to_global, order.size))
        documents.append(docs)
        streams[shard] = ShardStream(docs, order, mode=config.mode, min_doc_tokens=config.min_doc_tokens,
                                     seed=config.seed, pose_target_len=config.pose_target_len,
                                     pose_chunks=config.pose_chunks, num_epochs=num_epochs,
                                     source_name=f"data.source={source.spec!r}", masker=masker)
    return Pipeline(config, source, tokenizer, streams, num_shards, documents)


def make_eval_pipeline(config=None, workdir: str | None = None, **kwargs) -> Pipeline:
    """Held-out documents (data.eval_source, or the source's own held-out split), each read once, in order."""
    config = as_data_config(config)
    kwargs.setdefault("num_epochs", 1)
    return make_pipeline(config, workdir, source=eval_source_spec(config), shuffle=False, **kwargs)
