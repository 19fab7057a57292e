"""Positional schemes, selected by name. To add one: write a PositionScheme subclass in its own file and add
one line to SCHEMES below, or decorate it with `register` (see base.py for the interface)."""

from __future__ import annotations

from typing import Any

from ctxjax.errors import InputError
from ctxjax.positions.alibi import Alibi, alibi_slopes
from ctxjax.positions.base import PositionScheme
from ctxjax.positions.learned import EXTEND_METHODS, Learned, extend
from ctxjax.positions.nope import NoPE
from ctxjax.positions.rope import ROPE_TYPES, Rope
from ctxjax.positions.sinusoidal import Sinusoidal

SCHEMES: dict[str, type[PositionScheme]] = {
    "rope": Rope,
    "alibi": Alibi,
    "learned": Learned,
    "sinusoidal": Sinusoidal,
    "none": NoPE,
}


def register(scheme: type[PositionScheme]) -> type[PositionScheme]:
    """Class decorator: make a scheme known by its `name`, as configs, checkpoints and `make` name it."""
    if not scheme.name or scheme.name in SCHEMES:
        raise InputError(f"positional scheme name {scheme.name!r} is empty or taken; choose another `name`")
    SCHEMES[scheme.name] = scheme
    return scheme


def unregister(name: str) -> None:
    SCHEMES.pop(name, None)


def make(name: str, **params: Any) -> PositionScheme:
    """Build a scheme by name, e.g. make('rope', rope_type='yarn', factor=4.0,
    original_max_position_embeddings=2048)."""
    if name not in SCHEMES:
        raise InputError(f"unknown positional scheme {name!r}; choose one of {sorted(SCHEMES)}")
    return SCHEMES[name]().replace(**params)


__all__ = ["PositionScheme", "SCHEMES", "make", "register", "unregister", "Rope", "ROPE_TYPES", "Alibi",
           "alibi_slopes", "Learned", "EXTEND_METHODS", "extend", "Sinusoidal", "NoPE"]
