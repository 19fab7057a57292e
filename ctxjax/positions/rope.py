"""Rotary position embeddings (RoPE) and their context-extension scalings, exactly as transformers 5 computes
them.

`Rope` is the positional scheme a ModelConfig holds: flat fields (what checkpoints and configs store), the
checks and config.json keys every type shares, and the rotation. Everything that depends on `rope_type`
(default, linear, ntk, dynamic, yarn, llama3, longrope) belongs to the class registered under that name in
rope_scalings.py, which also says how to add a type.

Angles are float32 `position * inv_k` (an elementwise product, never a low-precision matmul); cos and sin
are multiplied by the attention factor `a` and cast to the activation dtype; rotation is half-split
("rotate_half", the convention of HF Llama checkpoints). With `partial_rotary_factor` < 1 only the first
d = int(Dh*factor) dims of each head rotate; the rest pass through unscaled.

dynamic and longrope depend on the sequence: like HF's single forward pass from a fresh module, the
length is max(positions)+1 over the whole batch of one call. Under KV-cache decoding each call sees its
own positions, so keys cached earlier keep the rotation of the call that wrote them (HF's behaviour too,
transformers issue #25104); the training path always sees the whole sequence and is exact.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from ctxjax.errors import InputError, warn_once
from ctxjax.positions import rope_scalings
from ctxjax.positions.base import PositionScheme
from ctxjax.positions.rope_scalings import ROPE_TYPES, yarn_correction_range

__all__ = ["Rope", "ROPE_TYPES", "yarn_correction_range"]

_NUMBERS = ("theta", "factor", "original_max_position_embeddings", "partial_rotary_factor",
            "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor",
            "high_freq_factor")


@dataclasses.dataclass(frozen=True)
class Rope(PositionScheme):
    name = "rope"
    hf_families = ("llama", "gemma", "modernbert")

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float | None = None
    # L0: the context length the model was trained at (dynamic: HF's max_position_embeddings).
    original_max_position_embeddings: int | None = None
    partial_rotary_factor: float = 1.0
    attention_factor: float | None = None  # yarn/longrope: replaces the derived factor
    beta_fast: float | None = None  # yarn, default 32
    beta_slow: float | None = None  # yarn, default 1
    mscale: float | None = None  # yarn, DeepSeek style
    mscale_all_dim: float | None = None
    truncate: bool = True  # yarn: round the correction range to whole dims
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    short_factor: tuple[float, ...] | None = None  # longrope
    long_factor: tuple[float, ...] | None = None  # longrope

    def __post_init__(self):
        # Lists from JSON or ml_collections become tuples, so the scheme stays hashable.
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(float(x) for x in value))
        object.__setattr__(self, "rope_type", rope_scalings.canonical(self.rope_type))

    @property
    def scaling(self) -> rope_scalings.RopeScaling:
        """The registered class of this `rope_type`, which computes everything that depends on it."""
        return rope_scalings.get(self.rope_type)

    # ------------------------------------------------------------------ validation
    def validate(self, cfg) -> None:
        def fail(msg):
            raise InputError(f"rope {self.rope_type}: {msg}")

        scaling = self.scaling
        for name in _NUMBERS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                fail(f"{name}={value!r} must be a finite number")
        if not self.theta > 0:
            fail(f"theta={self.theta} must be > 0")
        if not 0 < self.partial_rotary_factor <= 1:
            fail(f"partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1]")
        d = self.rotary_dim(cfg.dim_per_head)
        if d < scaling.min_rotary_dim:
            fail(f"rotary dim {d} is too small; raise head_dim or partial_rotary_factor")
        if d % 2:  # the rotation pairs dimension i with i + d/2
            fail(f"rotary dim {d} (head_dim {cfg.dim_per_head} x partial_rotary_factor "
                 f"{self.partial_rotary_factor}) must be even; choose an even head_dim or another "
                 "partial_rotary_factor")
        if self.factor is not None and self.factor < 1:
            fail(f"factor={self.factor} must be >= 1 (it is new_context / original_context)")
        if self.attention_factor is not None and self.attention_factor < 0:
            fail(f"attention_factor={self.attention_factor} must be >= 0")
        scaling.validate(self, d, fail)

    # ------------------------------------------------------------------ frequencies
    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.partial_rotary_factor)

    def inverse_frequencies(self, head_dim: int, positions=None):
        """(inv [K] float32, attention factor a). `positions` matter only for dynamic and longrope."""
        d = self.rotary_dim(head_dim)
        seq_len = None if positions is None else jnp.max(positions).astype(jnp.int32) + 1
        scaling = self.scaling
        return scaling.inverse_frequencies(self, d, seq_len), scaling.attention_factor(self)

    def rotate(self, q, k, positions):
        inv, a = self.inverse_frequencies(q.shape[-1], positions)
        angles = positions[..., None].astype(jnp.float32) * inv  # [B, L, K], exact float32 products
        angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # broadcast over heads
        cos = (jnp.cos(angles) * a).astype(q.dtype)
        sin = (jnp.sin(angles) * a).astype(q.dtype)
        return _apply_rotation(q, cos, sin), _apply_rotation(k, cos, sin)

    # ------------------------------------------------------------------ Hugging Face config.json
    def to_hf(self, cfg) -> dict[str, Any]:
        """Both formats: transformers 4.x reads `rope_theta` + `rope_scaling`, 5.x reads `rope_parameters`
        (and prefers `rope_scaling` when both exist, so the two must agree)."""
        rope = self.scaling.hf_equivalent(self, self.rotary_dim(cfg.dim_per_head))
        scaling, theta = rope.scaling, float(rope.theta)
        params = {"rope_type": rope.rope_type, **scaling.hf_values(rope)}
        out: dict[str, Any] = {"rope_theta": theta, "rope_parameters": {**params, "rope_theta": theta}}
        out["rope_scaling"] = {**params, "type": rope.rope_type} if scaling.scaled else None
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
            out["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
        out.update(scaling.hf_top_level(rope))
        return out

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any]) -> "Rope":
        """Read rope settings with transformers 5's precedence: `rope_scaling` over `rope_parameters`; values
        inside the dict over top-level ones, except a top-level `original_max_position_embeddings`, which
        wins."""
        params = dict(hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {})
        if params and all(isinstance(v, dict) or v is None for v in params.values()):
            raise InputError("per-layer-type rope_parameters (Gemma-style) are not supported; "
                             "use a model whose rope settings are shared by all layers")
        rope_type = rope_scalings.canonical(params.get("rope_type") or params.get("type") or "default")
        readable = [s.name for s in rope_scalings.registered() if s.in_hf]
        if rope_type not in readable:
            raise InputError(f"unknown rope_type {rope_type!r} in config.json; ctxjax reads {readable}")
        max_pos = hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or 2048
        if "rope_theta" not in params and "rope_theta" not in hf_config and params:
            warn_once("config.json's rope settings name no rope_theta: using 10000, transformers' default "
                      "too; a model trained with another base (e.g. 1e5, 5e5) computes something else: "
                      "add rope_theta")
        return cls(
            rope_type=rope_type,
            theta=float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
            partial_rotary_factor=float(params.get("partial_rotary_factor",
                                                   hf_config.get("partial_rotary_factor", 1.0))),
            **rope_scalings.get(rope_type).from_hf(params, hf_config, max_pos),
        )

    def original_context(self, context: int) -> int:
        """The context of the model before any scaling, for a model whose context is now `context` tokens: L0,
        or for PI and NTK (which record none) `context / factor`; `context` itself when unscaled."""
        if not self.scaling.scaled:
            return context
        if self.original_max_position_embeddings:
            return self.original_max_position_embeddings
        return int(round(context / (self.factor or 1.0)))

    def stretched(self, rope_type: str, new_len: int, context: int) -> "Rope":
        """This rotation scaled with `rope_type` to `new_len` tokens in a model whose context is `context`:
        factor new_len / L0. An unscaled rotation gets L0 = context. A scaled one keeps its type, L0 and
        settings (LongRoPE's searched factors, Llama 3's bands, YaRN's betas) and only its factor grows;
        another type would discard them. The fields of the new type are set by its registered class."""
        original = self.original_context(context)
        if self.scaling.scaled and rope_type != self.rope_type:
            raise InputError(f"the model already uses {self.rope_type} RoPE scaling (factor {self.factor:g}, "
                             f"original context {original}); {rope_type} would replace it: extend it with "
                             f"{self.rope_type} (its factor becomes {new_len / original:g}) or give the "
                             "positional settings explicitly")
        return self.replace(**rope_scalings.get(rope_type).extension(self, new_len / original, original))

    def rotation_switch(self) -> int | None:
        return self.scaling.rotation_switch(self)

    def check_local(self, local) -> str:
        return "" if isinstance(local, Rope) else f"local layers must rotate too (got {local.name} positions)"

    def ntk_theta(self, d: int) -> float:
        return float(self.theta) * float(self.factor) ** (d / (d - 2))


# ---------------------------------------------------------------------- rotation


def _apply_rotation(x, cos, sin):
    """Half-split rotation of the first cos.shape[-1] dims of each head; the rest pass through."""
    width = cos.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    half = width // 2
    rotated = rot * cos + jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1) * sin
    return jnp.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated
