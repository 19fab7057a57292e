"""The metadata JSON stored with every checkpoint, and the check that a work directory belongs to this model.

meta = {"model_config": ModelConfig.to_dict(), "train_config": {...}, "stage": int, "step": int,
        "params_only": bool, ...extra keys the caller adds (e.g. "imported_from")}
"""

from __future__ import annotations

from typing import Any

from ctxjax.errors import InputError
from ctxjax.config import ModelConfig


def checkpoint_meta(model_config: ModelConfig | dict, *, train_config: dict | None = None, stage: int = 0,
                    **extra: Any) -> dict:
    """The `meta` argument of Checkpointer.save (which fills in step and params_only)."""
    return {"model_config": _as_dict(model_config), "train_config": dict(train_config or {}),
            "stage": int(stage), **extra}


def model_config_of(meta: dict) -> ModelConfig:
    return ModelConfig.from_dict(meta["model_config"])


def _shape_fields(cfg: ModelConfig) -> dict[str, Any]:
    """What decides the parameter tree and its shapes, as effective values (n_kv_heads=None and
    n_kv_heads=n_heads are the same model)."""
    return {"family": cfg.family, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "kv_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "d_ff": cfg.mlp_dim,
            "qkv_bias": cfg.use_qkv_bias, "o_bias": cfg.use_o_bias, "mlp_bias": cfg.use_mlp_bias,
            "tie_embeddings": cfg.tied, "learned_positions": cfg.position.name == "learned",
            "lora_rank": cfg.lora_rank, "lora_targets": cfg.lora_targets if cfg.lora_rank else ()}


def shape_differences(saved: ModelConfig | dict, wanted: ModelConfig | dict) -> list[str]:
    """'field saved -> wanted' for every difference that changes parameter shapes. A learned position table may
    grow (a stage boundary extends it) but not shrink; everything else (RoPE scaling, dtypes, kernels) is free."""
    saved, wanted = _as_config(saved), _as_config(wanted)
    a, b = _shape_fields(saved), _shape_fields(wanted)
    diffs = [f"{k} {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
    if a["learned_positions"] and b["learned_positions"] and wanted.max_seq_len < saved.max_seq_len:
        diffs.append(f"max_seq_len {saved.max_seq_len} -> {wanted.max_seq_len} (a learned position table "
                     "cannot shrink)")
    return diffs


def check_compatible(meta: dict, model_config: ModelConfig | dict, *, workdir: str = "this work directory") -> None:
    """Raise a one-line ValueError when the checkpoint described by `meta` (Checkpointer.restore_meta) holds a
    model whose parameters differ in shape from `model_config`: the work directory belongs to another run."""
    if "model_config" not in meta:
        raise InputError(f"the checkpoint in {workdir} has no model_config in its metadata (not written by "
                         "ctxjax); choose a new --workdir")
    diffs = shape_differences(meta["model_config"], model_config)
    if diffs:
        raise InputError(f"{workdir} holds another model's checkpoint (step {meta.get('step')}; checkpoint -> "
                         f"config: {'; '.join(diffs)}); to resume it, set the checkpoint's values, or choose a new "
                         "--workdir (checkpoints are never overwritten)")


def _as_dict(model_config: ModelConfig | dict) -> dict:
    return model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config)


def _as_config(model_config: ModelConfig | dict) -> ModelConfig:
    return model_config if isinstance(model_config, ModelConfig) else ModelConfig.from_dict(model_config)
