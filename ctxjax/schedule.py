"""Staged context growth: a list of stages, each with its steps, sequence length, learning rate, warm-up
and positional-scheme overrides, turned into an Optax learning-rate schedule and per-step shapes.

Tokens per step stay constant across stages (batch = tokens_per_step / seq_len) unless a stage sets its own
batch size; the learning rate is one `optax.join_schedules` (warm-up then cosine decay within each stage);
`stage_at(step)` gives a step's stage, and with it its sequence length.

A stage may name gates (conditions on its stage-end evaluation, checked by ctxjax.train.gates) and
`extend_steps` / `max_extensions`: the steps it trains again at its length while a gate fails. Extensions done
so far (a checkpoint's `stage_extensions`) lengthen their stage and move every later stage by as many steps;
they run at the floor of the stage's decay (lr * min_lr_ratio), where its cosine stays once it is done.
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
                "data_source", "gate", "extend_steps", "max_extensions"}
GATE_FIELDS = {"metric", "length", "min", "max", "ratio_to"}
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
    ("extend_steps", _positive_int, "a positive integer (steps trained more when a gate fails)"),
    ("max_extensions", _positive_int, "a positive integer (how often a failed gate may extend the stage)"),
)


@dataclasses.dataclass(frozen=True)
class Gate:
    """A condition on the stage-end evaluation: the flat metric `eval/{metric}/{length}` (or its ratio to the
    same metric at `ratio_to`) must be >= min and/or <= max."""

    metric: str  # a flat evaluation metric without "eval/" and the length: "passkey/acc", "ppl/fixed_target"
    length: int
    min: float | None = None
    max: float | None = None
    ratio_to: int | None = None  # compare value(length) / value(ratio_to) instead of value(length)

    def keys(self) -> tuple[str, ...]:
        """The flat metrics the gate reads."""
        return tuple(f"eval/{self.metric}/{n}" for n in (self.length, self.ratio_to) if n is not None)

    def name(self) -> str:
        """e.g. 'eval/passkey/acc/64', 'eval/ppl/fixed_target/64 / eval/ppl/fixed_target/32'."""
        return " / ".join(self.keys())

    def bounds(self) -> str:
        """e.g. '>= 0.9', '>= 0.5 and <= 2'."""
        low = [f">= {self.min:g}"] if self.min is not None else []
        return " and ".join(low + ([f"<= {self.max:g}"] if self.max is not None else []))


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
    gates: tuple[Gate, ...] = ()
    extend_steps: int = 0  # steps added each time a gate fails (0: a failed gate stops the run)
    max_extensions: int = 0
    extensions: int = 0  # extensions done so far
    extra_steps: int = 0  # the steps they added (extend_steps may have changed between them)

    @property
    def end(self) -> int:
        return self.start + self.steps + self.extra_steps


def build_stages(raw_stages, tokens_per_step: int, min_lr_ratio: float = 0.1,
                 extensions: Mapping | None = None) -> list[Stage]:
    """Validate the config's stage list (one-line errors naming stage and field) and place it on the step
    axis. `extensions`: {stage index: {"extensions": n, "steps": steps added}} of gate extensions done (a
    checkpoint's `stage_extensions`; keys may be strings, as JSON stores them)."""
    done = {int(k): v for k, v in dict(extensions or {}).items()}
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
        gates = _gates(i, raw, stages[-1].seq_len if stages else None)
        extend = raw.get("extend_steps") or 0
        if raw.get("max_extensions") is not None and not extend:
            raise InputError(f"stage {i}: max_extensions={raw['max_extensions']} needs extend_steps (the "
                             "steps each extension trains)")
        if extend and not gates:
            raise InputError(f"stage {i}: extend_steps={extend} extends the stage when its gate fails, but "
                             "the stage has no gate; add gate=dict(metric=..., min=...) or drop extend_steps")
        floor = float(raw.get("min_lr_ratio", min_lr_ratio))
        if extend and not floor:
            raise InputError(f"stage {i}: extend_steps={extend} trains at the floor of the stage's decay, "
                             "lr * min_lr_ratio, which is 0: an extension would change nothing; set "
                             "min_lr_ratio > 0 (the stage's or the run's)")
        extended = done.get(i, {})
        stages.append(Stage(i, start, steps, seq_len, int(batch), float(raw["lr"]), warmup,
                            floor, tuple(sorted(dict(raw.get("position") or {}).items())), data_source, gates,
                            extend, raw.get("max_extensions") or (1 if extend else 0),
                            int(extended.get("extensions", 0)), int(extended.get("steps", 0))))
        start = stages[-1].end
    return stages


def _gates(i: int, raw: dict, previous_seq_len: int | None) -> tuple[Gate, ...]:
    """The stage's `gate` (a dict, or a list of dicts that must all pass) as Gates with lengths resolved:
    `length` is a number of tokens or "seq_len" (the default: the stage's own), `ratio_to` a number of tokens,
    "seq_len" or "previous_seq_len" (the stage before's)."""
    given = raw.get("gate")
    if given is None:
        return ()
    items = [given] if _is_mapping(given) else given
    if not isinstance(items, (list, tuple)) or not items or not all(_is_mapping(g) for g in items):
        raise InputError(f"stage {i}: gate={given!r} must be a dict such as dict(metric='passkey/acc', "
                         "min=0.9) or a list of them")
    named = {"seq_len": raw["seq_len"], "previous_seq_len": previous_seq_len}
    gates = []
    for gate in map(dict, items):
        where = f"stage {i}: gate {gate!r}"
        unknown = sorted(set(gate) - GATE_FIELDS)
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}; gate fields are {sorted(GATE_FIELDS)}")
        if not isinstance(gate.get("metric"), str) or not gate["metric"].strip("/"):
            raise InputError(f"{where} needs metric='TASK/NAME', a flat evaluation metric without 'eval/' "
                             "and the length, e.g. 'passkey/acc' or 'ppl/fixed_target'")
        lengths = {}
        for field in ("length", "ratio_to"):
            value = gate.get(field, "seq_len" if field == "length" else None)
            if value == "previous_seq_len" and previous_seq_len is None:
                raise InputError(f"{where}: {field}='previous_seq_len' but stage 0 has no stage before it")
            value = named.get(value, value) if isinstance(value, str) else value
            if value is not None and not _positive_int(value):
                raise InputError(f"{where}: {field}={gate.get(field)!r} must be a length in tokens, "
                                 "'seq_len' or 'previous_seq_len'")
            lengths[field] = value
        for field in ("min", "max"):
            if gate.get(field) is not None and not _number(gate[field]):
                raise InputError(f"{where}: {field}={gate[field]!r} must be a finite number")
        low, high = gate.get("min"), gate.get("max")
        if low is None and high is None:
            raise InputError(f"{where} sets no threshold: give min (the metric must be at least it) "
                             "and/or max (at most it)")
        if low is not None and high is not None and low > high:
            raise InputError(f"{where}: min={low} > max={high}, which no value passes")
        metric = gate["metric"].strip("/")
        metric = metric[len("eval/"):] if metric.startswith("eval/") else metric
        gates.append(Gate(metric, lengths["length"], None if low is None else float(low),
                          None if high is None else float(high), lengths["ratio_to"]))
    return tuple(gates)


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
