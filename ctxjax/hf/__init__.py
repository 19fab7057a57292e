"""Hugging Face checkpoints <-> ctxjax: `load_pretrained(hf_dir) -> (ModelConfig, params)` and
`save_pretrained(config, params, out_dir)`, numpy and safetensors only (no torch needed).

Supported: LlamaForCausalLM-style models (llama, mistral, qwen2, qwen3, phi3), Gemma2ForCausalLM,
Gemma3ForCausalLM (also the language model of a Gemma3ForConditionalGeneration) and GPT2LMHeadModel; the
encoders BertForMaskedLM, BertModel, RobertaForMaskedLM, RobertaModel, ModernBertForMaskedLM and
ModernBertModel (an export of an encoder loads with `transformers.AutoModelForMaskedLM`, or `AutoModel` for a
bare one, head='none').
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError, read_json
from ctxjax.execution import ExecutionConfig
from ctxjax.hf.config import (SUPPORTED, architecture, hf_config_from_model, model_config_from_hf,
                              rereads_on_rope_switch)
from ctxjax.hf.io import MAX_SHARD_BYTES, CheckpointReader, write_checkpoint, write_directory
from ctxjax.hf.tokenizer import special_token_ids, write_tokenizer
from ctxjax.hf.weights import Tensor, canonical_name, is_ignored, tensors_for
from ctxjax.lora import split_adapters
from ctxjax.model import Transformer

__all__ = ["architecture_of", "load_pretrained", "save_pretrained", "read_hf_config",
           "rereads_on_rope_switch"]


def read_hf_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{hf_dir} is not a Hugging Face model directory: it has no config.json")
    config = read_json(path, "a Hugging Face model config")
    if not isinstance(config, dict):
        raise InputError(f"{path} holds a JSON {type(config).__name__}, not the object of a model config")
    return config


def architecture_of(hf_dir: str) -> str:
    """The Hugging Face class of the model in `hf_dir` (e.g. "Phi3ForCausalLM"): what an export of it writes
    again (`save_pretrained(..., architecture=)`) when that class still computes it."""
    return architecture(read_hf_config(hf_dir))


def _param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(
        lambda: nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0), tokens)["params"]))
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _layer_names(cfg: ModelConfig, tensor: Tensor) -> list[str]:
    if tensor.per_layer:
        return [tensor.hf_name.format(i=i) for i in range(tensor.first_layer, cfg.n_layers)]
    return [tensor.hf_name]


def _our_path(cfg: ModelConfig, tensor: Tensor, path) -> tuple[str, ...]:
    return ("layers", *path) if tensor.per_layer else tuple(path)


def _expected_hf_shape(cfg, tensor, shapes) -> tuple[int, ...]:
    per_layer = [shapes[_our_path(cfg, tensor, p)][1 if tensor.per_layer else 0:] for p in tensor.paths]
    return tensor.to_hf(cfg, [np.empty(s, np.float32) for s in per_layer]).shape


def load_pretrained(hf_dir: str, **overrides: Any):
    """(ModelConfig, params) from a Hugging Face directory. `overrides` are ModelConfig fields (e.g.
    param_dtype='float32', position=..., sliding_window=...): what the model is. How it runs (attention,
    dtype, remat, ...) goes to `Transformer(cfg, execution=ExecutionConfig(...))`, and LoRA adapters are added
    with `ctxjax.lora.add_adapters`. Params are host numpy arrays in `param_dtype` (default: the checkpoint's
    dtype); place them with jax.device_put or a sharding."""
    _refuse_moved_overrides(overrides)
    hf_config = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf_config, where=os.path.join(hf_dir, "config.json"), **overrides)
    reader = CheckpointReader(hf_dir)
    available = {}
    for name in reader.names():
        canonical = canonical_name(cfg, name)
        if not is_ignored(cfg, canonical):
            available[canonical] = name
    tensors = tensors_for(cfg, SUPPORTED[architecture(hf_config)])  # the layout of these files
    expected = [n for t in tensors for n in _layer_names(cfg, t)]
    missing = [n for n in expected if n not in available]
    extra = sorted(set(available) - set(expected))
    if missing:
        raise InputError(f"checkpoint in {hf_dir} lacks {len(missing)} weight(s) its config.json implies, "
                         f"e.g. {missing[:3]}; check that config.json belongs to these weights")
    if extra:
        raise InputError(f"checkpoint in {hf_dir} has {len(extra)} weight(s) ctxjax does not map, e.g. "
                         f"{extra[:3]}; check that config.json belongs to these weights")

    shapes = _param_shapes(cfg)
    dtype = jnp.dtype(cfg.param_dtype)
    params: dict = {}
    for tensor in tensors:
        want = _expected_hf_shape(cfg, tensor, shapes)
        per_path: list[list[np.ndarray]] = [[] for _ in tensor.paths]
        for name in _layer_names(cfg, tensor):
            value = reader[available[name]]
            if value.shape != want:
                fix = (f" with the overrides {sorted(overrides)} implies {want}; an override cannot reshape "
                       "stored weights (a GPT-2 position table grows with ctxjax.positions.extend)"
                       if overrides else
                       f" implies {want}; check hidden_size / heads / intermediate_size in config.json")
                raise InputError(f"weight {name} has shape {tuple(value.shape)} but config.json{fix}")
            for parts, part in zip(per_path, tensor.from_hf(cfg, value)):
                parts.append(part.astype(dtype))
        for path, parts in zip(tensor.paths, per_path):
            parts = [np.ones_like(parts[0])] * tensor.first_layer + parts  # unused in layers HF lacks
            value = np.stack(parts) if tensor.per_layer else parts[0]
            _set(params, _our_path(cfg, tensor, path), value)
    return cfg, params


def _refuse_moved_overrides(overrides: dict[str, Any]) -> None:
    """Settings that are not the model's (they were ModelConfig fields once) name where they went, in one
    line."""
    homes = {f.name: "ExecutionConfig: give it as Transformer(cfg, execution=ExecutionConfig({}=...))"
             for f in dataclasses.fields(ExecutionConfig)}
    homes.update({f.name: "AdaptationConfig: give it as Transformer(cfg, adaptation=AdaptationConfig({}=...))"
                  for f in dataclasses.fields(AdaptationConfig)})
    for name in ("lora_rank", "lora_alpha", "lora_targets"):  # LoRA also needs adapter parameters
        homes[name] = ("AdaptationConfig: give it as ctxjax.lora.add_adapters(params, cfg, "
                       "AdaptationConfig({}=...), rng)")
    homes["hf_architecture"] = ("the export: save_pretrained(..., "
                                "architecture=ctxjax.hf.architecture_of(hf_dir))")
    moved = sorted(set(overrides) & set(homes))
    if moved:
        raise InputError(f"{moved[0]} is not part of what a model is but of "
                         f"{homes[moved[0]].format(moved[0])}")


def save_pretrained(config: ModelConfig, params, out_dir: str, tokenizer=None, overwrite: bool = False,
                    max_shard_bytes: int = MAX_SHARD_BYTES, *, architecture: str = "",
                    protected: Sequence[str] = (), source: str = "") -> str:
    """Write `out_dir` as a Hugging Face model directory (config.json, safetensors, tokenizer files) that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads and that reproduces ctxjax's logits
    (an encoder: `AutoModelForMaskedLM`, or `AutoModel` for head='none', whose last hidden state it
    reproduces).

    Everything is written to a temporary sibling directory first and renamed into place at the end, so a
    failure leaves no half-written export. An existing non-empty `out_dir` is replaced only with
    overwrite=True, and only when it is an earlier ctxjax export nobody changed since (`ctxjax_export.json`
    lists its files); `protected` paths (a work directory's checkpoints, the source model) are never replaced,
    held or written into. `source` (the work directory or model exported) is recorded in that marker file.
    `architecture`: the Hugging Face class to write when it computes the model (an imported model's own,
    `architecture_of`); else the first class that does. LoRA adapters must be merged first
    (`ctxjax.lora.merge_adapters`) or written apart (`ctxjax.hf.peft.save_peft_adapter`).
    """
    params = jax.device_get(nn.meta.unbox(params))
    if split_adapters(params)[1]:
        raise InputError("the params hold LoRA adapters: merge them first "
                         "(ctxjax.lora.merge_adapters(params, adaptation)) or export them apart as a PEFT "
                         "adapter (ctxjax.hf.peft.save_peft_adapter)")
    config = config.position.fitted_to_params(config, params)  # e.g. a grown learned table sets the context
    hf = hf_config_from_model(config, architecture)
    # All converted and checked before any write.
    tensors = list(_hf_tensors(config, params, hf["model_type"]))

    def fill(directory):
        if tokenizer is not None:
            write_tokenizer(tokenizer, directory)
        ids = special_token_ids(directory)
        if hf["model_type"] == "roberta":  # its padding_idx fixes where positions start: not the tokenizer's
            ids.pop("pad_token_id")
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({**hf, **ids}, f, indent=2)
        write_checkpoint(iter(tensors), directory, max_shard_bytes)

    return write_directory(out_dir, overwrite, fill, protected=protected, source=source)


def _hf_tensors(cfg: ModelConfig, params, model_type: str):
    tensors = tensors_for(cfg, model_type)
    wanted = {_our_path(cfg, t, p) for t in tensors for p in t.paths}
    have = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    if wanted != have:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        raise InputError(f"params do not match the config: missing {missing[:3]}, unexpected {extra[:3]}; "
                         "pass the ModelConfig the params were made with")
    shapes = _param_shapes(cfg)
    for t in tensors:
        values = [np.asarray(_get(params, _our_path(cfg, t, p))) for p in t.paths]
        for path, value in zip(t.paths, values):
            if value.shape != shapes[_our_path(cfg, t, path)]:
                raise InputError(f"param {'/'.join(_our_path(cfg, t, path))} has shape {value.shape}, the "
                                 f"config implies {shapes[_our_path(cfg, t, path)]}; pass the matching "
                                 "ModelConfig")
        values = [v.astype(jnp.dtype(cfg.param_dtype), copy=False) for v in values]  # as config.json says
        if t.per_layer:
            for i, name in enumerate(_layer_names(cfg, t), start=t.first_layer):
                yield name, t.to_hf(cfg, [v[i] for v in values])
        else:
            yield t.hf_name, t.to_hf(cfg, values)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
