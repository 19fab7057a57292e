"""Fixed sinusoidal position vectors (Vaswani et al.) added to the token embeddings: no parameters, any
length.

Layout: [sin(p * w_0..w_{D/2-1}), cos(p * w_0..w_{D/2-1})] with w_i = 10000^(-2i/D).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ctxjax.positions.base import PositionScheme


class SinusoidalTable(nn.Module):
    features: int
    base: float
    dtype: str

    def __call__(self, positions):
        half = self.features // 2
        freqs = 1.0 / (self.base ** (jnp.arange(half, dtype=jnp.float32) * 2 / self.features))
        angles = positions[..., None].astype(jnp.float32) * freqs
        vectors = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        if self.features % 2:
            vectors = jnp.pad(vectors, [(0, 0)] * (vectors.ndim - 1) + [(0, 1)])
        return vectors.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class Sinusoidal(PositionScheme):
    name = "sinusoidal"
    base: float = 10000.0

    def embedding(self, cfg, dtype):
        return SinusoidalTable(cfg.d_model, self.base, dtype)
