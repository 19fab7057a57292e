"""Reference attention: plain einsums over the full [Lq, Lk] score matrix. Simple, exact, quadratic memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Large but finite, so a fully masked row (never produced by the model) gives a uniform average, not NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    """[B, 1, 1, Lq, Lk] boolean: same segment and key position not after the query position."""
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return (same_segment & causal)[:, None, None]


def xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes=None):
    batch, q_len, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    group = n_heads // n_kv
    # Query heads of one group share a K/V head: split H into (G, group) instead of repeating K and V.
    qg = q.reshape(batch, q_len, n_kv, group, head_dim)
    scores = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k, preferred_element_type=jnp.float32) * scale
    if alibi_slopes is not None:
        distance = (q_positions[:, :, None] - kv_positions[:, None, :]).astype(jnp.float32)  # [B, Lq, Lk]
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(n_kv, group)
        scores = scores - slopes[None, :, :, None, None] * distance[:, None, None]
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    scores = jnp.where(mask, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v)
    return out.reshape(batch, q_len, n_heads, head_dim)
