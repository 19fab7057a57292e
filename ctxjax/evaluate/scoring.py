"""Per-token negative log-likelihood of token windows under a model: the one forward pass perplexity needs.

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


@functools.partial(jax.jit, static_argnames=("cfg", "run"))
def window_nll(cfg: ModelConfig, run: ExecutionConfig, params, windows):
    """windows [B, L+1] -> NLL [B, L] float32 (see the module doc)."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model = Transformer(cfg, run)
    hidden = model.apply({"params": params}, inputs, return_hidden=True)
    batch, length, dim = hidden.shape
    chunk = min(LOGIT_CHUNK, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, n_chunks, chunk, dim)
    targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, n_chunks, chunk)

    def chunk_nll(args):
        h, t = args
        logits = model.apply({"params": params}, h, method=Transformer.logits_from_hidden)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit

    nll = jax.lax.map(chunk_nll, (hidden.swapaxes(0, 1), targets.swapaxes(0, 1)))  # [n_chunks, B, chunk]
    return nll.swapaxes(0, 1).reshape(batch, n_chunks * chunk)[:, :length]


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
