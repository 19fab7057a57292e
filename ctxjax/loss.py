"""Next-token cross-entropy from final hidden states, in chunks of the length: [L, V] logits never exist at once.

At 32k tokens and a 32k vocabulary the float32 logits alone are 4 GiB, and autodiff keeps them (and the
softmax) for the backward pass. Here the length is cut into chunks; a `lax.scan` over the chunks computes each
chunk's logits, its log-sum-exp and the target logit, and `jax.checkpoint` on the chunk makes the backward
pass recompute that chunk's logits instead of storing them. Peak extra memory: one [B, chunk, V] block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ctxjax.model import soft_cap

DEFAULT_CHUNK = 1024


def _chunk_sums(kernel, bias, hidden, targets, weights, softcap=0.0):
    """[weighted sum of -log p(target), weighted sum of log(Z)^2] over one chunk: hidden [B, c, D],
    targets and weights [B, c]. log(Z)^2 is PaLM's z-loss term, which keeps the softmax normaliser near 1."""
    # A 2-D [B*c, D] x [D, V] product: XLA:CPU's kernel gradient of the 3-D einsum is several times slower.
    batch, chunk, dim = hidden.shape
    logits = jnp.dot(hidden.reshape(batch * chunk, dim), kernel, preferred_element_type=jnp.float32)
    logits = logits.reshape(batch, chunk, -1)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    logits = soft_cap(logits, softcap)  # Gemma 2's final cap, as the model's logits_from_hidden applies it
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.stack([jnp.sum((log_z - target_logit) * weights), jnp.sum(log_z * log_z * weights)])


def loss_sums(hidden, kernel, targets, weights=None, *, bias=None, chunk=DEFAULT_CHUNK, logit_softcap=0.0):
    """(sum of weighted token losses, sum of weighted log(Z)^2 for a z-loss, sum of weights), so callers can
    average over several micro-batches.

    hidden [B, L, D] (after the final norm), kernel [D, V] (the output projection; pass `embedding.T` for
    tied embeddings), targets [B, L] int, weights [B, L] (1 = counted, 0 = padding; default all ones),
    bias [V] or None, `logit_softcap` C > 0 caps the logits at C tanh(logits / C) (Gemma 2). L need not be a
    multiple of `chunk`: the tail is padded with weight 0.
    """
    batch, length, dim = hidden.shape
    if kernel.ndim != 2 or kernel.shape[0] != dim:
        raise ValueError(f"kernel must be [d_model={dim}, vocab]; got {kernel.shape} (for tied embeddings pass "
                         f"embedding.T)")
    if targets.shape != (batch, length):
        raise ValueError(f"targets must be [{batch}, {length}] like hidden's first two axes; got {targets.shape}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int; got {chunk!r}")
    weights = jnp.ones((batch, length), jnp.float32) if weights is None else weights.astype(jnp.float32)
    chunk = min(chunk, length)
    n_chunks = -(-length // chunk)
    extra = n_chunks * chunk - length

    def chunked(x):  # [B, L, ...] -> [n_chunks, B, chunk, ...], padded at the end
        x = jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(batch, n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

    chunk_sums = jax.checkpoint(functools.partial(_chunk_sums, softcap=logit_softcap))  # the cap stays static

    def step(total, xs):
        return total + chunk_sums(kernel, bias, *xs), None

    (total, z_total), _ = lax.scan(step, jnp.zeros((2,), jnp.float32),
                                   (chunked(hidden), chunked(targets.astype(jnp.int32)), chunked(weights)))
    return total, z_total, jnp.sum(weights)


def cross_entropy_sum(hidden, kernel, targets, weights=None, *, bias=None, chunk=DEFAULT_CHUNK):
    """(sum of weighted token losses, sum of weights); see `loss_sums`."""
    total, _, count = loss_sums(hidden, kernel, targets, weights, bias=bias, chunk=chunk)
    return total, count


def chunked_cross_entropy(hidden, kernel, targets, weights=None, *, bias=None, chunk=DEFAULT_CHUNK):
    """Mean next-token loss over the weighted tokens (see `cross_entropy_sum` for the arguments)."""
    total, count = cross_entropy_sum(hidden, kernel, targets, weights, bias=bias, chunk=chunk)
    return total / jnp.maximum(count, 1.0)


def cross_entropy_from_logits(logits, targets, weights=None):
    """The same mean loss from full logits [B, L, V]: for short sequences and as the tests' reference."""
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    token_loss = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return jnp.sum(token_loss * weights) / jnp.maximum(jnp.sum(weights), 1.0)
