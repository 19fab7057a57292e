"""Random attention inputs that exercise the whole kernel contract, for tests of kernels and of the model.

A case packs several documents per row (segment ids 1, 2, ...; positions restart at 0 in each), optionally
shifts positions by random gaps (PoSE-style), rotates q and k with RoPE at those positions (as the model
does before calling a kernel), and gives ALiBi slopes. Every query sees at least itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Case(NamedTuple):
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    q_segment_ids: np.ndarray
    kv_segment_ids: np.ndarray
    q_positions: np.ndarray
    kv_positions: np.ndarray
    alibi_slopes: np.ndarray | None
    scale: float
    sliding_window: int = 0
    logit_softcap: float = 0.0
    causal: bool = True

    def kwargs(self):
        """Keyword arguments of a kernel call (everything but q, k, v)."""
        return dict(q_segment_ids=self.q_segment_ids, kv_segment_ids=self.kv_segment_ids,
                    q_positions=self.q_positions, kv_positions=self.kv_positions, scale=self.scale,
                    alibi_slopes=self.alibi_slopes, sliding_window=self.sliding_window,
                    logit_softcap=self.logit_softcap, causal=self.causal)


def packed_positions(segment_ids, rng=None, max_gap=0):
    """Positions that restart at 0 in each new segment, with random gaps up to `max_gap` between tokens."""
    batch, length = segment_ids.shape
    positions = np.zeros((batch, length), np.int64)
    for b in range(batch):
        for t in range(1, length):
            gap = 1 + (int(rng.integers(0, max_gap + 1)) if max_gap else 0)
            positions[b, t] = positions[b, t - 1] + gap if segment_ids[b, t] == segment_ids[b, t - 1] else 0
    return positions.astype(np.int32)


def rotate(x, positions, theta=10000.0):
    """RoPE (rotate-half layout) of x [B, L, heads, Dh] at positions [B, L]."""
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) / half)
    angles = positions[:, :, None, None].astype(np.float64) * freqs
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def random_case(seed=0, batch=2, length=96, n_heads=4, n_kv_heads=2, head_dim=16, n_segments=3, max_gap=0,
                alibi=True, rope=True, sliding_window=0, logit_softcap=0.0, causal=True) -> Case:
    """Self-attention over packed rows: `n_segments` documents of random lengths per row."""
    rng = np.random.default_rng(seed)
    segment_ids = np.sort(rng.integers(1, n_segments + 1, (batch, length)), axis=1).astype(np.int32)
    positions = packed_positions(segment_ids, rng, max_gap)
    q = rng.standard_normal((batch, length, n_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, n_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, n_kv_heads, head_dim)).astype(np.float32)
    if rope:
        q, k = rotate(q, positions), rotate(k, positions)
    slopes = 2.0 ** (-8.0 * np.arange(1, n_heads + 1) / n_heads) if alibi else None
    return Case(q, k, v, segment_ids, segment_ids, positions, positions,
                None if slopes is None else slopes.astype(np.float32), head_dim ** -0.5, sliding_window,
                logit_softcap, causal)


def cache_case(seed=0, batch=2, q_len=5, cache_len=40, filled=30, n_heads=4, n_kv_heads=1, head_dim=16,
               sliding_window=0) -> Case:
    """Decoding against a KV cache: the last `q_len` of `filled` tokens query a cache whose tail is empty
    (segment id 0), as a model's generate loop would call a kernel."""
    rng = np.random.default_rng(seed)
    kv_segment_ids = np.zeros((batch, cache_len), np.int32)
    kv_segment_ids[:, :filled] = 1
    kv_positions = np.tile(np.arange(cache_len, dtype=np.int32), (batch, 1))
    q_positions = kv_positions[:, filled - q_len:filled]
    q = rng.standard_normal((batch, q_len, n_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, cache_len, n_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, cache_len, n_kv_heads, head_dim)).astype(np.float32)
    return Case(q, k, v, np.ones((batch, q_len), np.int32), kv_segment_ids, q_positions, kv_positions,
                np.linspace(0.05, 0.5, n_heads).astype(np.float32), head_dim ** -0.5, sliding_window)
