"""LoRA adapters as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(base_model, adapter_dir)` loads on top of the base model ctxjax exports.

PEFT's LoRA adds `x @ lora_A.T @ lora_B.T * lora_alpha / r` to a torch Linear; ctxjax's adapter is the same
sum with A [*in, r] and B [r, *out] stored per layer in a stack, so each layer's A and B only need flattening
and transposing. Phi-3 fuses q/k/v and gate/up into one Linear each: their adapters go out as one adapter of
the summed rank, A's stacked and B's block-diagonal (PEFT's rank_pattern and alpha_pattern say so). Gemma
names its Linears as Llama does. GPT-2 is refused:
its fused `c_attn` is a Conv1D.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np
from safetensors.numpy import save_file

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.hf.config import export_model_type
from ctxjax.hf.io import write_directory
from ctxjax.lora import split_adapters

# ctxjax projection -> the Linear it adapts inside a transformers Llama decoder layer.
LLAMA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                 "down": "mlp.down_proj"}
# Phi-3 fuses some of them into one Linear, rows in this order.
PHI3_FUSED = {"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")}
ADAPTER_FILE = "adapter_model.safetensors"


def save_peft_adapter(cfg: ModelConfig, params, adaptation: AdaptationConfig, out_dir: str, base_model: str,
                      overwrite: bool = False, *, architecture: str = "", protected: Sequence[str] = (),
                      source: str = "") -> str:
    """Write the adapters of `params` (trained with `adaptation`, lora_rank > 0) for the base model at
    `base_model`, exported as `architecture` (see save_pretrained)."""
    if cfg.family == "gpt2":
        raise InputError("PEFT adapters export from Llama-family and Gemma models only; GPT-2 fuses q, k, v "
                         "into one matrix with no per-projection adapters: export the merged model instead "
                         "(ctxjax export without --peft-adapter)")
    _, adapters = split_adapters(jax.device_get(params))
    if not adaptation.lora_rank or not adapters:
        raise InputError("this model has no LoRA adapters (adaptation.lora_rank is 0): export the model "
                         "itself")
    r = adaptation.lora_rank
    stacked = {LLAMA_MODULES[m[-1]]: (np.asarray(a), np.asarray(b)) for m, (a, b) in adapters.items()}
    # Per layer: {HF module: (A [rank, in], B [out, rank])}, torch Linear layout.
    layers = [{module: (a[i].reshape(-1, r).T, b[i].reshape(r, -1).T) for module, (a, b) in stacked.items()}
              for i in range(cfg.n_layers)]
    ranks = {}
    if export_model_type(cfg, architecture) == "phi3":
        layers = [_fused(cfg, r, layer) for layer in layers]
        ranks = {module.split(".")[-1]: a.shape[0] for module, (a, _) in layers[0].items() if a.shape[0] != r}
    tensors = {}
    for i, layer in enumerate(layers):
        for module, (a, b) in layer.items():
            prefix = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": float(adaptation.lora_alpha), "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(module.split(".")[-1] for module in layers[0]),
        "fan_in_fan_out": False, "inference_mode": True,
        # A fused module's adapter stacks its parts' ranks; alpha grows with it, so alpha / rank stays the
        # same.
        "rank_pattern": ranks, "alpha_pattern": {m: float(adaptation.lora_alpha) * rank / r
                                                 for m, rank in ranks.items()},
    }

    def fill(directory):
        save_file(tensors, os.path.join(directory, ADAPTER_FILE), metadata={"format": "pt"})
        with open(os.path.join(directory, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)

    return write_directory(out_dir, overwrite, fill, protected=protected, source=source)


def _fused(cfg: ModelConfig, rank: int, layer: dict) -> dict:
    """One layer's adapters for Phi-3's fused Linears: the parts' A's stacked (rank r per adapted part) and
    their B's block-diagonal, so that B A is each part's update in its own rows, zero for parts without an
    adapter."""
    widths = {"q": cfg.n_heads * cfg.dim_per_head, "k": cfg.kv_heads * cfg.dim_per_head,
              "v": cfg.kv_heads * cfg.dim_per_head, "gate": cfg.mlp_dim, "up": cfg.mlp_dim}
    out = {m: ab for m, ab in layer.items() if m in (LLAMA_MODULES["o"], LLAMA_MODULES["down"])}
    for module, parts in PHI3_FUSED.items():
        adapted = [p for p in parts if LLAMA_MODULES[p] in layer]
        if not adapted:
            continue
        a = np.concatenate([layer[LLAMA_MODULES[p]][0] for p in adapted])
        b = np.zeros((sum(widths[p] for p in parts), a.shape[0]), a.dtype)
        row = 0
        for p in parts:
            if p in adapted:
                col = adapted.index(p) * rank
                b[row:row + widths[p], col:col + rank] = layer[LLAMA_MODULES[p]][1]
            row += widths[p]
        out[module] = (a, b)
    return out
