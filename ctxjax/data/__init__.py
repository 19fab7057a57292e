"""ctxjax.data: documents -> tokens -> packed batches {tokens, positions, segment_ids, targets, weights}.

Entry points: `make_pipeline(config, workdir)` (training stream, resumable), `make_eval_pipeline` (held-out
documents once), `make_global_batch` (multi-host assembly), `load_tokenizer`. See docs/data.md.
"""

from ctxjax.data.config import DataConfig, DataError, as_data_config
from ctxjax.data.multihost import make_global_batch
from ctxjax.data.pipeline import Pipeline, make_eval_pipeline, make_pipeline
from ctxjax.data.sources import DocumentSource, ListSource, eval_source_spec, open_source
from ctxjax.data.stream import BATCH_KEYS
from ctxjax.data.tokenizer import (ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer,
                                   check_vocab_fits, find_tokenizer_file, load_tokenizer)
from ctxjax.data.tokenizer_training import resolve_tokenizer, train_sentencepiece

__all__ = [
    "BATCH_KEYS", "ByteTokenizer", "DataConfig", "DataError", "DocumentSource", "HuggingFaceTokenizer",
    "ListSource", "Pipeline", "SentencePieceTokenizer", "Tokenizer", "as_data_config", "check_vocab_fits",
    "eval_source_spec", "find_tokenizer_file", "load_tokenizer", "make_eval_pipeline", "make_global_batch",
    "make_pipeline", "open_source", "resolve_tokenizer", "train_sentencepiece",
]
