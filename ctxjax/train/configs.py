"""Loading a recipe (`configs/x.py[:variant]`), applying `--config.FIELD=VALUE` overrides, and checking
the result before anything is compiled."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
import traceback

import ml_collections

from ctxjax.errors import InputError
from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.dataclass_config import dataclass_from
from ctxjax.execution import ExecutionConfig
from ctxjax.positions import EXTEND_METHODS, ROPE_TYPES
from ctxjax.data.config import as_data_config
from ctxjax.data.sources import eval_source_spec
from ctxjax.evaluate.config import as_eval_config, check_tasks_fit_model
from ctxjax.schedule import build_stages
from ctxjax.sharding import mesh_shape
from ctxjax.train import gates


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py` or `path/to/config.py:variant`; the file defines get_config(variant=None)."""
    path, _, variant = spec.partition(":")
    if os.path.isdir(path):
        raise InputError(f"config {path} is a directory; pass a recipe file, e.g. --config "
                         "configs/demo.py[:tiny]")
    if not os.path.isfile(path):
        raise InputError(f"config file {path} does not exist; pass e.g. --config configs/demo.py[:tiny]")
    module_spec = importlib.util.spec_from_file_location(f"ctxjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    where = f"{path}:{variant}" if variant else path
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise InputError(f"{path} has no get_config(variant) function")
        config = module.get_config(variant or None)
    except InputError:
        raise
    except Exception as error:  # the recipe is the user's code: say where it failed, in one line
        line = _line_in(error, path)
        raise InputError(f"config {where} failed{line}: {type(error).__name__}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise InputError(f"get_config in {path} returned a {type(config).__name__}; return the ConfigDict of "
                         "ctxjax.train.default_config() with your changes (see configs/demo.py)")
    return config


def _line_in(error: BaseException, path: str) -> str:
    """' at line N' of the innermost frame of `error`'s traceback that is in `path` ('' if none)."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f" at line {error.lineno}"
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    return f" at line {lines[-1]}" if lines else ""


# Fields that were `model.*` before the model's architecture, how it runs and how training adapts it became
# three configs: an override under the old name lands where the field lives now (the README says so).
MOVED = {**{f"model.{f.name}": f"execution.{f.name}" for f in dataclasses.fields(ExecutionConfig)},
         **{f"model.{f.name}": f"adaptation.{f.name}" for f in dataclasses.fields(AdaptationConfig)}}


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Each override is `FIELD.PATH=VALUE` (the `--config.` prefix already stripped); VALUE is a Python
    literal or else a string, and `a,b` for a list field means ['a', 'b']. Unknown fields are an error, never
    silently added."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"override {item!r} needs the form --config.FIELD=VALUE")
        key = MOVED.get(key, key)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        parent, parts = config, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            parent = _child(parent, part, ".".join(parts[:depth + 1]), key)
        name = parts[-1]
        if isinstance(parent, list):
            _check_index(parent, name, key)
            parent[int(name)] = value
            continue
        if type(parent) is dict and name not in parent:
            # A stage (a plain dict in a list) may gain an optional field; build_stages names unknown ones.
            parent[name] = value
            continue
        if not isinstance(parent, (ml_collections.ConfigDict, dict)) or name not in parent:
            raise InputError(f"unknown config field {key!r}; valid fields are in the config file and "
                             "ctxjax/train/defaults.py (model.*: ctxjax/config.py)")
        current = parent[name]
        if (isinstance(current, (list, tuple)) and isinstance(value, str)
                and all(isinstance(x, str) for x in current)):
            # a,b,c for a list of names
            value = type(current)(part.strip() for part in value.split(",") if part.strip())
        try:
            parent[name] = value
        except TypeError:
            now = repr(current) if len(repr(current)) <= 80 else repr(current)[:77] + "..."
            why = (" (a value is read as a Python literal: dict(...) and other calls are not; "
                   "write {'key': value})"
                   if isinstance(value, str) and "(" in value else "")
            raise InputError(f"--config.{key}={raw} does not fit the field's type "
                             f"({type(current).__name__}){why}; write a Python literal like its value now, "
                             f"{now}") from None
    return config


def _child(parent, part: str, path: str, key: str):
    """parent[part] for a dict or a list (`stages.0.seq_len`), or one line naming what is missing."""
    if isinstance(parent, list):
        _check_index(parent, part, key)
        return parent[int(part)]
    if not isinstance(parent, (ml_collections.ConfigDict, dict)) or part not in parent:
        raise InputError(f"unknown config field {key!r} ({path} does not exist); valid fields are in the "
                         "config file and ctxjax/train/defaults.py (model.*: ctxjax/config.py)")
    return parent[part]


def _check_index(items: list, part: str, key: str) -> None:
    if not part.isdigit() or int(part) >= len(items):
        raise InputError(f"--config.{key}: {part!r} is not an index of this list of {len(items)} (0 to "
                         f"{len(items) - 1}); to change the whole list, give it as one Python literal")


def model_config(config) -> ModelConfig:
    fields = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    moved = sorted(f"model.{k}" for k in fields if f"model.{k}" in MOVED)
    if moved:  # a recipe written before the split: say where the field lives now
        raise InputError(f"{moved[0]} is no longer a model field: set {MOVED[moved[0]]} in the recipe (the "
                         "model's architecture, how it runs and how training adapts it are config.model, "
                         "config.execution and config.adaptation)")
    return ModelConfig.from_dict(fields)


def execution_config(config) -> ExecutionConfig:
    """How the run executes the model (config.execution): kernel, tiles, remat, scan unrolling, compute
    dtype."""
    return dataclass_from(ExecutionConfig, config.execution, {}, what="execution")


def adaptation_config(config) -> AdaptationConfig:
    """How training adapts the model (config.adaptation): LoRA adapters, S²-Attn groups."""
    return dataclass_from(AdaptationConfig, config.adaptation, {}, what="adaptation")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


# Field -> (test, what the value must be). Checked when the config is read, before anything compiles, so a
# value that would train something else than asked (a floor above the peak, a checkpoint every step) never
# runs.
_RANGES = {
    "seed": (_integer, "an integer"),
    "tokens_per_step": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "min_lr_ratio": (lambda v: _number(v) and 0 <= v <= 1,
                     "between 0 and 1 (the floor of each stage's cosine decay, as a fraction of its lr)"),
    "micro_batch_size": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: no gradient accumulation)"),
    "loss_chunk": (lambda v: _integer(v) and v >= 1, "a positive integer (positions per chunk of the loss)"),
    "z_loss": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: off)"),
    "log_every": (lambda v: _integer(v) and v >= 1, "a positive integer (steps between metric syncs)"),
    "peak_flops": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: measure the matmul peak)"),
    "checkpoint.every_steps": (lambda v: _integer(v) and v >= 0,
                               "an integer >= 0 (0: only at stage ends, at the end and when stopped)"),
    "checkpoint.max_to_keep": (lambda v: v is None or (_integer(v) and v >= 1),
                               "at least 1 (None keeps all): with none kept, a stopped run would lose "
                               "everything"),
    "optimizer.b1": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "optimizer.b2": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "optimizer.eps": (lambda v: _number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "optimizer.clip_norm": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: no clipping)"),
}


def check_ranges(config) -> None:
    for key, (ok, what) in _RANGES.items():
        value = config
        for part in key.split("."):
            value = value[part]
        if not ok(value):
            raise InputError(f"{key}={value!r} must be {what} (--config.{key}=VALUE)")


def check_objective(cfg: ModelConfig, config) -> None:
    """A decoder trains on next tokens, an encoder (causal=False) on masked ones: the other pairing would
    train a model to copy its input (a bidirectional model sees the next token) or to fill masks it can't see
    around. The stage-end evaluation's tasks must fit the model too (checked now, not after a stage)."""
    if config.eval_at_stage_end:
        check_tasks_fit_model(cfg.causal, as_eval_config(config.eval).tasks)
    objective = as_data_config(config.data).objective
    if objective == "mlm" and cfg.causal:
        raise InputError("data.objective='mlm' trains an encoder, but the model is a decoder (model.causal="
                         "True); set --config.model.causal=False (or start from an encoder), or "
                         "--config.data.objective=next_token")
    if objective == "next_token" and not cfg.causal:
        raise InputError("the model is an encoder (model.causal=False), which sees the next token: the "
                         "next-token objective would teach it to copy; set --config.data.objective=mlm "
                         "(masked-language modelling) or --config.model.causal=True")


def validate(config, n_devices: int):
    """Everything that can be checked without compiling; returns (ModelConfig, stages, mesh shape)."""
    check_ranges(config)
    cfg, run, adaptation = model_config(config), execution_config(config), adaptation_config(config)
    as_data_config(config.data)
    stages = run_stages(config)
    shape = mesh_shape(dict(config.mesh), n_devices)
    sizes = dict(zip(("data", "fsdp", "tensor", "sequence"), shape))
    batch_ways = sizes["data"] * sizes["fsdp"]
    for s in stages:
        if s.seq_len % sizes["sequence"]:
            raise InputError(f"stage {s.index}: seq_len={s.seq_len} is not divisible by the sequence mesh "
                             f"axis ({sizes['sequence']})")
        if zigzag_shards(config, sizes["sequence"]) and s.seq_len % (2 * sizes["sequence"]):
            raise InputError(f"stage {s.index}: seq_len={s.seq_len} is not a multiple of 2 x sequence = "
                             f"{2 * sizes['sequence']}, which zig-zag order needs; change seq_len or set "
                             "ring_zigzag=False")
        if s.batch_size % batch_ways:
            raise InputError(f"stage {s.index}: batch size {s.batch_size} is not divisible by data x fsdp = "
                             f"{batch_ways}; raise tokens_per_step or change the mesh")
        micro = int(config.micro_batch_size)
        if micro and (s.batch_size % micro or micro % batch_ways):
            raise InputError(f"stage {s.index}: micro_batch_size={micro} must divide the batch size "
                             f"{s.batch_size} and be divisible by data x fsdp = {batch_ways}")
        group = adaptation.shifted_sparse_group
        if group and s.seq_len <= group:
            raise InputError(f"stage {s.index}: seq_len={s.seq_len} is not longer than "
                             f"adaptation.shifted_sparse_group={group}; S²-Attn groups are a fraction of the "
                             "length (LongLoRA: a quarter), so lower it or set it to 0 for full attention")
        if s.position:
            cfg.position.replace(**dict(s.position))  # unknown override keys fail here
    if config.learned_extend_method not in EXTEND_METHODS:
        raise InputError(f"learned_extend_method={config.learned_extend_method!r} must be one of "
                         f"{EXTEND_METHODS}")
    if config.eval_at_stage_end and not config.eval.source:  # fail now, not after the first stage has trained
        eval_source_spec(as_data_config(config.data))
    gates.check_config(config, stages)
    if config.rope_scaling and config.rope_scaling not in ROPE_TYPES:
        raise InputError(f"rope_scaling={config.rope_scaling!r} is unknown; use one of {ROPE_TYPES} or ''")
    if sizes["sequence"] > 1 and run.attention not in SEQUENCE_PARALLEL_KERNELS:
        raise InputError(f"mesh.sequence={sizes['sequence']} splits the length across devices; set "
                         "execution.attention='ring' or 'ulysses' so attention sees the whole sequence")
    return cfg, stages, shape


def run_stages(config, extensions: dict | None = None):
    """The config's stages on the step axis, lengthened by the gate extensions done so far (a checkpoint's
    `stage_extensions`)."""
    return build_stages(config.stages, int(config.tokens_per_step), float(config.min_lr_ratio), extensions)


# The kernels that attend across the `sequence` mesh axis: ring passes K/V shards round the devices, ulysses
# exchanges heads for length (docs/tpu.md compares them).
SEQUENCE_PARALLEL_KERNELS = ("ring", "ulysses")


def zigzag_shards(config, sequence_ways: int) -> int:
    """The sequence shards a batch's rows are put in zig-zag order for (0: none). Only ring needs it: its
    shard i attends to the keys of shards <= i, so plain order leaves the first shards idle, while Ulysses
    gives every device all positions of its heads."""
    ring = config.execution.attention == "ring" and config.ring_zigzag
    return sequence_ways if ring and sequence_ways > 1 else 0
