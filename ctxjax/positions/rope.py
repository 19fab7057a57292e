"""Rotary position embeddings (RoPE) and their context-extension scalings, exactly as transformers 5 computes them.

Each `rope_type` is one function from the rope parameters to (inverse frequencies [K], attention factor a),
computed in float32 in Hugging Face's order of operations (see shared/reference/rope_spec.md):

- default   inv_k = theta^(-2k/d)
- linear    Position Interpolation: inv_k / factor
- ntk       static NTK-aware base change: theta' = theta * factor^(d/(d-2)) (exports to HF as `default`
            with theta')
- dynamic   dynamic NTK: theta' = theta * (factor*L/L0 - (factor-1))^(d/(d-2)), L = max(max(pos)+1, L0)
- yarn      NTK-by-parts ramp between inv_k and inv_k/factor, plus attention factor 0.1 ln(factor) + 1
- llama3    Llama 3.1 wavelength bands
- longrope  per-frequency factors, `long_factor` when max(pos)+1 > L0 else `short_factor`

Angles are float32 `position * inv_k` (an elementwise product, never a low-precision matmul); cos and sin
are multiplied by `a` and cast to the activation dtype; rotation is half-split ("rotate_half", the
convention of HF Llama checkpoints). With `partial_rotary_factor` < 1 only the first d = int(Dh*factor)
dims of each head rotate; the rest pass through unscaled.

dynamic and longrope depend on the sequence: like HF's single forward pass from a fresh module, the
length is max(positions)+1 over the whole batch of one call. Under KV-cache decoding each call sees its
own positions, so keys cached earlier keep the rotation of the call that wrote them (HF's behaviour too,
transformers issue #25104); the training path always sees the whole sequence and is exact.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp

from ctxjax.errors import InputError, warn_once
from ctxjax.positions.base import PositionScheme

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
# HF rope keys that belong to each type (besides rope_type / rope_theta / partial_rotary_factor).
_HF_KEYS = {
    "default": (),
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("factor", "original_max_position_embeddings", "attention_factor", "short_factor", "long_factor"),
}
# Legacy labels found in hub configs.
_ALIASES = {"su": "longrope"}
_NUMBERS = ("theta", "factor", "original_max_position_embeddings", "partial_rotary_factor", "attention_factor",
            "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor")
# Scalings that are the identity at factor 1 (dynamic NTK still grows its base past L0; LongRoPE has its lists).
_IDENTITY_AT_FACTOR_1 = ("linear", "ntk", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope(PositionScheme):
    name = "rope"
    hf_families = ("llama", "gemma")

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
        object.__setattr__(self, "rope_type", _ALIASES.get(self.rope_type, self.rope_type))

    # ------------------------------------------------------------------ validation
    def validate(self, cfg) -> None:
        def fail(msg):
            raise InputError(f"rope {self.rope_type}: {msg}")

        if self.rope_type not in ROPE_TYPES:
            raise InputError(f"unknown rope_type {self.rope_type!r}; choose one of {ROPE_TYPES}")
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
        if d < 2 or (self.rope_type in ("ntk", "dynamic") and d <= 2):
            fail(f"rotary dim {d} is too small; raise head_dim or partial_rotary_factor")
        if d % 2:  # the rotation pairs dimension i with i + d/2
            fail(f"rotary dim {d} (head_dim {cfg.dim_per_head} x partial_rotary_factor {self.partial_rotary_factor}) "
                 "must be even; choose an even head_dim or another partial_rotary_factor")
        needs_factor = self.rope_type in ("linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
        if needs_factor and self.factor is None:
            fail("needs `factor` (the context extension ratio, e.g. 4.0)")
        if self.factor is not None and self.factor < 1:
            fail(f"factor={self.factor} must be >= 1 (it is new_context / original_context)")
        if self.factor == 1 and self.rope_type in _IDENTITY_AT_FACTOR_1:
            warn_once(f"rope {self.rope_type} with factor 1 computes exactly the unscaled rotation: it extends "
                      "nothing (factor is new_context / original_context, e.g. 4.0)")
        needs_l0 = self.rope_type in ("dynamic", "yarn", "llama3", "longrope")
        if needs_l0 and not self.original_max_position_embeddings:
            fail("needs `original_max_position_embeddings` (the context length the model was trained at)")
        if self.attention_factor is not None and self.attention_factor < 0:
            fail(f"attention_factor={self.attention_factor} must be >= 0")
        if self.rope_type == "yarn" and self._beta_fast < self._beta_slow:
            fail(f"beta_fast={self._beta_fast} must be >= beta_slow={self._beta_slow}")
        if self.rope_type == "llama3":
            if self.low_freq_factor is None or self.high_freq_factor is None:
                fail("needs `low_freq_factor` and `high_freq_factor` (Llama 3.1 uses 1.0 and 4.0)")
            if not self.high_freq_factor > self.low_freq_factor > 0:
                fail(f"need high_freq_factor > low_freq_factor > 0, got {self.high_freq_factor}, "
                     f"{self.low_freq_factor}")
        if self.rope_type == "longrope":
            n = d // 2
            for name in ("short_factor", "long_factor"):
                value = getattr(self, name)
                if value is None or len(value) != n:
                    got = "missing" if value is None else f"length {len(value)}"
                    fail(f"`{name}` must list {n} factors (one per rotary frequency, rotary dim {d}); got {got}")
                if min(value) <= 0:
                    fail(f"`{name}` must hold factors > 0 (they divide the frequencies); got {min(value)}")

    # ------------------------------------------------------------------ frequencies
    @property
    def _beta_fast(self) -> float:
        return self.beta_fast or 32.0  # HF uses `or`: an explicit 0 also means the default

    @property
    def _beta_slow(self) -> float:
        return self.beta_slow or 1.0

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.partial_rotary_factor)

    def inverse_frequencies(self, head_dim: int, positions=None):
        """(inv [K] float32, attention factor a). `positions` matter only for dynamic and longrope."""
        d = self.rotary_dim(head_dim)
        seq_len = None if positions is None else jnp.max(positions).astype(jnp.int32) + 1
        return _INVERSE_FREQUENCIES[self.rope_type](self, d, seq_len)

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
        rope_type, theta = self.rope_type, float(self.theta)
        if rope_type == "ntk":  # static NTK is the default rope with a larger base
            rope_type, theta = "default", self.ntk_theta(self.rotary_dim(cfg.dim_per_head))
        scaling = {"rope_type": rope_type}
        for key in _HF_KEYS[rope_type]:
            value = getattr(self, key)
            if key == "truncate" and value:
                continue  # HF's default; older readers do not know the key
            if key == "original_max_position_embeddings" and rope_type == "dynamic":
                continue  # HF's dynamic reads L0 from max_position_embeddings instead
            if value is not None:
                scaling[key] = list(value) if isinstance(value, tuple) else value
        out: dict[str, Any] = {"rope_theta": theta, "rope_parameters": {**scaling, "rope_theta": theta}}
        out["rope_scaling"] = None if rope_type == "default" else {**scaling, "type": rope_type}
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
            out["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
        if rope_type == "dynamic":
            out["max_position_embeddings"] = self.original_max_position_embeddings
        if rope_type == "longrope":
            # transformers 4.x reads L0 only from the top level; 5.x lets the top level win too.
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        return out

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any]) -> "Rope":
        """Read rope settings with transformers 5's precedence: `rope_scaling` over `rope_parameters`; values
        inside the dict over top-level ones, except a top-level `original_max_position_embeddings`, which wins."""
        params = dict(hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {})
        if params and all(isinstance(v, dict) or v is None for v in params.values()):
            raise InputError("per-layer-type rope_parameters (Gemma-style) are not supported; "
                             "use a model whose rope settings are shared by all layers")
        rope_type = params.get("rope_type") or params.get("type") or "default"
        rope_type = _ALIASES.get(rope_type, rope_type)
        if rope_type not in ROPE_TYPES or rope_type == "ntk":
            raise InputError(f"unknown rope_type {rope_type!r} in config.json; ctxjax reads "
                             f"{[t for t in ROPE_TYPES if t != 'ntk']}")
        max_pos = hf_config.get("max_position_embeddings") or hf_config.get("n_positions") or 2048
        if "rope_theta" not in params and "rope_theta" not in hf_config and params:
            warn_once("config.json's rope settings name no rope_theta: using 10000, transformers' default too; a "
                      "model trained with another base (e.g. 1e5, 5e5) computes something else: add rope_theta")
        fields: dict[str, Any] = {
            "rope_type": rope_type,
            "theta": float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
            "partial_rotary_factor": float(params.get("partial_rotary_factor",
                                                      hf_config.get("partial_rotary_factor", 1.0))),
        }
        for key in _HF_KEYS[rope_type]:
            if params.get(key) is not None:
                fields[key] = params[key]
        if rope_type == "dynamic":
            fields["original_max_position_embeddings"] = max_pos  # HF ignores any L0 for dynamic
        elif rope_type in ("yarn", "llama3", "longrope"):
            l0 = hf_config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
            fields["original_max_position_embeddings"] = int(l0 or max_pos)
            if fields.get("factor") is None and rope_type in ("yarn", "longrope"):
                fields["factor"] = max_pos / fields["original_max_position_embeddings"]
                if fields["factor"] == 1:
                    warn_once(f"config.json's {rope_type} scaling names no factor and no original context: "
                              "transformers then uses factor 1, which extends nothing; add the factor the model "
                              "was extended with")
        return cls(**fields)

    def original_context(self, context: int) -> int:
        """The context of the model before any scaling, for a model whose context is now `context` tokens: L0,
        or for PI and NTK (which record none) `context / factor`; `context` itself when unscaled."""
        if self.rope_type == "default":
            return context
        if self.original_max_position_embeddings:
            return self.original_max_position_embeddings
        return int(round(context / (self.factor or 1.0)))

    def stretched(self, rope_type: str, new_len: int, context: int) -> "Rope":
        """This rotation scaled with `rope_type` to `new_len` tokens in a model whose context is `context`: factor
        new_len / L0. An unscaled rotation gets L0 = context. A scaled one keeps its type, L0 and settings (LongRoPE's
        searched factors, Llama 3's bands, YaRN's betas) and only its factor grows; another type would discard them."""
        original = self.original_context(context)
        if self.rope_type != "default" and rope_type != self.rope_type:
            raise InputError(f"the model already uses {self.rope_type} RoPE scaling (factor {self.factor:g}, original "
                             f"context {original}); {rope_type} would replace it: extend it with {self.rope_type} "
                             f"(its factor becomes {new_len / original:g}) or give the positional settings explicitly")
        fields = dict(rope_type=rope_type, factor=new_len / original,
                      original_max_position_embeddings=None if rope_type in ("linear", "ntk") else original)
        if rope_type == "llama3" and self.rope_type == "default":
            fields.update(low_freq_factor=1.0, high_freq_factor=4.0)
        return self.replace(**fields)

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


# ---------------------------------------------------------------------- one function per rope_type
# Each takes (rope, rotary dim d, seq_len or None) and returns (inv [ceil(d/2)] float32, attention factor).


def _exponents(d: int):
    return jnp.arange(0, d, 2, dtype=jnp.float32) / d


def _default_inv(theta, d: int):
    return 1.0 / (jnp.asarray(theta, jnp.float32) ** _exponents(d))


def _default(rope: Rope, d: int, seq_len):
    return _default_inv(rope.theta, d), 1.0


def _linear(rope: Rope, d: int, seq_len):
    return _default_inv(rope.theta, d) / jnp.float32(rope.factor), 1.0


def _ntk(rope: Rope, d: int, seq_len):
    # The base is computed in float64 and rounded once, exactly as HF does for the exported default rope.
    return _default_inv(rope.ntk_theta(d), d), 1.0


def _dynamic(rope: Rope, d: int, seq_len):
    l0 = rope.original_max_position_embeddings
    if seq_len is None:
        return _default_inv(rope.theta, d), 1.0
    # HF keeps the unscaled table until the sequence outgrows L0, then rescales the base in float32.
    length = jnp.maximum(seq_len, l0).astype(jnp.float32)
    stretch = jnp.float32(rope.factor) * length / jnp.float32(l0) - jnp.float32(rope.factor - 1)
    base = jnp.float32(rope.theta) * stretch ** jnp.float32(d / (d - 2))
    scaled = 1.0 / (base ** _exponents(d))
    return jnp.where(seq_len > l0, scaled, _default_inv(rope.theta, d)), 1.0


def _yarn_attention_factor(rope: Rope) -> float:
    if rope.attention_factor is not None:
        return float(rope.attention_factor)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.mscale and rope.mscale_all_dim:
        return mscale(rope.factor, rope.mscale) / mscale(rope.factor, rope.mscale_all_dim)
    return mscale(rope.factor)


def yarn_correction_range(rope: Rope, d: int) -> tuple[float, float]:
    """Frequency indices between which YaRN ramps from extrapolation to interpolation (float64, as HF)."""
    l0, theta = rope.original_max_position_embeddings, float(rope.theta)

    def dim_for(rotations):
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for(rope._beta_fast), dim_for(rope._beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def _yarn(rope: Rope, d: int, seq_len):
    freqs = jnp.asarray(rope.theta, jnp.float32) ** _exponents(d)
    extrapolated = 1.0 / freqs
    interpolated = 1.0 / (jnp.float32(rope.factor) * freqs)
    low, high = yarn_correction_range(rope, d)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = jnp.clip((jnp.arange(d // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: keep the original frequency, 0: interpolate
    return interpolated * (1 - keep) + extrapolated * keep, _yarn_attention_factor(rope)


def _llama3(rope: Rope, d: int, seq_len):
    inv = _default_inv(rope.theta, d)
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    l0 = rope.original_max_position_embeddings
    wavelength = 2 * math.pi / inv
    scaled = jnp.where(wavelength > l0 / low, inv / factor, inv)
    smooth = (l0 / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelength >= l0 / high) & (wavelength <= l0 / low)
    return jnp.where(is_medium, smoothed, scaled), 1.0


def _longrope(rope: Rope, d: int, seq_len):
    l0 = rope.original_max_position_embeddings
    factor = rope.factor
    if rope.attention_factor is not None:
        a = float(rope.attention_factor)
    else:
        a = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(l0))
    powers = jnp.asarray(rope.theta, jnp.float32) ** _exponents(d)
    short = 1.0 / (jnp.asarray(rope.short_factor, jnp.float32) * powers)
    if seq_len is None:
        return short, a
    long = 1.0 / (jnp.asarray(rope.long_factor, jnp.float32) * powers)
    return jnp.where(seq_len > l0, long, short), a


_INVERSE_FREQUENCIES: dict[str, Callable] = {
    "default": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
    "longrope": _longrope,
}
