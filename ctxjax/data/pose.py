"""PoSE position skipping (Zhu et al., 2023): train at a short length, see the positions of a long one.

A segment of m tokens is cut into `chunks` contiguous chunks; chunk i's positions are shifted by a skip
u_i, with 0 = u_0 <= u_1 <= ... and the last position below `target_len`. Tokens (and so targets) stay
contiguous: only the distances the model sees grow, up to the target context length.
"""

from __future__ import annotations

import numpy as np


def pose_positions(length: int, target_len: int, chunks: int, rng: np.random.Generator) -> np.ndarray:
    """int32 positions for a segment of `length` tokens; plain arange when there is nothing to skip."""
    positions = np.arange(length, dtype=np.int32)
    chunks = min(chunks, length)
    room = target_len - length  # the most the last chunk may be shifted
    if chunks < 2 or room <= 0:
        return positions
    cuts = np.sort(rng.choice(np.arange(1, length), size=chunks - 1, replace=False))
    skips = np.sort(rng.integers(0, room + 1, size=chunks - 1))
    chunk_of_token = np.searchsorted(cuts, positions, side="right")  # 0 for the first chunk
    return positions + np.concatenate([[0], skips]).astype(np.int32)[chunk_of_token]
