"""The one interface every positional scheme implements.

A scheme is a frozen dataclass (hashable, so it can live inside a ModelConfig that jit treats as static).
It may act at up to three points of the model, each a method with a do-nothing default:

- `embedding(cfg, dtype)`: a flax module mapping positions [B, L] to vectors [B, L, D] (in the compute
  `dtype`) added to the token embeddings (learned tables, sinusoids);
- `rotate(q, k, positions)`: rotate queries [B, L, H, Dh] and keys [B, L, G, Dh] (RoPE and its scalings;
  a temperature such as YaRN's attention factor is folded into the rotation, as Hugging Face does);
- `alibi_slopes(n_heads)`: per-head slopes handed to the attention kernel, which builds the bias per block.

It also knows its Hugging Face `config.json` keys both ways (`to_hf` / `from_hf`). Adding a scheme means
one new file with a subclass and one line in `ctxjax/positions/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from ctxjax.errors import InputError, warn_once

if TYPE_CHECKING:
    from ctxjax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PositionScheme:
    name: ClassVar[str] = ""
    # Hugging Face model families this scheme can be exported to (see ctxjax.hf).
    hf_families: ClassVar[tuple[str, ...]] = ()

    def __str__(self) -> str:
        """Only the fields that differ from their defaults, e.g. Rope(rope_type='yarn', factor=4.0)."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(changed)})"

    def validate(self, cfg: "ModelConfig") -> None:
        """Raise ValueError naming the bad field and the fix."""

    def embedding(self, cfg: "ModelConfig", dtype: str):
        return None

    def rotate(self, q, k, positions):
        return q, k

    def alibi_slopes(self, n_heads: int):
        return None

    def original_context(self, context: int) -> int:
        """The context the model was trained at before any extension, for a model whose context is now
        `context` (a scaled rotation remembers it; other schemes have no record: `context` itself)."""
        return context

    def max_positions(self, cfg: "ModelConfig") -> int | None:
        """The most positions the scheme can represent (a learned table's rows); None when any position works.
        Lengths beyond it are refused by the model, skipped by evaluation, and grown with `extend`."""
        return None

    def limit_description(self, cfg: "ModelConfig") -> str:
        """What `max_positions` is, for messages: "lengths beyond {this}"."""
        return f"the {self.max_positions(cfg)} positions of {self.name} positions"

    def extend(self, params, new_len: int, method: str = "interpolate"):
        """`params` with the scheme's own parameters grown for `new_len` positions (a learned table's new
        rows, initialised by `method`: interpolate or copy); unchanged for schemes without parameters or that
        already hold `new_len`."""
        return params

    def fitted_to_params(self, cfg: "ModelConfig", params) -> "ModelConfig":
        """`cfg` with the context its scheme's parameters hold (a grown learned table's rows)."""
        return cfg

    def stretched(self, rope_type: str, new_len: int, context: int) -> "PositionScheme":
        """This scheme scaled with `rope_type` to `new_len` tokens (a training stage's `rope_scaling`): only
        rotations scale; any other scheme stays as it is."""
        warn_once(f"rope_scaling={rope_type!r} leaves {self.name} positions as they are: it scales rotations "
                  "only")
        return self

    def check_local(self, local: "PositionScheme") -> str:
        """Why `local` cannot be the scheme of a model's local layers beside this one ('' if it can): only the
        rotation may differ between local and global layers."""
        return f"local and global layers may differ only in their rotation, not with {self.name} positions"

    def rotation_switch(self) -> int | None:
        """The sequence length past which the scheme rotates every key anew (LongRoPE's long factors past L0):
        KV-cache decoding may then read the sequence again (ctxjax.generate). None: never."""
        return None

    def to_hf(self, cfg: "ModelConfig") -> dict[str, Any]:
        """Keys to merge into the exported config.json."""
        raise InputError(
            f"positional scheme {self.name!r} has no Hugging Face equivalent in the supported families; "
            "export a model that uses 'rope' (Llama family) or 'learned' (GPT-2 family)"
        )

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any]) -> "PositionScheme":
        return cls()

    def replace(self, **changes: Any) -> "PositionScheme":
        """A copy with some fields changed; unknown field names are an error naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise InputError(f"{self.name} has no field(s) {unknown}; valid fields: {sorted(valid)}")
        return dataclasses.replace(self, **changes)
