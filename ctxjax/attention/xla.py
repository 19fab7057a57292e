"""Reference attention: plain einsums over the full [Lq, Lk] score matrix. Simple, exact, quadratic memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ctxjax.attention.common import alibi_distance, visible

# Large but finite, so a fully masked row (never produced by the model) gives a uniform average, not NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window=0, causal=True):
    """[B, 1, 1, Lq, Lk] boolean: same segment and, causal, key position not after the query position and,
    with a sliding window W > 0, fewer than W positions before it; non-causal, with a window, fewer than W
    positions away on either side."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    distance = q_positions[:, :, None] - kv_positions[:, None, :]
    return visible(same_segment, distance, sliding_window, causal)[:, None, None]


def xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                  alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=None, block_k=None,
                  causal=True):
    del block_q, block_k  # one block: the whole score matrix
    batch, q_len, n_heads, head_dim = q.shape
    kv_len, n_kv = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    # Query heads of one group share a K/V head: the group's queries become extra rows of one matmul against
    # that K/V head ([B*G, group*Lq, Dh] x [B*G, Dh, Lk]), never a repeated K or V. Plain batched matmuls
    # also run faster on XLA:CPU than the equivalent 5-D einsums, forward and backward.
    qg = q.reshape(batch, q_len, n_kv, group, head_dim).transpose(0, 2, 3, 1, 4)
    qg = qg.reshape(batch * n_kv, group * q_len, head_dim)
    # K and V as [B*G, Lk, Dh], both contracted in place: a KV cache stored heads-first is read as it is.
    kg = k.transpose(0, 2, 1, 3).reshape(batch * n_kv, kv_len, head_dim)
    vg = v.transpose(0, 2, 1, 3).reshape(batch * n_kv, kv_len, head_dim)
    scores = lax.dot_general(qg, kg, (((2,), (2,)), ((0,), (0,))), preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(batch, n_kv, group, q_len, kv_len)
    if logit_softcap:
        scores = logit_softcap * jnp.tanh(scores / logit_softcap)
    if alibi_slopes is not None:
        distance = alibi_distance(q_positions[:, :, None] - kv_positions[:, None, :], causal)  # [B, Lq, Lk]
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(n_kv, group)
        scores = scores - slopes[None, :, :, None, None] * distance[:, None, None]
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window, causal)
    scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(batch * n_kv, group * q_len, kv_len)
    out = jnp.matmul(probs, vg).reshape(batch, n_kv, group, q_len, head_dim)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, n_heads, head_dim)
