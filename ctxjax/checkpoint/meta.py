"""The metadata JSON stored with every checkpoint, and the check that a work directory belongs to this model.

meta = {"format": 2,
        "model_config": ModelConfig.to_dict(),        what the model is
        "adaptation": AdaptationConfig.to_dict(),     the LoRA adapters its params carry (training's, not the
                                                      model's)
        "hf_architecture": "Phi3ForCausalLM" | "",    the class an export writes again (import-hf sets it)
        "train_config": {...}, "stage": int, "step": int, "params_only": bool,
        "stage_extensions": {"1": {"extensions": 2, "steps": 100}},
                                                      only when a stage gate extended a stage: how often, and
                                                      the steps added (they lay out the stages)
        ...extra keys the caller adds (e.g. "imported_from")}

Checkpoints written before the three configs were split (no "format") kept execution, adaptation and export
fields inside model_config; `upgrade` moves them where they belong, so those checkpoints still restore.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError

FORMAT = 2


def checkpoint_meta(model_config: ModelConfig | dict, *, adaptation: AdaptationConfig | None = None,
                    hf_architecture: str = "", train_config: dict | None = None, stage: int = 0,
                    **extra: Any) -> dict:
    """The `meta` argument of Checkpointer.save (which fills in step and params_only)."""
    return {"format": FORMAT, "model_config": _as_dict(model_config),
            "adaptation": (adaptation or AdaptationConfig()).to_dict(), "hf_architecture": hf_architecture,
            "train_config": dict(train_config or {}), "stage": int(stage), **extra}


def upgrade(meta: dict) -> dict:
    """`meta` in the current format. A first-format meta's model_config also held how the model ran (dropped:
    a run chooses that anew), its LoRA adapters (-> adaptation) and its export class (-> hf_architecture)."""
    if meta.get("format", 1) >= FORMAT or "model_config" not in meta:
        return meta
    meta = dict(meta)
    architecture_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in ("model_config", "base_model_config"):
        if isinstance(meta.get(key), dict):
            old = meta[key]
            if key == "model_config":
                adaptation = {f.name: old[f.name] for f in dataclasses.fields(AdaptationConfig)
                              if f.name in old}
                meta.setdefault("adaptation", AdaptationConfig(**adaptation).to_dict())
                meta.setdefault("hf_architecture", old.get("hf_architecture", ""))
            meta[key] = {k: v for k, v in old.items() if k in architecture_fields}
    meta["format"] = FORMAT
    return meta


def model_config_of(meta: dict) -> ModelConfig:
    return ModelConfig.from_dict(upgrade(meta)["model_config"])


def adaptation_of(meta: dict) -> AdaptationConfig:
    return AdaptationConfig(**upgrade(meta).get("adaptation", {}))


def _shape_fields(cfg: ModelConfig) -> dict[str, Any]:
    """What decides the parameter tree and its shapes, as effective values (n_kv_heads=None and
    n_kv_heads=n_heads are the same model)."""
    return {"family": cfg.family, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "kv_heads": cfg.kv_heads,
            "head_dim": cfg.dim_per_head, "d_ff": cfg.mlp_dim, "qkv_bias": cfg.use_qkv_bias,
            "o_bias": cfg.use_o_bias, "mlp_bias": cfg.use_mlp_bias, "tie_embeddings": cfg.tied,
            "position table": cfg.position.max_positions(cfg) is not None}


def shape_differences(saved: ModelConfig | dict, wanted: ModelConfig | dict) -> list[str]:
    """'field saved -> wanted' for every difference that changes parameter shapes. A position table may grow
    (a stage boundary extends it) but not shrink; everything else (RoPE scaling, dtypes, kernels) is free."""
    saved, wanted = _as_config(saved), _as_config(wanted)
    a, b = _shape_fields(saved), _shape_fields(wanted)
    diffs = [f"{k} {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
    rows = saved.position.max_positions(saved), wanted.position.max_positions(wanted)
    if None not in rows and rows[1] < rows[0]:
        diffs.append(f"max_seq_len {rows[0]} -> {rows[1]} (a position table cannot shrink)")
    return diffs


def check_compatible(meta: dict, model_config: ModelConfig | dict, *,
                     workdir: str = "this work directory") -> None:
    """Raise a one-line InputError when the checkpoint described by `meta` (Checkpointer.restore_meta) holds a
    model whose parameters differ in shape from `model_config`: the work directory belongs to another run."""
    if "model_config" not in meta:
        raise InputError(f"the checkpoint in {workdir} has no model_config in its metadata (not written by "
                         "ctxjax); choose a new --workdir")
    diffs = shape_differences(upgrade(meta)["model_config"], model_config)
    if diffs:
        raise InputError(f"{workdir} holds another model's checkpoint (step {meta.get('step')}; checkpoint "
                         f"-> config: {'; '.join(diffs)}); to resume it, set the checkpoint's values, or "
                         "choose a new --workdir (checkpoints are never overwritten)")


def _as_dict(model_config: ModelConfig | dict) -> dict:
    return model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)


def _as_config(model_config: ModelConfig | dict) -> ModelConfig:
    if isinstance(model_config, ModelConfig):
        return model_config
    return ModelConfig.from_dict(upgrade({"model_config": model_config})["model_config"])
