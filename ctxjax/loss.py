"""Next-token cross-entropy from final hidden states, in chunks of the length: [L, V] logits never exist at
once.

At 32k tokens and a 32k vocabulary the float32 logits alone are 4 GiB, and autodiff keeps them (and the
softmax) for the backward pass. Here the length is cut into chunks; a `lax.scan` over the chunks computes each
chunk's logits, its log-sum-exp and the target logit, and `jax.checkpoint` on the chunk makes the backward
pass recompute that chunk's logits instead of storing them. Peak extra memory: one [B, chunk, V] block.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ctxjax.errors import InputError


DEFAULT_CHUNK = 1024


def _flat_logits(kernel, bias, hidden, softcap):
    """Float32 logits [B*c, V] of one chunk hidden [B, c, D] (bias, then Gemma 2's final cap C tanh(x / C) as
    the model's logits_from_hidden applies it) and the cap's tanh for its derivative (None without a cap)."""
    # A 2-D [B*c, D] x [D, V] product: XLA:CPU's kernel gradient of the 3-D einsum is several times slower.
    batch, chunk, dim = hidden.shape
    logits = jnp.dot(hidden.reshape(batch * chunk, dim), kernel, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if not softcap:
        return logits, None
    capped = jnp.tanh(logits / softcap)
    return softcap * capped, capped


def _weighted_sums(logits, targets, weights):
    """([weighted sum of -log p(target), weighted sum of log(Z)^2], log Z) of flat logits [N, V], targets and
    weights [N]. log(Z)^2 is PaLM's z-loss term, which keeps the softmax normaliser near 1."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return jnp.stack([jnp.sum((log_z - target_logit) * weights), jnp.sum(log_z * log_z * weights)]), log_z


def _chunk_sums(kernel, bias, hidden, targets, weights, softcap=0.0):
    """`_weighted_sums` of one chunk: hidden [B, c, D], targets and weights [B, c]."""
    logits, _ = _flat_logits(kernel, bias, hidden, softcap)
    return _weighted_sums(logits, targets.reshape(-1), weights.reshape(-1))[0]


def loss_sums(hidden, kernel, targets, weights=None, *, bias=None, chunk=DEFAULT_CHUNK, logit_softcap=0.0):
    """(sum of weighted token losses, sum of weighted log(Z)^2 for a z-loss, sum of weights), so callers can
    average over several micro-batches.

    hidden [B, L, D] (after the final norm), kernel [D, V] (the output projection; pass `embedding.T` for
    tied embeddings), targets [B, L] int, weights [B, L] (1 = counted, 0 = padding; default all ones),
    bias [V] or None, `logit_softcap` C > 0 caps the logits at C tanh(logits / C) (Gemma 2). L need not be a
    multiple of `chunk`: the tail is padded with weight 0.
    """
    weights = _checked_weights(hidden, kernel, targets, weights, chunk)
    xs, _, _ = _chunked((hidden, targets.astype(jnp.int32), weights), hidden.shape[1], chunk)
    chunk_sums = jax.checkpoint(functools.partial(_chunk_sums, softcap=logit_softcap))  # the cap stays static

    def step(total, x):
        return total + chunk_sums(kernel, bias, *x), None

    (total, z_total), _ = lax.scan(step, jnp.zeros((2,), jnp.float32), xs)
    return total, z_total, jnp.sum(weights)


def _checked_weights(hidden, kernel, targets, weights, chunk):
    """Float32 weights (all ones when None), after one-line errors for inputs that do not fit together."""
    batch, length, dim = hidden.shape
    if kernel.ndim != 2 or kernel.shape[0] != dim:
        raise InputError(f"kernel must be [d_model={dim}, vocab]; got {kernel.shape} (for tied embeddings "
                         f"pass embedding.T)")
    if targets.shape != (batch, length):
        raise InputError(f"targets must be [{batch}, {length}] like hidden's first two axes; got "
                         f"{targets.shape}")
    if not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive int; got {chunk!r}")
    return jnp.ones((batch, length), jnp.float32) if weights is None else weights.astype(jnp.float32)


def _chunked(arrays, length, chunk):
    """[B, L, ...] arrays -> [n_chunks, B, chunk, ...], the last chunk padded (weights pad with 0), with
    n_chunks and the chunk actually used."""
    chunk = min(chunk, length)
    n_chunks = -(-length // chunk)
    extra = n_chunks * chunk - length

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(x.shape[0], n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

    return tuple(split(x) for x in arrays), n_chunks, chunk


def _chunk_sums_and_grads(kernel, bias, hidden, targets, weights, groups, softcap, z_loss, need, n_groups):
    """`_chunk_sums` of one chunk, its weighted losses and weights summed per group ([n_groups, 2]), and the
    gradient of its total + z_loss * z_total with respect to hidden, kernel and bias (None where `need` says
    no one asks): d/dlogits = w (softmax (1 + 2 z_loss log Z) - onehot(target))."""
    batch, chunk, dim = hidden.shape
    logits, capped = _flat_logits(kernel, bias, hidden, softcap)
    targets, weights, groups = targets.reshape(-1), weights.reshape(-1), groups.reshape(-1)
    sums, log_z = _weighted_sums(logits, targets, weights)
    token_loss = log_z - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    by_group = jax.ops.segment_sum(jnp.stack([token_loss * weights, weights], axis=-1), groups, n_groups)
    d_logits = jnp.exp(logits - log_z[:, None]) * (weights * (1.0 + 2.0 * z_loss * log_z))[:, None]
    d_logits = d_logits.at[jnp.arange(targets.shape[0]), targets].add(-weights)
    if softcap:  # through C tanh(raw / C)
        d_logits = d_logits * (1.0 - capped * capped)
    d_hidden = None
    if need["hidden"]:
        d_hidden = jnp.dot(d_logits.astype(kernel.dtype), kernel.T, preferred_element_type=jnp.float32)
        d_hidden = d_hidden.reshape(batch, chunk, dim).astype(hidden.dtype)
    flat = hidden.reshape(batch * chunk, dim)
    d_kernel = jnp.dot(flat.T, d_logits.astype(flat.dtype), preferred_element_type=jnp.float32) \
        if need["kernel"] else None
    d_bias = d_logits.sum(0) if need["bias"] else None
    return sums, by_group, d_hidden, d_kernel, d_bias


def _objective_pass(hidden, kernel, bias, targets, weights, groups, chunk, softcap, z_loss, n_groups, need):
    """One scan over the chunks: (sums [2], sums per group [n_groups, 2]) and the gradients `need` asks
    for."""
    batch, length, dim = hidden.shape
    xs, n_chunks, chunk = _chunked((hidden, targets.astype(jnp.int32), weights, groups), length, chunk)

    def step(carry, x):
        sums, by_group, d_kernel, d_bias = carry
        chunk_sums, chunk_groups, d_hidden, dk, db = _chunk_sums_and_grads(kernel, bias, *x, softcap, z_loss,
                                                                           need, n_groups)
        d_kernel = d_kernel if dk is None else d_kernel + dk
        d_bias = d_bias if db is None else d_bias + db
        return (sums + chunk_sums, by_group + chunk_groups, d_kernel, d_bias), d_hidden

    init = (jnp.zeros((2,), jnp.float32), jnp.zeros((n_groups, 2), jnp.float32),
            jnp.zeros(kernel.shape, jnp.float32) if need["kernel"] else None,
            jnp.zeros(bias.shape, jnp.float32) if need["bias"] else None)
    (sums, by_group, d_kernel, d_bias), d_hidden = lax.scan(step, init, xs)
    if d_hidden is not None:  # [n_chunks, B, chunk, D] -> [B, L, D]
        d_hidden = d_hidden.swapaxes(0, 1).reshape(batch, n_chunks * chunk, dim)[:, :length]
    return sums, by_group, (d_hidden, d_kernel, d_bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _objective(hidden, kernel, bias, targets, weights, groups, chunk, softcap, z_loss, n_groups):
    nothing = dict(hidden=False, kernel=False, bias=False)
    sums, by_group, _ = _objective_pass(hidden, kernel, bias, targets, weights, groups, chunk, softcap,
                                        z_loss, n_groups, nothing)
    return sums[0] + z_loss * sums[1], sums[0], sums[1], by_group


def _objective_fwd(hidden, kernel, bias, targets, weights, groups, chunk, softcap, z_loss, n_groups):
    # With symbolic zeros each input comes as (value, perturbed); an absent bias stays None.
    need = dict(hidden=hidden.perturbed, kernel=kernel.perturbed, bias=bias is not None and bias.perturbed)
    inputs = (hidden, kernel, bias, targets, weights, groups)
    hidden, kernel, bias, targets, weights, groups = (None if x is None else x.value for x in inputs)
    sums, by_group, (d_hidden, d_kernel, d_bias) = _objective_pass(
        hidden, kernel, bias, targets, weights, groups, chunk, softcap, z_loss, n_groups, need)
    grads = (d_hidden, None if d_kernel is None else d_kernel.astype(kernel.dtype),
             None if d_bias is None else d_bias.astype(bias.dtype))
    return (sums[0] + z_loss * sums[1], sums[0], sums[1], by_group), grads


def _objective_bwd(chunk, softcap, z_loss, n_groups, grads, cotangents):
    d_objective, *parts = cotangents
    if not all(isinstance(c, jax.custom_derivatives.SymbolicZero) for c in parts):
        raise InputError("objective_sums differentiates its objective only; differentiate loss_sums for the "
                         "parts")
    return tuple(None if g is None else g * d_objective.astype(g.dtype) for g in grads) + (None, None, None)


_objective.defvjp(_objective_fwd, _objective_bwd, symbolic_zeros=True)


class ObjectiveSums(NamedTuple):
    objective: jax.Array  # losses + z_loss * log(Z)^2, summed: what the step differentiates
    total: jax.Array  # sum of weighted token losses
    z_total: jax.Array  # sum of weighted log(Z)^2
    count: jax.Array  # sum of weights
    by_group: jax.Array  # [n_groups, 2]: weighted token losses and weights summed per group (`groups`)


def objective_sums(hidden, kernel, targets, weights=None, *, z_loss=0.0, bias=None, chunk=DEFAULT_CHUNK,
                   logit_softcap=0.0, groups=None, n_groups=1) -> ObjectiveSums:
    """The training objective of `loss_sums`, for gradient descent, with its parts (see ObjectiveSums).
    `groups` [B, L] int in [0, n_groups) sorts the token losses into groups (e.g. by position: loss by
    position during training) from the same pass; default: one group, all tokens.

    Its gradient is computed chunk by chunk in the forward pass, while each chunk's logits are at hand: one
    [chunk, V] product per chunk fewer than autodiff of `loss_sums`, which computes the logits again in the
    backward pass (about 8% of a train step's FLOPs for a small model with a 32k vocabulary). Gradients of
    frozen inputs (LoRA's frozen output layer) are not computed. Only the objective may be differentiated.
    """
    weights = _checked_weights(hidden, kernel, targets, weights, chunk)
    groups = jnp.zeros(targets.shape, jnp.int32) if groups is None else groups.astype(jnp.int32)
    objective, total, z_total, by_group = _objective(hidden, kernel, bias, targets, weights, groups,
                                                     min(chunk, hidden.shape[1]), float(logit_softcap),
                                                     float(z_loss), int(n_groups))
    return ObjectiveSums(objective, total, z_total, jnp.sum(weights), by_group)


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
