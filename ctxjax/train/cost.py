"""What a training run costs in tokens and FLOPs, by the count MFU uses (ctxjax.flops): the training loop
takes its per-token FLOPs from here, and anything planning or comparing runs (the study, a user sizing a
recipe) gets the same numbers without training."""

from __future__ import annotations

from ctxjax import flops
from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.optimizer import trainable_labels
from ctxjax.schedule import build_stages
from ctxjax.train.configs import adaptation_config
from ctxjax.train.resume import base_model_config, model_config_for_stage
from ctxjax.train.state import abstract_params


def flops_per_token(cfg: ModelConfig, seq_len: int, adaptation: AdaptationConfig, labels) -> float:
    """Training FLOPs per token of `cfg` at `seq_len`: no weight gradient for frozen matmul weights (LoRA,
    optimizer.trainable), S²-Attn's groups for the attention scores."""
    frozen = flops.frozen_matmul_params(cfg, abstract_params(cfg, adaptation), labels)
    return flops.flops_per_token(cfg, seq_len, frozen, adaptation.shifted_sparse_group)


def planned_cost(config, workdir: str = "") -> dict:
    """{"tokens", "flops"} of every stage of `config` trained to the end."""
    stages = build_stages(config.stages, int(config.tokens_per_step), float(config.min_lr_ratio))
    base, adaptation = base_model_config(config, None, workdir), adaptation_config(config)
    labels = trainable_labels(abstract_params(base, adaptation), config.optimizer.trainable)
    tokens = [s.steps * s.batch_size * s.seq_len for s in stages]
    return {"tokens": sum(tokens),
            "flops": sum(n * flops_per_token(model_config_for_stage(config, base, s), s.seq_len, adaptation,
                                             labels)
                         for n, s in zip(tokens, stages))}
