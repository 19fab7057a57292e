"""Learned absolute position embeddings (GPT-2's `wpe`, BERT's): a [max_seq_len, D] table added to token
embeddings. RoBERTa's table starts at an `offset` (padding_idx + 1 = 2): position p reads row p + offset, so
the table has max_seq_len + offset rows, and its first `offset` rows (padding) are kept as they are.

The table is the hard limit of the context: a position outside it has no embedding. HF fails on such an
index; here an out-of-range position yields NaN (visible at once in the loss), and a default-position
input longer than the table is rejected before tracing. `extend` grows the table for a longer context.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ctxjax.errors import InputError
from ctxjax.positions.base import PositionScheme

TABLE = ("pos_embed", "embedding")  # where the table lives in the model's params


class LearnedTable(nn.Module):
    num_positions: int  # rows, the offset's included
    features: int
    dtype: str
    param_dtype: str
    offset: int = 0

    @nn.compact
    def __call__(self, positions):
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed")),
            (self.num_positions, self.features),
            jnp.dtype(self.param_dtype),
        )
        vectors = jnp.take(table, positions + self.offset, axis=0, mode="fill", fill_value=jnp.nan)
        return vectors.astype(self.dtype)


@dataclasses.dataclass(frozen=True)
class Learned(PositionScheme):
    name = "learned"
    hf_families = ("gpt2", "bert")

    offset: int = 0  # rows before position 0 (RoBERTa: padding_idx + 1)

    def validate(self, cfg):
        if not isinstance(self.offset, int) or isinstance(self.offset, bool) or self.offset < 0:
            raise InputError(f"learned: offset={self.offset!r} must be an int >= 0 (RoBERTa: 2)")

    def embedding(self, cfg, dtype):
        return LearnedTable(cfg.max_seq_len + self.offset, cfg.d_model, dtype, cfg.param_dtype, self.offset)

    def max_positions(self, cfg):
        return cfg.max_seq_len

    def limit_description(self, cfg):
        after = f" after its {self.offset} padding rows" if self.offset else ""
        return f"the learned position table ({cfg.max_seq_len} rows{after})"

    def extend(self, params, new_len, method="interpolate"):
        if params[TABLE[0]][TABLE[1]].shape[0] == new_len + self.offset:
            return params
        return extend(params, new_len, method, self.offset)

    def fitted_to_params(self, cfg, params):
        return cfg.replace(max_seq_len=int(params[TABLE[0]][TABLE[1]].shape[0]) - self.offset)

    def to_hf(self, cfg):
        if cfg.family == "gpt2":
            return {"n_positions": cfg.max_seq_len}
        return {"max_position_embeddings": cfg.max_seq_len + self.offset}

    @classmethod
    def from_hf(cls, hf_config):
        return cls()


EXTEND_METHODS = ("interpolate", "copy")


def extend(params, new_len: int, method: str = "interpolate", offset: int = 0):
    """Return `params` with the position table grown to `new_len` positions, `new_len + offset` rows (set
    ModelConfig.max_seq_len to match). The first `offset` rows (RoBERTa's padding rows) stay as they are; of
    the positions after them:

    interpolate: row p of the new table is the linear interpolation of the old table at p*(P-1)/(new_len-1),
      so the new table spans the same trajectory at a finer step (Position Interpolation for learned tables).
    copy: the old table is repeated (Longformer's initialisation), so local offsets keep their meaning.
    """
    if method not in EXTEND_METHODS:
        raise InputError(f"extend method {method!r} is unknown; use one of {EXTEND_METHODS}")
    try:
        table = params[TABLE[0]][TABLE[1]]
    except KeyError:
        raise InputError("params have no learned position table (pos_embed/embedding); "
                         "extend applies to models with position=Learned()") from None
    old_len = table.shape[0] - offset
    if old_len < 1:
        raise InputError(f"the position table has {table.shape[0]} rows, none past its offset of {offset}: "
                         "there are no learned positions to grow from")
    if new_len < old_len:
        raise InputError(f"new_len={new_len} is shorter than the current table ({old_len} positions); extend "
                         "only grows")
    head, old = np.asarray(table[:offset], np.float32), np.asarray(table[offset:], dtype=np.float32)
    if method == "copy":
        new = old[np.arange(new_len) % old_len]
    else:
        where = np.linspace(0.0, old_len - 1, new_len)
        lo = np.floor(where).astype(int)
        hi = np.minimum(lo + 1, old_len - 1)
        frac = (where - lo)[:, None].astype(np.float32)
        new = old[lo] * (1 - frac) + old[hi] * frac
    new = np.concatenate([head, new])
    out = dict(params)
    out[TABLE[0]] = {**params[TABLE[0]], TABLE[1]: jnp.asarray(new, dtype=table.dtype)}
    return out
