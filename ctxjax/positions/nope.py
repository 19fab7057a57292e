"""NoPE: no positional signal at all; the causal mask alone tells a token which tokens came before it."""

from __future__ import annotations

import dataclasses

from ctxjax.positions.base import PositionScheme


@dataclasses.dataclass(frozen=True)
class NoPE(PositionScheme):
    name = "none"
