"""Staged context growth: a list of stages, each with its steps, sequence length, learning rate, warm-up
and positional-scheme overrides, turned into an Optax learning-rate schedule and per-step shapes.

Tokens per step stay constant across stages (batch = tokens_per_step / seq_len) unless a stage sets its own
batch size; the learning rate is one `optax.join_schedules` (warm-up then cosine decay within each stage);
`stage_at(step)` gives a step's stage, and with it its sequence length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import optax

from ctxjax.errors import InputError
from ctxjax.config import ModelConfig

STAGE_FIELDS = {"steps", "seq_len", "lr", "warmup_steps", "position", "batch_size", "min_lr_ratio",
                "data_source"}
REQUIRED = ("steps", "seq_len", "lr")


def _is_mapping(value) -> bool:
    return isinstance(value, Mapping) or hasattr(value, "keys")  # a dict, or an ml_collections.ConfigDict


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A negative lr would climb the loss (gradient ascent), a min_lr_ratio above 1 sets a floor above the peak.
_STAGE_RANGES = (
    ("steps", _positive_int, "a positive integer"),
    ("seq_len", _positive_int, "a positive integer"),
    ("batch_size", _positive_int, "a positive integer"),
    ("lr", lambda v: _number(v) and v > 0, "a number > 0 (the stage's peak learning rate)"),
    ("warmup_steps", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    ("min_lr_ratio", lambda v: _number(v) and 0 <= v <= 1,
     "between 0 and 1 (the decay's floor, a fraction of lr)"),
)


@dataclasses.dataclass(frozen=True)
class Stage:
    index: int
    start: int  # first global step of the stage
    steps: int
    seq_len: int
    batch_size: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    position: tuple[tuple[str, Any], ...]  # overrides of the base positional scheme's fields
    data_source: str = ""  # the stage's own data source spec; "" reads data.source

    @property
    def end(self) -> int:
        return self.start + self.steps


def build_stages(raw_stages, tokens_per_step: int, min_lr_ratio: float = 0.1) -> list[Stage]:
    """Validate the config's stage list (one-line errors naming stage and field) and place it on the step
    axis."""
    if not raw_stages:
        raise InputError("config.stages is empty; give at least one stage with steps, seq_len and lr")
    stages, start = [], 0
    for i, raw in enumerate(raw_stages):
        if not _is_mapping(raw):
            raise InputError(f"stage {i} is {raw!r}; a stage is a dict such as dict(steps=100, seq_len=512, "
                             f"lr=1e-3) (--config.stages.{i}.FIELD=VALUE changes one field)")
        raw = dict(raw)
        unknown = sorted(set(raw) - STAGE_FIELDS)
        if unknown:
            raise InputError(f"stage {i}: unknown field(s) {unknown}; stage fields are "
                             f"{sorted(STAGE_FIELDS)}")
        missing = [f for f in REQUIRED if f not in raw or raw[f] is None]
        if missing:
            raise InputError(f"stage {i}: missing field(s) {missing}; every stage needs {list(REQUIRED)}")
        for name, ok, what in _STAGE_RANGES:
            if raw.get(name) is not None and not ok(raw[name]):
                raise InputError(f"stage {i}: {name}={raw[name]!r} must be {what}")
        seq_len, steps = raw["seq_len"], raw["steps"]
        batch = raw.get("batch_size")
        if batch is None:
            if tokens_per_step % seq_len:
                raise InputError(f"stage {i}: tokens_per_step={tokens_per_step} is not divisible by seq_len="
                                 f"{seq_len}; choose tokens_per_step as a multiple of every stage's seq_len")
            batch = tokens_per_step // seq_len
        warmup = raw.get("warmup_steps") or 0
        if not 0 <= warmup <= steps:
            raise InputError(f"stage {i}: warmup_steps={warmup} must be between 0 and steps={steps}")
        if raw.get("position") is not None and not _is_mapping(raw["position"]):
            raise InputError(f"stage {i}: position={raw['position']!r} must be a dict of positional fields, "
                             "e.g. dict(rope_type='yarn', factor=4.0, original_max_position_embeddings=128)")
        data_source = raw.get("data_source") or ""
        if not isinstance(data_source, str):
            raise InputError(f"stage {i}: data_source={data_source!r} must be a data source spec (a string "
                             "such as 'mix:1*stdlib;1*retrieval:passkey'), or '' for data.source")
        stages.append(Stage(i, start, steps, seq_len, int(batch), float(raw["lr"]), warmup,
                            float(raw.get("min_lr_ratio", min_lr_ratio)),
                            tuple(sorted(dict(raw.get("position") or {}).items())), data_source))
        start += steps
    return stages


def total_steps(stages: list[Stage]) -> int:
    return stages[-1].end


def stage_at(stages: list[Stage], step: int) -> Stage:
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]


def learning_rate_schedule(stages: list[Stage]) -> optax.Schedule:
    pieces = []
    for s in stages:
        decay = optax.cosine_decay_schedule(s.lr, max(s.steps - s.warmup_steps, 1), alpha=s.min_lr_ratio)
        if s.warmup_steps:
            decay = optax.join_schedules([optax.linear_schedule(0.0, s.lr, s.warmup_steps), decay],
                                         [s.warmup_steps])
        pieces.append(decay)
    return optax.join_schedules(pieces, [s.start for s in stages[1:]])


def model_config_for(base: ModelConfig, stage: Stage, rope_scaling: str = "",
                     pose_target_len: int = 0) -> ModelConfig:
    """The model of one stage: the base positional scheme with the stage's overrides, and a context at least
    the stage's sequence length, or PoSE's target when that is longer (its positions reach it; for learned
    positions, the size the table is grown to).

    `rope_scaling` (a rope_type) fills in overrides for stages that give none and run past the base model's
    context: factor = seq_len / context, original_max_position_embeddings = context. One field then
    switches a whole recipe between PI, NTK, YaRN, Llama-3 and dynamic scaling. A base model that is already
    scaled (Llama 3.1, Phi-3's LongRoPE) keeps its scaling and original context, its factor grows; a
    `rope_scaling` of another type is refused (Rope.stretched)."""
    position, context = base.position, max(stage.seq_len, pose_target_len)
    if stage.position:
        position = position.replace(**dict(stage.position))
    elif rope_scaling and context > base.max_seq_len:
        position = position.stretched(rope_scaling, context, base.max_seq_len)
    return base.replace(position=position, max_seq_len=max(base.max_seq_len, context))
