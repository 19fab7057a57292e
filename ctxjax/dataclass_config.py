"""Frozen config dataclasses (ExecutionConfig, AdaptationConfig, DataConfig, EvalConfig) built from whatever a
caller holds: an instance, a plain dict, an ml_collections.ConfigDict from a recipe, or nothing (the
defaults); and changed field by field, a typo being an error rather than a silently added field."""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.errors import InputError


def dataclass_from(cls, config_like: Any, overrides: dict[str, Any], *, what: str, error=InputError):
    """`cls(**fields)` from `config_like` with `overrides` applied; unknown fields are one error naming
    the valid ones (a typo must never be dropped silently)."""
    if config_like is None:
        values = {}
    elif isinstance(config_like, cls):
        values = dataclasses.asdict(config_like)
    elif hasattr(config_like, "to_dict"):  # ml_collections.ConfigDict
        values = dict(config_like.to_dict())
    elif isinstance(config_like, dict):
        values = dict(config_like)
    else:
        raise error(f"cannot read a {what} config from {type(config_like).__name__}; pass a {cls.__name__}, "
                    "a dict or a ConfigDict")
    values.update(overrides)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"unknown {what} config field(s) {unknown}; valid fields: {', '.join(fields)}")
    return cls(**values)


def replace_fields(config, changes: dict[str, Any]):
    """dataclasses.replace, with unknown field names one error naming the valid ones."""
    valid = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise InputError(f"{type(config).__name__} has no field(s) {unknown}; valid fields: {sorted(valid)}")
    return dataclasses.replace(config, **changes)
