"""Per-token negative log-likelihood of token windows under a model: the one forward pass perplexity needs
(and, for an encoder, the scores of masked tokens: `masked_scorer`).

A scorer maps windows [n, L+1] int32 (L inputs and, shifted by one, L targets) to NLL [n, L] float32, where
column j is -log p(window[j+1] | window[:j+1]). The perplexity code only sees this callable, so tests can
hand it a scorer with known values.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.model import Transformer

Scorer = Callable[[np.ndarray], np.ndarray]

# Logits are made for this many positions at a time, so [B, L, V] never exists at long L with a large vocab.
LOGIT_CHUNK = 1024


def evaluation_execution(attention: str | None = None, dtype: str = "float32") -> ExecutionConfig:
    """How evaluation runs a model: `attention` if given, else "auto" (xla while short, a linear-memory kernel
    when long, ring under a sequence mesh), so that any length a run trained at also evaluates."""
    return ExecutionConfig(attention=attention or "auto", dtype=dtype)


def _chunked_scores(model: Transformer, params, hidden, targets):
    """hidden [B, L, D], targets [B, L] -> (NLL [B, L] float32, top-scoring token [B, L] int32), with logits
    made LOGIT_CHUNK positions at a time."""
    batch, length, dim = hidden.shape
    chunk = min(LOGIT_CHUNK, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, n_chunks, chunk, dim)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, n_chunks, chunk)

    def chunk_scores(args):
        h, t = args
        logits = model.apply({"params": params}, h, method=Transformer.logits_from_hidden)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    nll, top = jax.lax.map(chunk_scores,
                           (hidden.swapaxes(0, 1), targets.swapaxes(0, 1)))  # [n_chunks, B, chunk]
    return tuple(x.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length] for x in (nll, top))


@functools.partial(jax.jit, static_argnames=("cfg", "run"))
def window_nll(cfg: ModelConfig, run: ExecutionConfig, params, windows):
    """windows [B, L+1] -> NLL [B, L] float32 (see the module doc)."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model = Transformer(cfg, run)
    hidden = model.apply({"params": params}, inputs, return_hidden=True)
    return _chunked_scores(model, params, hidden, targets)[0]


@functools.partial(jax.jit, static_argnames=("cfg", "run"))
def masked_token_scores(cfg: ModelConfig, run: ExecutionConfig, params, tokens, segment_ids, targets):
    """An encoder's scores of the tokens at every position: tokens [B, L] (masked inputs), segment_ids [B, L]
    (0: padding, which no real token attends to), targets [B, L] (the original tokens) -> (NLL [B, L],
    top-scoring token [B, L]); the caller reads the masked positions."""
    model = Transformer(cfg, run)
    hidden = model.apply({"params": params}, tokens, segment_ids=segment_ids, return_hidden=True)
    return _chunked_scores(model, params, hidden, targets)


def model_scorer(cfg: ModelConfig, run: ExecutionConfig, params, batch_size: int) -> Scorer:
    """A scorer running `cfg` (as `run` says, e.g. `evaluation_execution()`) on `batch_size` windows per call;
    the last batch is padded with copies of its first window so every call of one length has one shape (one
    compilation)."""

    def score(windows: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            n = len(batch)
            if n < batch_size:
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, axis=0)])
            out.append(np.asarray(window_nll(cfg, run, params, jnp.asarray(batch, jnp.int32)))[:n])
        return np.concatenate(out) if out else np.zeros((0, windows.shape[1] - 1), np.float32)

    return score


MaskedScorer = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def masked_scorer(cfg: ModelConfig, run: ExecutionConfig, params, batch_size: int) -> MaskedScorer:
    """(tokens, segment_ids, targets) [n, L] -> (NLL, top-scoring token) [n, L] numpy, `batch_size` rows per
    call, the last batch padded with copies of its first row (one shape per length, one compilation)."""

    def score(tokens, segment_ids, targets):
        nll, top = [], []
        for start in range(0, len(tokens), batch_size):
            rows = [np.asarray(a[start:start + batch_size], np.int32) for a in (tokens, segment_ids, targets)]
            n = len(rows[0])
            if n < batch_size:
                rows = [np.concatenate([a, np.repeat(a[:1], batch_size - n, axis=0)]) for a in rows]
            out = masked_token_scores(cfg, run, params, *(jnp.asarray(a) for a in rows))
            nll.append(np.asarray(out[0])[:n])
            top.append(np.asarray(out[1])[:n])
        return np.concatenate(nll), np.concatenate(top)

    return score
