"""ALiBi (Press et al., "Train Short, Test Long"): a per-head linear penalty on query-key distance.

The scheme only supplies slopes; each attention kernel adds -slope_h * (pos_q - pos_k) to its scores block
by block, so no [L, L] bias is ever built. Slopes follow BLOOM exactly, including head counts that are not
powers of two (the odd-indexed slopes of the next power of two fill the remaining heads).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ctxjax.positions.base import PositionScheme


def alibi_slopes(n_heads: int) -> np.ndarray:
    """BLOOM's slopes as float32: 2^(-8h/c) for h = 1..c with c the largest power of two <= n_heads, then
    2^(-4j/c) for odd j when n_heads is not a power of two."""
    closest = 2 ** math.floor(math.log2(n_heads))
    # Powers in float64, rounded once: this reproduces torch's float32 pow bit for bit where numpy's does not.
    base = np.float64(np.float32(2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))))
    slopes = base ** np.arange(1, closest + 1)
    if closest < n_heads:
        extra_base = np.float64(np.float32(2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))))
        remaining = min(closest, n_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 2 * remaining, 2)])
    return slopes.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Alibi(PositionScheme):
    name = "alibi"

    def alibi_slopes(self, n_heads: int):
        return alibi_slopes(n_heads)
