"""The one interface every positional scheme implements.

A scheme is a frozen dataclass (hashable, so it can live inside a ModelConfig that jit treats as static).
It may act at up to three points of the model, each a method with a do-nothing default:

- `embedding(cfg)`: a flax module mapping positions [B, L] to vectors [B, L, D] added to the token
  embeddings (learned tables, sinusoids);
- `rotate(q, k, positions)`: rotate queries [B, L, H, Dh] and keys [B, L, G, Dh] (RoPE and its scalings;
  a temperature such as YaRN's attention factor is folded into the rotation, as Hugging Face does);
- `alibi_slopes(n_heads)`: per-head slopes handed to the attention kernel, which builds the bias per block.

It also knows its Hugging Face `config.json` keys both ways (`to_hf` / `from_hf`). Adding a scheme means
one new file with a subclass and one line in `ctxjax/positions/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from ctxjax.errors import InputError

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

    def embedding(self, cfg: "ModelConfig"):
        return None

    def rotate(self, q, k, positions):
        return q, k

    def alibi_slopes(self, n_heads: int):
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
