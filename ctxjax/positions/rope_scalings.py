"""RoPE scaling types, one registered class each (levanter's rotary registry). `Rope` (rope.py) holds the flat
fields a checkpoint stores and hands everything that depends on its `rope_type` to the class registered under
that name: which fields it needs, its inverse frequencies and attention factor (float32, in Hugging Face's
order of operations, see shared/reference/rope_spec.md), its config.json keys both ways, how a context
extension sets its fields, and the CLI flags of its own settings.

To add a type: subclass `RopeScaling`, set `name` and what differs from the defaults below, decorate it
with `@register`. `Rope(rope_type=name)`, `ROPE_TYPES`, config.json import/export, `Rope.stretched`
(training schedules) and the `--rope-type` flags of `ctxjax extend-hf / import-hf / eval` then know it.
A type that needs a parameter no `Rope` field holds also adds that field to `Rope` (its fields are the
checkpoint format).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import jax.numpy as jnp

from ctxjax.errors import InputError, warn_once

if TYPE_CHECKING:
    from ctxjax.positions.rope import Rope

L0 = "original_max_position_embeddings"


@dataclasses.dataclass(frozen=True)
class Setting:
    """A `Rope` field a scaling type owns besides factor and L0, offered as the CLI flag
    --<field-with-dashes>."""

    field: str
    type: type
    help: str
    # What an extension to this type fills in when neither the user nor the model gives a value; None: leave
    # it unset (the type then derives its own default, as YaRN's betas do).
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


class RopeScaling:
    """One `rope_type`. Registered instances are stateless: every method takes the `Rope` it works for."""

    name: ClassVar[str] = ""
    # Rope fields that are keys of HF's rope dict for this type, read and written under the same names.
    hf_keys: ClassVar[tuple[str, ...]] = ("factor",)
    # Other labels hub configs use for this type (Phi-3's "su" for longrope).
    hf_aliases: ClassVar[tuple[str, ...]] = ()
    # False for a type transformers does not know: config.json never names it (it is written as another type).
    in_hf: ClassVar[bool] = True
    # False only for the unscaled rotation: nothing to grow, no `rope_scaling` written, any type replaces it.
    scaled: ClassVar[bool] = True
    needs_factor: ClassVar[bool] = True
    needs_original: ClassVar[bool] = False  # original_max_position_embeddings (L0)
    # Whether an extension to this type records L0 (PI and NTK depend on the factor only). A training stage
    # stretched to "default" records it too: resumed checkpoints compare the stage's positions field by field.
    records_original: ClassVar[bool] = True
    # factor 1 computes exactly the unscaled rotation: worth a warning, since it extends nothing (not so for
    # dynamic NTK, whose base still grows past L0, nor LongRoPE, whose lists still apply).
    identity_at_factor_1: ClassVar[bool] = False
    min_rotary_dim: ClassVar[int] = 2
    settings: ClassVar[tuple[Setting, ...]] = ()

    # ------------------------------------------------------------------ validation
    def validate(self, rope: "Rope", d: int, fail: Callable[[str], None]) -> None:
        """Checks of this type, after `Rope.validate` checked what all types share; `d`: the rotary dim."""
        if self.needs_factor and rope.factor is None:
            fail("needs `factor` (the context extension ratio, e.g. 4.0)")
        if rope.factor == 1 and self.identity_at_factor_1:
            warn_once(f"rope {self.name} with factor 1 computes exactly the unscaled rotation: it extends "
                      "nothing (factor is new_context / original_context, e.g. 4.0)")
        if self.needs_original and not rope.original_max_position_embeddings:
            fail("needs `original_max_position_embeddings` (the context length the model was trained at)")

    # ------------------------------------------------------------------ frequencies
    def inverse_frequencies(self, rope: "Rope", d: int, seq_len):
        """inv [ceil(d/2)] float32 for rotary dim `d`; `seq_len`: max(positions) + 1 of the call, or None."""
        raise NotImplementedError

    def attention_factor(self, rope: "Rope") -> float:
        """The factor HF multiplies cos and sin by (a temperature on the attention logits, squared)."""
        return 1.0

    # ------------------------------------------------------------------ Hugging Face config.json
    def hf_equivalent(self, rope: "Rope", d: int) -> "Rope":
        """The rope as transformers knows it (a type outside HF is written as one it computes identically)."""
        return rope

    def hf_values(self, rope: "Rope") -> dict[str, Any]:
        """This type's keys of HF's rope dict (besides rope_type, rope_theta, partial_rotary_factor)."""
        values = {key: getattr(rope, key) for key in self.hf_keys}
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items() if v is not None}

    def hf_top_level(self, rope: "Rope") -> dict[str, Any]:
        """config.json keys outside the rope dict that HF reads for this type."""
        return {}

    def from_hf(self, params: dict[str, Any], hf_config: dict[str, Any], max_pos: int) -> dict[str, Any]:
        """Rope fields from HF's rope dict `params`, the whole `hf_config` and its max_position_embeddings."""
        return {key: params[key] for key in self.hf_keys if params.get(key) is not None}

    def rotation_switch(self, rope: "Rope") -> int | None:
        """The sequence length past which every key is rotated anew (LongRoPE's long factors), None if
        never."""
        return None

    # ------------------------------------------------------------------ context extension
    def extension(self, rope: "Rope", factor: float | None, original: int,
                  given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields that make `rope` (unscaled, or already of this type) this type at `factor` over
        `original` tokens. Settings come from `given` (CLI flags), else the model's own, else the setting's
        default."""
        fields = {"rope_type": self.name, "factor": factor,
                  L0: original if self.records_original else None}
        for setting in self.settings:
            value = (given or {}).get(setting.field)
            if value is None:
                value = getattr(rope, setting.field)
            fields[setting.field] = setting.default if value is None else value
        return fields


# ---------------------------------------------------------------------- registry

_REGISTRY: dict[str, RopeScaling] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[RopeScaling]) -> type[RopeScaling]:
    """Class decorator: make `cls` the scaling of `Rope(rope_type=cls.name)`."""
    if not cls.name or cls.name in _REGISTRY or cls.name in _ALIASES:
        raise ValueError(f"rope scaling {cls.__name__} needs a name not taken yet; got {cls.name!r}")
    _REGISTRY[cls.name] = cls()
    _ALIASES.update((alias, cls.name) for alias in cls.hf_aliases)
    return cls


def unregister(name: str) -> None:
    scaling = _REGISTRY.pop(name)
    for alias in scaling.hf_aliases:
        _ALIASES.pop(alias, None)


def canonical(rope_type: str) -> str:
    """The registered name of a rope_type label, legacy hub labels included."""
    return _ALIASES.get(rope_type, rope_type)


def get(rope_type: str) -> RopeScaling:
    if rope_type not in _REGISTRY:
        raise InputError(f"unknown rope_type {rope_type!r}; choose one of {ROPE_TYPES}")
    return _REGISTRY[rope_type]


def registered() -> tuple[RopeScaling, ...]:
    return tuple(_REGISTRY.values())


class _RegisteredNames(Sequence):
    """The registered names, read at each use, so that a type registered after import (a plugin, a test) is
    accepted wherever ROPE_TYPES is checked; prints as a tuple."""

    def __getitem__(self, index):
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


ROPE_TYPES: Sequence[str] = _RegisteredNames()


# ---------------------------------------------------------------------- shared pieces


def _exponents(d: int):
    return jnp.arange(0, d, 2, dtype=jnp.float32) / d


def default_inverse_frequencies(theta, d: int):
    """theta^(-2k/d) for k < ceil(d/2), a float32 pow of the float32 base as HF computes it."""
    return 1.0 / (jnp.asarray(theta, jnp.float32) ** _exponents(d))


def _original_from_hf(params: dict[str, Any], hf_config: dict[str, Any], max_pos: int) -> int:
    """transformers 5: a top-level original_max_position_embeddings beats the rope dict's; M when neither."""
    return int(hf_config.get(L0) or params.get(L0) or max_pos)


# ---------------------------------------------------------------------- the types


@register
class Default(RopeScaling):
    """inv_k = theta^(-2k/d)."""

    name = "default"
    hf_keys = ()
    scaled = False
    needs_factor = False

    def inverse_frequencies(self, rope, d, seq_len):
        return default_inverse_frequencies(rope.theta, d)


@register
class Linear(RopeScaling):
    """Position Interpolation: inv_k / factor (HF divides the frequencies, not the positions)."""

    name = "linear"
    records_original = False
    identity_at_factor_1 = True

    def inverse_frequencies(self, rope, d, seq_len):
        return default_inverse_frequencies(rope.theta, d) / jnp.float32(rope.factor)


@register
class NTK(RopeScaling):
    """Static NTK-aware base change theta' = theta * factor^(d/(d-2)); transformers has no such type, so it
    is exported as the default rope with theta'."""

    name = "ntk"
    hf_keys = ()
    in_hf = False
    records_original = False
    identity_at_factor_1 = True
    min_rotary_dim = 3  # d / (d - 2)

    def inverse_frequencies(self, rope, d, seq_len):
        # The base is computed in float64 and rounded once, exactly as HF does for the exported default rope.
        return default_inverse_frequencies(rope.ntk_theta(d), d)

    def hf_equivalent(self, rope, d):
        return rope.replace(rope_type=Default.name, theta=rope.ntk_theta(d))


@register
class Dynamic(RopeScaling):
    """Dynamic NTK: theta' = theta * (factor*L/L0 - (factor-1))^(d/(d-2)), L = max(max(pos)+1, L0). L0 is HF's
    max_position_embeddings (HF ignores any original_max_position_embeddings for this type)."""

    name = "dynamic"
    needs_original = True
    min_rotary_dim = 3  # d / (d - 2)

    def inverse_frequencies(self, rope, d, seq_len):
        l0 = rope.original_max_position_embeddings
        if seq_len is None:
            return default_inverse_frequencies(rope.theta, d)
        # HF keeps the unscaled table until the sequence outgrows L0, then rescales the base in float32.
        length = jnp.maximum(seq_len, l0).astype(jnp.float32)
        stretch = jnp.float32(rope.factor) * length / jnp.float32(l0) - jnp.float32(rope.factor - 1)
        base = jnp.float32(rope.theta) * stretch ** jnp.float32(d / (d - 2))
        scaled = 1.0 / (base ** _exponents(d))
        return jnp.where(seq_len > l0, scaled, default_inverse_frequencies(rope.theta, d))

    def hf_top_level(self, rope):
        return {"max_position_embeddings": rope.original_max_position_embeddings}

    def from_hf(self, params, hf_config, max_pos):
        return {**super().from_hf(params, hf_config, max_pos), L0: max_pos}


class _TrainedContext(RopeScaling):
    """A type whose HF config names the context the model was trained at (L0), defaulting to M. yarn and
    longrope also derive a missing factor as M / L0, as transformers 5 does."""

    needs_original = True
    factor_from_context: ClassVar[bool] = False

    def from_hf(self, params, hf_config, max_pos):
        fields = super().from_hf(params, hf_config, max_pos)
        fields[L0] = _original_from_hf(params, hf_config, max_pos)
        if self.factor_from_context and fields.get("factor") is None:
            fields["factor"] = max_pos / fields[L0]
            if fields["factor"] == 1:
                warn_once(f"config.json's {self.name} scaling names no factor and no original context: "
                          "transformers then uses factor 1, which extends nothing; add the factor the model "
                          "was extended with")
        return fields


def _beta_fast(rope: "Rope") -> float:
    return rope.beta_fast or 32.0  # HF uses `or`: an explicit 0 also means the default


def _beta_slow(rope: "Rope") -> float:
    return rope.beta_slow or 1.0


def yarn_correction_range(rope: "Rope", d: int) -> tuple[float, float]:
    """Frequency indices between which YaRN ramps from extrapolation to interpolation (float64, as HF)."""
    l0, theta = rope.original_max_position_embeddings, float(rope.theta)

    def dim_for(rotations):
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_for(_beta_fast(rope)), dim_for(_beta_slow(rope))
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


@register
class YaRN(_TrainedContext):
    """NTK-by-parts: a ramp between inv_k and inv_k/factor over the correction range, plus an attention factor
    (0.1 ln(factor) + 1 unless given)."""

    name = "yarn"
    hf_keys = ("factor", L0, "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
               "truncate")
    identity_at_factor_1 = True
    factor_from_context = True
    settings = (Setting("beta_fast", float, "high-frequency boundary in rotations (default 32)"),
                Setting("beta_slow", float, "low-frequency boundary in rotations (default 1)"))

    def validate(self, rope, d, fail):
        super().validate(rope, d, fail)
        if _beta_fast(rope) < _beta_slow(rope):
            fail(f"beta_fast={_beta_fast(rope)} must be >= beta_slow={_beta_slow(rope)}")

    def inverse_frequencies(self, rope, d, seq_len):
        freqs = jnp.asarray(rope.theta, jnp.float32) ** _exponents(d)
        extrapolated = 1.0 / freqs
        interpolated = 1.0 / (jnp.float32(rope.factor) * freqs)
        low, high = yarn_correction_range(rope, d)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = jnp.clip((jnp.arange(d // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
        keep = 1 - ramp  # 1: keep the original frequency, 0: interpolate
        return interpolated * (1 - keep) + extrapolated * keep

    def attention_factor(self, rope):
        if rope.attention_factor is not None:
            return float(rope.attention_factor)

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if rope.mscale and rope.mscale_all_dim:
            return mscale(rope.factor, rope.mscale) / mscale(rope.factor, rope.mscale_all_dim)
        return mscale(rope.factor)

    def hf_values(self, rope):
        values = super().hf_values(rope)
        if rope.truncate:
            del values["truncate"]  # HF's default; older readers do not know the key
        return values


@register
class Llama3(_TrainedContext):
    """Llama 3.1 wavelength bands: long wavelengths divided by factor, short ones kept, a blend between."""

    name = "llama3"
    hf_keys = ("factor", "low_freq_factor", "high_freq_factor", L0)
    identity_at_factor_1 = True
    # Llama 3.1's bands, for a model extended to llama3 that has none yet.
    settings = (Setting("low_freq_factor", float, "rotations over the original context below which "
                        "frequencies are divided by factor", default=1.0),
                Setting("high_freq_factor", float, "rotations over the original context above which "
                        "frequencies are kept", default=4.0))

    def validate(self, rope, d, fail):
        super().validate(rope, d, fail)
        if rope.low_freq_factor is None or rope.high_freq_factor is None:
            fail("needs `low_freq_factor` and `high_freq_factor` (Llama 3.1 uses 1.0 and 4.0)")
        if not rope.high_freq_factor > rope.low_freq_factor > 0:
            fail(f"need high_freq_factor > low_freq_factor > 0, got {rope.high_freq_factor}, "
                 f"{rope.low_freq_factor}")

    def inverse_frequencies(self, rope, d, seq_len):
        inv = default_inverse_frequencies(rope.theta, d)
        factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
        l0 = rope.original_max_position_embeddings
        wavelength = 2 * math.pi / inv
        scaled = jnp.where(wavelength > l0 / low, inv / factor, inv)
        smooth = (l0 / wavelength - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelength >= l0 / high) & (wavelength <= l0 / low)
        return jnp.where(is_medium, smoothed, scaled)


@register
class LongRoPE(_TrainedContext):
    """Per-frequency factors: `long_factor` when max(pos)+1 > L0, else `short_factor` (Phi-3)."""

    name = "longrope"
    hf_keys = ("factor", L0, "attention_factor", "short_factor", "long_factor")
    hf_aliases = ("su",)
    factor_from_context = True

    def validate(self, rope, d, fail):
        super().validate(rope, d, fail)
        n = d // 2
        for name in ("short_factor", "long_factor"):
            value = getattr(rope, name)
            if value is None or len(value) != n:
                got = "missing" if value is None else f"length {len(value)}"
                fail(f"`{name}` must list {n} factors (one per rotary frequency, rotary dim {d}); got {got}")
            if min(value) <= 0:
                fail(f"`{name}` must hold factors > 0 (they divide the frequencies); got {min(value)}")

    def inverse_frequencies(self, rope, d, seq_len):
        powers = jnp.asarray(rope.theta, jnp.float32) ** _exponents(d)
        short = 1.0 / (jnp.asarray(rope.short_factor, jnp.float32) * powers)
        if seq_len is None:
            return short
        long = 1.0 / (jnp.asarray(rope.long_factor, jnp.float32) * powers)
        return jnp.where(seq_len > rope.original_max_position_embeddings, long, short)

    def attention_factor(self, rope):
        if rope.attention_factor is not None:
            return float(rope.attention_factor)
        factor, l0 = rope.factor, rope.original_max_position_embeddings
        return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(l0))

    def rotation_switch(self, rope):
        return rope.original_max_position_embeddings

    def hf_top_level(self, rope):
        # transformers 4.x reads L0 only from the top level; 5.x lets the top level win too.
        return {L0: rope.original_max_position_embeddings}
