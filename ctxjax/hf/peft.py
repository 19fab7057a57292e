"""LoRA adapters as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained(base_model, adapter_dir)` loads on top of the base model ctxjax exports.

PEFT's LoRA adds `x @ lora_A.T @ lora_B.T * lora_alpha / r` to a torch Linear; ctxjax's adapter is the same sum
with A [*in, r] and B [r, *out] stored per layer in a stack, so each layer's A and B only need flattening and
transposing. GPT-2 fuses q, k and v into one `c_attn` matrix, which has no per-projection adapters: only
Llama-family models with separate q, k, v projections (Llama, Mistral, Qwen2, Qwen3) export this way.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from safetensors.numpy import save_file

from ctxjax.config import ModelConfig
from ctxjax.hf.config import export_model_type
from ctxjax.hf.io import write_directory
from ctxjax.lora import split_adapters

# ctxjax projection -> the Linear it adapts inside a transformers Llama decoder layer.
LLAMA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
ADAPTER_FILE = "adapter_model.safetensors"


def save_peft_adapter(cfg: ModelConfig, params, out_dir: str, base_model: str, overwrite: bool = False) -> str:
    """Write the adapters of `params` (a `cfg` model with `lora_rank` > 0) for the base model at `base_model`."""
    fused = "gpt2" if cfg.family == "gpt2" else "phi3" if export_model_type(cfg) == "phi3" else ""
    if fused:
        raise ValueError(f"PEFT adapters export from Llama, Mistral, Qwen2 and Qwen3 models only; a {fused} model fuses q, k, "
                         "v into one matrix: export the merged model instead (ctxjax export without --peft-adapter)")
    _, adapters = split_adapters(jax.device_get(params))
    if not cfg.lora_rank or not adapters:
        raise ValueError("this model has no LoRA adapters (model.lora_rank is 0): export the model itself")
    tensors = {}
    for module, (a, b) in adapters.items():
        for i in range(a.shape[0]):
            prefix = f"base_model.model.model.layers.{i}.{LLAMA_MODULES[module[-1]]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a[i]).reshape(-1, cfg.lora_rank).T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b[i]).reshape(cfg.lora_rank, -1).T)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.lora_rank, "lora_alpha": float(cfg.lora_alpha), "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(LLAMA_MODULES[t].split(".")[-1] for t in cfg.lora_targets),
        "fan_in_fan_out": False, "inference_mode": True,
    }

    def fill(directory):
        save_file(tensors, os.path.join(directory, ADAPTER_FILE), metadata={"format": "pt"})
        with open(os.path.join(directory, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)

    return write_directory(out_dir, overwrite, fill)
