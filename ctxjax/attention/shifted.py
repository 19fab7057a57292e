"""LongLoRA's shifted sparse attention (S²-Attn), a training-time approximation on top of any kernel.

Tokens attend only within groups of `group` positions; half the heads use groups shifted by half a group, so
information still flows across group borders from layer to layer. Attention work grows as L * group, not L².
Fine-tuned this way, the model is used with full attention afterwards (LongLoRA, Chen et al. 2023).

Groups are cut by position (`(pos + shift) // group`), not by index: a packed document starts its own first
group, and the zig-zag order of ring attention, which permutes tokens but keeps their positions, changes
nothing. No kernel needs to know about groups: each group is moved `group` positions further than the one
before it, which keeps every distance inside a group and makes every distance across groups at least `group`;
a sliding window of `group` then hides exactly the other groups (and the block-based kernels skip their tiles).
"""

from __future__ import annotations

import jax.numpy as jnp


def stretch(positions, group: int, shift: int):
    """Positions moved apart group by group (see the module docstring)."""
    return positions + ((positions + shift) // group) * group


def shifted_sparse_attention(kernel, q, k, v, *, q_positions, kv_positions, group, sliding_window=0,
                             alibi_slopes=None, **kwargs):
    """`kernel` (the contract of ctxjax.attention) run on each half of the heads with that half's groups.
    Heads [0, H/2) use groups starting at position 0, heads [H/2, H) groups shifted by group/2. A model's own
    sliding window still applies inside each group."""
    n_heads, n_kv = q.shape[2], k.shape[2]
    kv_half = n_kv // 2 if n_kv > 1 else n_kv  # one shared K/V head serves both halves
    window = min(sliding_window, group) if sliding_window else group
    outputs = []
    for half, shift in enumerate((0, group // 2)):
        heads = slice(half * n_heads // 2, (half + 1) * n_heads // 2)
        kv_heads = slice(half * kv_half, (half + 1) * kv_half) if n_kv > 1 else slice(0, 1)
        outputs.append(kernel(
            q[:, :, heads], k[:, :, kv_heads], v[:, :, kv_heads],
            q_positions=stretch(q_positions, group, shift), kv_positions=stretch(kv_positions, group, shift),
            alibi_slopes=None if alibi_slopes is None else alibi_slopes[heads], sliding_window=window, **kwargs))
    return jnp.concatenate(outputs, axis=2)
