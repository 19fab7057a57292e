"""Blockwise (flash) attention in pure JAX: memory linear in length, forward and backward.

Queries and keys are cut into blocks. For each query block an online softmax runs over the key blocks, keeping
only a running max, a running sum and a float32 accumulator; the backward pass (a custom VJP, as in
FlashAttention-2) recomputes each block's probabilities from the saved log-sum-exp instead of storing them.
Peak extra memory is one [B, H, block_q, block_k] score block plus O(L) vectors.

Skipping hidden blocks. Causality is by position, not index, so which blocks are hidden is data, not shape.
Before the loops we take, per block and batch row, the smallest/largest position and segment id; a key block
can be visible to a query block only if its smallest position is <= the query block's largest, their
segment-id ranges overlap, and (with a sliding window W) its largest position is > the query block's smallest
minus W, in some batch row. A `lax.cond` runs the block only then. With ordinary increasing positions this
skips the upper triangle (about half the work), and with a window all but a band of width W (work linear in
L); with packed rows it also skips blocks between different documents; with any other layout (PoSE, ring
shards, zig-zag order) it stays exact and skips what the bounds prove hidden. Non-causal (`causal=False`)
only segments and the window hide a block: one whose keys all lie W or more positions before *or after* every
query of the other (a band of width 2W - 1, still linear in L).

`forward_pass` and `backward_pass` work on one chunk of keys at a time and carry their state, so the ring
kernel reuses them for the key/value shard it currently holds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ctxjax.attention.common import (alibi_distance, block_size, check_inputs, from_grouped,
                                     keep_for_backward, repeat, to_grouped, visible)

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512

F32 = jnp.float32


def _block_bounds(segment_ids, positions, block):
    """Per batch row and block: (min position, max position, min segment, max segment), each [B, n_blocks]."""
    batch, length = positions.shape
    pos = positions.reshape(batch, length // block, block)
    seg = segment_ids.reshape(batch, length // block, block)
    return pos.min(-1), pos.max(-1), seg.min(-1), seg.max(-1)


def _may_interact(q_bounds, i, kv_bounds, j, window, causal=True):
    """False only if no query of block i can see any key of block j in any batch row."""
    q_pos_min, q_pos_max, q_seg_min, q_seg_max = (b[:, i] for b in q_bounds)
    kv_pos_min, kv_pos_max, kv_seg_min, kv_seg_max = (b[:, j] for b in kv_bounds)
    may = (kv_seg_min <= q_seg_max) & (q_seg_min <= kv_seg_max)
    if causal:  # every key is after every query
        may &= kv_pos_min <= q_pos_max
    if window:  # the closest pair is still window or more positions apart: every key is out of the window
        may &= q_pos_min - kv_pos_max < window
        if not causal:  # ... on the other side too
            may &= kv_pos_min - q_pos_max < window
    return jnp.any(may)


def _block_logits(qb, kb, q_seg, kv_seg, q_pos, kv_pos, slopes, window, softcap=0.0, causal=True,
                  keys_first=False):
    """Float32 logits of one block pair, -inf where hidden, the distance ALiBi scales (`alibi_distance`), and
    (with a soft cap C) the cap's derivative 1 - tanh^2 for the backward pass (else None).

    Queries first (forward): logits [B, G, bq, R, bk], distance [B, bq, bk]; P @ V then contracts the last
    axis. Keys first (backward): [B, G, bk, bq, R] and [B, bk, bq]; dV = P^T dO and dK = dS^T Q contract over
    queries, and with queries last XLA:CPU makes no transposed copies of P and dS (3x faster backward).
    """
    if keys_first:
        logits = jnp.einsum("bgkd,bgqrd->bgkqr", kb, qb, preferred_element_type=F32)
        distance, same_segment, kv_pos = (q_pos[:, None, :] - kv_pos[:, :, None],
                                          q_seg[:, None, :] == kv_seg[:, :, None], kv_pos[:, :, None])
        per_pair, per_head = (lambda x: x[:, None, :, :, None]), (lambda s: s[None, :, None, None, :])
    else:
        logits = jnp.einsum("bgqrd,bgkd->bgqrk", qb, kb, preferred_element_type=F32)
        distance, same_segment, kv_pos = (q_pos[:, :, None] - kv_pos[:, None, :],
                                          q_seg[:, :, None] == kv_seg[:, None, :], kv_pos[:, None, :])
        per_pair, per_head = (lambda x: x[:, None, :, None, :]), (lambda s: s[None, :, None, :, None])
    cap_slope = None
    if softcap:  # Gemma 2: C tanh(s / C) on the scaled scores, before any bias and the mask
        capped = jnp.tanh(logits / softcap)
        logits, cap_slope = softcap * capped, 1.0 - capped * capped
    mask = visible(same_segment, distance, window, causal, kv_pos)
    distance = alibi_distance(distance, causal)
    if slopes is not None:
        logits = logits - per_head(slopes) * per_pair(distance)
    return jnp.where(per_pair(mask), logits, -jnp.inf), distance, cap_slope


def _slice(x, start, size, axis=2):
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _update(x, block, start, axis=2):
    return lax.dynamic_update_slice_in_dim(x, block, start, axis)


def init_state(g):
    """Empty online-softmax state for the queries of `g`: (accumulator, running max, running sum)."""
    shape = g.q.shape[:-1]
    return jnp.zeros(g.q.shape, F32), jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32)


def forward_pass(state, g, block_q, block_k, window=0, softcap=0.0, causal=True):
    """Continue every query's online softmax `state` over all key blocks of `g`."""
    n_q, n_kv = g.q.shape[2] // block_q, g.k.shape[2] // block_k
    q_bounds = _block_bounds(g.q_segment_ids, g.q_positions, block_q)
    kv_bounds = _block_bounds(g.kv_segment_ids, g.kv_positions, block_k)

    def query_block(i, state):
        qs = i * block_q
        qb = _slice(g.q, qs, block_q)
        q_seg, q_pos = _slice(g.q_segment_ids, qs, block_q, 1), _slice(g.q_positions, qs, block_q, 1)

        def key_block(j, carry):
            ks = j * block_k

            def attend(carry):  # slices inside the branch: a skipped block copies nothing
                acc, m, l = carry  # noqa: E741
                kb, vb = _slice(g.k, ks, block_k), _slice(g.v, ks, block_k)
                logits, _, _ = _block_logits(qb, kb, q_seg, _slice(g.kv_segment_ids, ks, block_k, 1), q_pos,
                                             _slice(g.kv_positions, ks, block_k, 1), g.slopes, window,
                                             softcap, causal)
                m_new = jnp.maximum(m, logits.max(-1))
                # A row with nothing visible yet keeps max -inf; shift by 0 then so exp gives 0, not NaN.
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                p = jnp.exp(logits - m_safe[..., None])
                correction = jnp.exp(m - m_safe)
                pv = jnp.einsum("bgqrk,bgkd->bgqrd", p.astype(vb.dtype), vb, preferred_element_type=F32)
                return acc * correction[..., None] + pv, m_new, l * correction + p.sum(-1)

            return lax.cond(_may_interact(q_bounds, i, kv_bounds, j, window, causal), attend, lambda c: c,
                            carry)

        block_state = tuple(_slice(s, qs, block_q) for s in state)
        block_state = repeat(n_kv, key_block, block_state)
        return tuple(_update(s, b, qs) for s, b in zip(state, block_state))

    return repeat(n_q, query_block, state)


def finish(state, dtype):
    """Normalised output [B, G, Lq, R, Dh] and log-sum-exp [B, G, Lq, R] (-inf, output 0 for rows seeing
    nothing)."""
    acc, m, l = state  # noqa: E741
    seen = l > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return out.astype(dtype), lse


def backward_pass(g, lse, delta, d_out, block_q, block_k, window=0, softcap=0.0, causal=True):
    """Gradients of the loss w.r.t. g.q, g.k, g.v (float32) and g.slopes, for the keys of `g` only.

    `lse` is each query's final log-sum-exp over *all* keys and `delta` = rowsum(d_out * out), so the
    probabilities recomputed here are the true ones even when `g` holds only a shard of the keys.
    """
    n_q, n_kv = g.q.shape[2] // block_q, g.k.shape[2] // block_k
    q_bounds = _block_bounds(g.q_segment_ids, g.q_positions, block_q)
    kv_bounds = _block_bounds(g.kv_segment_ids, g.kv_positions, block_k)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # rows that see nothing have p = 0 anyway
    d_slopes = None if g.slopes is None else jnp.zeros(g.slopes.shape, F32)

    def key_block(j, carry):
        dq, dk, dv, d_slopes = carry
        ks = j * block_k
        kb, vb = _slice(g.k, ks, block_k), _slice(g.v, ks, block_k)
        kv_seg, kv_pos = _slice(g.kv_segment_ids, ks, block_k, 1), _slice(g.kv_positions, ks, block_k, 1)

        def query_block(i, inner):
            dq, dkb, dvb, d_slopes = inner
            qs = i * block_q

            def attend(dkb, dvb, d_slopes):
                qb, dob = _slice(g.q, qs, block_q), _slice(d_out, qs, block_q)
                logits, distance, cap_slope = _block_logits(qb, kb, _slice(g.q_segment_ids, qs, block_q, 1),
                                                            kv_seg, _slice(g.q_positions, qs, block_q, 1),
                                                            kv_pos, g.slopes, window, softcap, causal,
                                                            keys_first=True)
                p = jnp.exp(logits - _slice(lse, qs, block_q)[:, :, None])  # [B, G, bk, bq, R]
                dvb = dvb + jnp.einsum("bgkqr,bgqrd->bgkd", p.astype(dob.dtype), dob,
                                       preferred_element_type=F32)
                dp = jnp.einsum("bgkd,bgqrd->bgkqr", vb, dob, preferred_element_type=F32)
                ds = p * (dp - _slice(delta, qs, block_q)[:, :, None])  # w.r.t. the logits after cap and bias
                if d_slopes is not None:  # logits hold -slope * distance, and ds is 0 where hidden
                    d_slopes = d_slopes - jnp.einsum("bgkqr,bkq->gr", ds, distance)
                if cap_slope is not None:  # through C tanh(s / C): w.r.t. the scaled scores q.k
                    ds = ds * cap_slope
                dkb = dkb + jnp.einsum("bgkqr,bgqrd->bgkd", ds.astype(qb.dtype), qb,
                                       preferred_element_type=F32)
                # As dQ^T = K^T dS^T: transposing the small K block and result, not the large dS block.
                dq_block = jnp.einsum("bgkd,bgkqr->bgdqr", kb, ds.astype(kb.dtype),
                                      preferred_element_type=F32)
                dq_block = dq_block.transpose(0, 1, 3, 4, 2)
                return dq_block, dkb, dvb, d_slopes

            def skip(dkb, dvb, d_slopes):
                return jnp.zeros(g.q.shape[:2] + (block_q,) + g.q.shape[3:], F32), dkb, dvb, d_slopes

            # Only block-sized values pass through the cond: the full dq buffer is updated in place outside
            # it.
            dq_block, dkb, dvb, d_slopes = lax.cond(_may_interact(q_bounds, i, kv_bounds, j, window, causal),
                                                    attend, skip, dkb, dvb, d_slopes)
            return _update(dq, _slice(dq, qs, block_q) + dq_block, qs), dkb, dvb, d_slopes

        zeros = jnp.zeros(kb.shape, F32)
        dq, dkb, dvb, d_slopes = repeat(n_q, query_block, (dq, zeros, zeros, d_slopes))
        return dq, _update(dk, dkb, ks), _update(dv, dvb, ks), d_slopes

    init = (jnp.zeros(g.q.shape, F32), jnp.zeros(g.k.shape, F32), jnp.zeros(g.v.shape, F32), d_slopes)
    return repeat(n_kv, key_block, init)


def row_delta(out, d_out):
    """rowsum(d_out * out) per query row, float32 — the softmax-backward term shared by all key blocks."""
    return jnp.sum(out.astype(F32) * d_out.astype(F32), axis=-1)


# `rules` = (sliding window, logit soft cap, causal): the static arguments the passes take after the blocks.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _grouped_attention(g, block_q, block_k, rules):
    out, _ = finish(forward_pass(init_state(g), g, block_q, block_k, *rules), g.q.dtype)
    return out


def _grouped_attention_fwd(g, block_q, block_k, rules):
    out, lse = keep_for_backward(*finish(forward_pass(init_state(g), g, block_q, block_k, *rules), g.q.dtype))
    return out, (g, out, lse)


def _grouped_attention_bwd(block_q, block_k, rules, residuals, d_out):
    g, out, lse = residuals
    dq, dk, dv, d_slopes = backward_pass(g, lse, row_delta(out, d_out), d_out, block_q, block_k, *rules)
    return (g._replace(q=dq.astype(g.q.dtype), k=dk.astype(g.k.dtype), v=dv.astype(g.v.dtype),
                       q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                       slopes=d_slopes),)


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


def blockwise_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                        alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=DEFAULT_BLOCK_Q,
                        block_k=DEFAULT_BLOCK_K, causal=True):
    """The kernel contract of `ctxjax.attention`, in blocks of `block_q` queries by `block_k` keys.

    Lengths need not be multiples of the blocks: they are padded (padded keys are never visible, padded
    query rows are dropped). A block larger than the length shrinks to the length.
    """
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    bq, bk = block_size(block_q, q.shape[1]), block_size(block_k, k.shape[1])
    g = to_grouped(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes, bq,
                   bk)
    rules = (sliding_window, float(logit_softcap), bool(causal))
    return from_grouped(_grouped_attention(g, bq, bk, rules), q.shape[1])
