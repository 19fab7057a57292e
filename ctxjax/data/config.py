"""DataConfig: every choice of the data pipeline, one documented field each.

A config may arrive as a `DataConfig`, a plain dict or an `ml_collections.ConfigDict` (the recipes in
configs/ use ConfigDicts); `as_data_config` turns any of them into a validated `DataConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.dataclass_config import dataclass_from
from ctxjax.errors import InputError

MODES = ("pack", "pack_whole", "crop")
# What a batch teaches: "next_token" (decoders: targets are the following tokens) or "mlm" (encoders: BERT's
# masked-language modelling; targets are the original tokens at masked positions, ctxjax/data/masking.py).
OBJECTIVES = ("next_token", "mlm")
DECODE_ERROR_POLICIES = ("skip", "fail")


class DataError(InputError):
    """A one-line, user-facing problem with the data set-up; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Where documents come from (see docs/data.md): "stdlib[:train|eval]", "text:GLOB", "jsonl:GLOB[:FIELD]",
    # "tfds:NAME[/CONFIG][:SPLIT]", or a weighted mixture of them "mix:3*tfds:pg19;1*text:/data/*.txt".
    source: str = "stdlib"
    # Held-out documents for evaluation; None derives one from `source` (see sources.eval_source_spec).
    eval_source: str | None = None
    # Feature (tfds) or key (jsonl) holding the text; None picks "text" or the dataset's only text feature.
    text_field: str | None = None
    # tfds data directory; None uses tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    tfds_data_dir: str | None = None
    # Use only the first N documents of the source (quick experiments and tests); None: all of them.
    max_documents: int | None = None
    # "" trains a SentencePiece model on the source (cached in WORKDIR/tokenizer and reused); a path to a
    # SentencePiece `.model`, an HF `tokenizer.json` or a directory holding either; "bytes" for UTF-8 bytes.
    tokenizer: str = ""
    # Vocabulary of a trained SentencePiece model (must not exceed the model's vocab_size).
    vocab_size: int = 4096
    # SentencePiece training reads at most this many characters, sampled by document from the source: BPE
    # training time grows with it (10M characters take about a second here), the vocabulary barely improves.
    tokenizer_train_chars: int = 10_000_000
    add_bos: bool = True  # a document starts with BOS: the first real token then has a target too
    add_eos: bool = True  # a document ends with EOS: the model learns where documents stop
    # "pack": documents laid end to end, several per row, long ones continued in the next row.
    # "pack_whole": as pack, but a document that fits in a row is never cut: it starts a new row when the rest
    # of the current one is too short (padding), so a short document is seen whole (retrieval samples).
    # "crop": one document per row, a random window of it (padding when it is shorter than the row).
    mode: str = "pack"
    # Documents with fewer tokens (BOS/EOS included) are skipped: set it to seq_len + 1 to train extension
    # only on documents that fill a whole row.
    min_doc_tokens: int = 0
    # PoSE: > 0 shifts the positions of `pose_chunks` chunks of each segment so they span up to this many
    # positions, simulating a context of `pose_target_len` while training at a shorter seq_len.
    pose_target_len: int = 0
    pose_chunks: int = 2
    seed: int = 0
    shuffle: bool = True  # False: documents in source order (evaluation)
    on_decode_error: str = "skip"  # non-UTF-8 document: "skip" (counted and logged) or "fail"
    # Independent streams the global batch is cut into; the global batch depends on it, not on the number of
    # processes, which must divide it. None: jax.process_count() at start-up (the value is kept in the state).
    num_shards: int | None = None
    prefetch: int = 2  # batches prepared ahead by a background thread; 0 disables the thread
    # Tokenize a process's whole share once and cache it in WORKDIR/token_cache (True), or tokenize each
    # document when the stream reaches it (False). None: True for local files, False for tfds.
    precompute_tokens: bool | None = None
    # The training objective, as data (the loss is the same cross-entropy): "next_token" or "mlm". With "mlm"
    # each row's text tokens (never BOS/EOS/padding/other specials) are chosen at `mask_rate` (BERT 0.15,
    # ModernBERT 0.3), freshly for every row from (seed, shard, row index) so a resumed run sees the same
    # masks; a chosen token becomes the mask token, a random token or stays itself with the probabilities
    # `mask_replace` (BERT's 80/10/10); the loss counts the chosen positions only. A trained tokenizer gets a
    # mask token; a given one must have one ("bytes+mask" for the byte tokenizer).
    objective: str = "next_token"
    mask_rate: float = 0.15
    mask_replace: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DataError(f"data.mode={self.mode!r} is unknown; use one of {MODES}")
        if self.on_decode_error not in DECODE_ERROR_POLICIES:
            raise DataError(f"data.on_decode_error={self.on_decode_error!r} is unknown; use one of "
                            f"{DECODE_ERROR_POLICIES}")
        if self.pose_target_len and self.pose_chunks < 1:
            raise DataError("data.pose_chunks must be at least 1 when data.pose_target_len is set")
        if self.num_shards is not None and self.num_shards < 1:
            raise DataError("data.num_shards must be at least 1 (or None for one per process)")
        if self.max_documents is not None and self.max_documents < 1:
            raise DataError(f"data.max_documents={self.max_documents} must be at least 1 (or None for all)")
        if self.objective not in OBJECTIVES:
            raise DataError(f"data.objective={self.objective!r} is unknown; use one of {OBJECTIVES}")
        if not (isinstance(self.mask_rate, (int, float)) and 0 < self.mask_rate < 1):
            raise DataError(f"data.mask_rate={self.mask_rate!r} must be a fraction in (0, 1), e.g. 0.15 "
                            "(BERT) or 0.3 (ModernBERT)")
        replace = tuple(self.mask_replace)
        if len(replace) != 3 or min(replace) < 0 or abs(sum(replace) - 1) > 1e-6:
            raise DataError(f"data.mask_replace={self.mask_replace!r} must be three probabilities (mask "
                            "token, random token, unchanged) summing to 1, e.g. (0.8, 0.1, 0.1)")
        object.__setattr__(self, "mask_replace", tuple(float(p) for p in replace))




def as_data_config(config_like: Any = None, **overrides) -> DataConfig:
    """A DataConfig from a DataConfig, dict, ConfigDict (or None for defaults), with `overrides` applied."""
    return dataclass_from(DataConfig, config_like, overrides, what="data", error=DataError)
