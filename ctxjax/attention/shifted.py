"""LongLoRA's shifted sparse attention (S²-Attn), a training-time approximation on top of any kernel.

Tokens attend only within groups of `group` positions; half the heads use groups shifted by half a group, so
information still flows across group borders from layer to layer. Attention work grows as L * group, not L².
Fine-tuned this way, the model is used with full attention afterwards (LongLoRA, Chen et al. 2023).

Groups are cut by position (`(pos + shift) // group`), not by index: a packed document starts its own first
group, and the zig-zag order of ring attention, which permutes tokens but keeps their positions, changes
nothing. No kernel needs to know about groups: every (document, group) pair becomes a segment of its own, so
the kernels' ordinary same-segment rule hides the other groups (the block-based kernels skip their tiles, and
in ordinary batches splash keeps its fused fast path: the new segments are still contiguous and increasing).
"""

from __future__ import annotations

import jax.numpy as jnp


def group_segments(segment_ids, positions, group: int, shift: int):
    """Segment ids [B, L] -> ids of (segment, group of (position + shift) // group) pairs: 1, 2, ... in the
    order of (segment, group), equal exactly when both are (a rank, so no id ever overflows)."""
    groups = (positions + shift) // group
    order = jnp.lexsort((groups, segment_ids), axis=-1)  # by segment, then group
    seg, grp = (jnp.take_along_axis(x, order, axis=-1) for x in (segment_ids, groups))
    changed = (seg[:, 1:] != seg[:, :-1]) | (grp[:, 1:] != grp[:, :-1])
    starts = jnp.concatenate([jnp.ones_like(changed[:, :1]), changed], axis=-1)
    ranks = jnp.cumsum(starts, axis=-1, dtype=jnp.int32)
    return jnp.take_along_axis(ranks, jnp.argsort(order, axis=-1), axis=-1)


def shifted_sparse_attention(kernel, q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                             group, alibi_slopes=None, **kwargs):
    """`kernel` (the contract of ctxjax.attention) run on each half of the heads with that half's groups.
    Heads [0, H/2) use groups starting at position 0, heads [H/2, H) groups shifted by group/2. Positions,
    ALiBi distances and a model's own sliding window are untouched."""
    n_heads, n_kv, q_len = q.shape[2], k.shape[2], q.shape[1]
    kv_half = n_kv // 2 if n_kv > 1 else n_kv  # one shared K/V head serves both halves
    # Queries and keys are ranked together, so that one (segment, group) pair gets one id on both sides.
    segments = jnp.concatenate([q_segment_ids, kv_segment_ids], axis=1)
    positions = jnp.concatenate([q_positions, kv_positions], axis=1)
    outputs = []
    for half, shift in enumerate((0, group // 2)):
        heads = slice(half * n_heads // 2, (half + 1) * n_heads // 2)
        kv_heads = slice(half * kv_half, (half + 1) * kv_half) if n_kv > 1 else slice(0, 1)
        ids = group_segments(segments, positions, group, shift)
        outputs.append(kernel(
            q[:, :, heads], k[:, :, kv_heads], v[:, :, kv_heads],
            q_segment_ids=ids[:, :q_len], kv_segment_ids=ids[:, q_len:], q_positions=q_positions,
            kv_positions=kv_positions, alibi_slopes=None if alibi_slopes is None else alibi_slopes[heads],
            **kwargs))
    return jnp.concatenate(outputs, axis=2)
