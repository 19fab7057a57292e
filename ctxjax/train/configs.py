"""Loading a recipe (`configs/x.py[:variant]`), applying `--config.FIELD=VALUE` overrides, and checking
the result before anything is compiled."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from ctxjax.config import ModelConfig
from ctxjax.positions import ROPE_TYPES
from ctxjax.data.config import as_data_config
from ctxjax.data.sources import eval_source_spec
from ctxjax.schedule import build_stages
from ctxjax.sharding import mesh_shape


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py` or `path/to/config.py:variant`; the file defines get_config(variant=None)."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist; pass e.g. --config configs/demo.py[:tiny]")
    module_spec = importlib.util.spec_from_file_location(f"ctxjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config(variant) function")
    return module.get_config(variant or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Each override is `FIELD.PATH=VALUE` (the `--config.` prefix already stripped); VALUE is a Python
    literal or else a string, and `a,b` for a list field means ['a', 'b']. Unknown fields are an error, never
    silently added."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} needs the form --config.FIELD=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        parent, parts = config, key.split(".")
        for part in parts[:-1]:
            if not isinstance(parent, (ml_collections.ConfigDict, dict)) or part not in parent:
                raise ValueError(f"unknown config field {key!r}; see the config file for valid fields")
            parent = parent[part]
        name = parts[-1]
        if isinstance(parent, list) and name.isdigit():
            parent[int(name)] = value
            continue
        if not isinstance(parent, (ml_collections.ConfigDict, dict)) or name not in parent:
            raise ValueError(f"unknown config field {key!r}; valid fields are in the config file and "
                             "ctxjax/train/defaults.py (model.*: ctxjax/config.py)")
        current = parent[name]
        if isinstance(current, (list, tuple)) and isinstance(value, str) and all(isinstance(x, str) for x in current):
            # a,b,c for a list of names
            value = type(current)(part.strip() for part in value.split(",") if part.strip())
        try:
            parent[name] = value
        except TypeError:
            now = repr(current) if len(repr(current)) <= 80 else repr(current)[:77] + "..."
            why = (" (a value is read as a Python literal: dict(...) and other calls are not; write {'key': value})"
                   if isinstance(value, str) and "(" in value else "")
            raise ValueError(f"--config.{key}={raw} does not fit the field's type ({type(current).__name__}){why}; "
                             f"write a Python literal like its value now, {now}") from None
    return config


def model_config(config) -> ModelConfig:
    return ModelConfig.from_dict(config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model))


def validate(config, n_devices: int):
    """Everything that can be checked without compiling; returns (ModelConfig, stages, mesh shape)."""
    cfg = model_config(config)
    as_data_config(config.data)
    stages = build_stages(config.stages, int(config.tokens_per_step), float(config.min_lr_ratio))
    shape = mesh_shape(dict(config.mesh), n_devices)
    sizes = dict(zip(("data", "fsdp", "tensor", "sequence"), shape))
    batch_ways = sizes["data"] * sizes["fsdp"]
    for s in stages:
        if s.seq_len % sizes["sequence"]:
            raise ValueError(f"stage {s.index}: seq_len={s.seq_len} is not divisible by the sequence mesh axis "
                             f"({sizes['sequence']})")
        if sizes["sequence"] > 1 and config.ring_zigzag and s.seq_len % (2 * sizes["sequence"]):
            raise ValueError(f"stage {s.index}: seq_len={s.seq_len} is not a multiple of 2 x sequence = "
                             f"{2 * sizes['sequence']}, which zig-zag order needs; change seq_len or set "
                             "ring_zigzag=False")
        if s.batch_size % batch_ways:
            raise ValueError(f"stage {s.index}: batch size {s.batch_size} is not divisible by data x fsdp = "
                             f"{batch_ways}; raise tokens_per_step or change the mesh")
        micro = int(config.micro_batch_size)
        if micro and (s.batch_size % micro or micro % batch_ways):
            raise ValueError(f"stage {s.index}: micro_batch_size={micro} must divide the batch size "
                             f"{s.batch_size} and be divisible by data x fsdp = {batch_ways}")
        if cfg.shifted_sparse_group and s.seq_len <= cfg.shifted_sparse_group:
            raise ValueError(f"stage {s.index}: seq_len={s.seq_len} is not longer than model.shifted_sparse_group="
                             f"{cfg.shifted_sparse_group}; S²-Attn groups are a fraction of the length (LongLoRA: a "
                             "quarter), so lower it or set it to 0 for full attention")
        if s.position:
            cfg.position.replace(**dict(s.position))  # unknown override keys fail here
        if cfg.position.name == "learned" and config.learned_extend_method not in ("interpolate", "copy"):
            raise ValueError("learned_extend_method must be 'interpolate' or 'copy'")
    if config.eval_at_stage_end and not config.eval.source:  # fail now, not after the first stage has trained
        eval_source_spec(as_data_config(config.data))
    if config.rope_scaling and config.rope_scaling not in ROPE_TYPES:
        raise ValueError(f"rope_scaling={config.rope_scaling!r} is unknown; use one of {ROPE_TYPES} or ''")
    if sizes["sequence"] > 1 and cfg.attention != "ring":
        raise ValueError(f"mesh.sequence={sizes['sequence']} splits the length across devices; set "
                         "model.attention='ring' so attention sees the whole sequence")
    return cfg, stages, shape
