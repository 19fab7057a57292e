"""LoRA adapters outside the model: giving imported weights fresh adapters, and merging trained ones back.

The adapters themselves live in `model.Dense` (`lora_a`, `lora_b` next to a projection's `kernel`, switched on
by `AdaptationConfig.lora_rank`). A model imported from Hugging Face has none, so training adds fresh ones
(`add_adapters`: B = 0, the model's output is unchanged); export and inference merge them
(`merge_adapters`: kernel += A @ B * alpha / rank), so what leaves ctxjax is a plain model of the same
architecture.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.model import Transformer

ADAPTER_NAMES = ("lora_a", "lora_b")


def is_adapter(path: tuple[str, ...]) -> bool:
    """Whether a parameter path (names, e.g. ('layers', 'attn', 'q', 'lora_a')) is a LoRA adapter's."""
    return path[-1] in ADAPTER_NAMES


def fresh_adapters(cfg: ModelConfig, adaptation: AdaptationConfig, rng) -> dict:
    """The adapter parameters of a newly initialised `cfg` model, as a flat {path tuple: array} dict. Inside
    jit everything else the init computes is dead code, so no full-size weight is ever made."""
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)

    def init(key):
        params = nn.meta.unbox(Transformer(cfg, adaptation=adaptation).init(key, tokens)["params"])
        return {k: v for k, v in flax.traverse_util.flatten_dict(params).items() if is_adapter(k)}

    return jax.jit(init)(rng)


def add_adapters(params, cfg: ModelConfig, adaptation: AdaptationConfig, rng):
    """`params` (e.g. imported) with fresh adapters wherever `adaptation` wants one and `params` has none."""
    if not adaptation.lora_rank:
        return params
    flat = flax.traverse_util.flatten_dict(params)
    flat.update({k: v for k, v in fresh_adapters(cfg, adaptation, rng).items() if k not in flat})
    return flax.traverse_util.unflatten_dict(flat)


def split_adapters(params):
    """(params without adapters, {module path: (lora_a, lora_b)}), e.g. {('layers', 'attn', 'q'): (a, b)}."""
    flat = flax.traverse_util.flatten_dict(params)
    adapters = {k[:-1]: (flat[k], flat[(*k[:-1], "lora_b")]) for k in flat if k[-1] == "lora_a"}
    base = {k: v for k, v in flat.items() if not is_adapter(k)}
    return flax.traverse_util.unflatten_dict(base), adapters


def merge_adapters(params, adaptation: AdaptationConfig):
    """params with every adapter folded into its kernel (a plain model of the same architecture). Host (numpy)
    params stay numpy; the sum is formed in float32 and stored in the kernel's dtype. Without adapters, the
    params come back as they are."""
    base, adapters = split_adapters(params)
    if not adapters:
        return params
    ranks = {a.shape[-1] for a, _ in adapters.values()}
    if ranks != {adaptation.lora_rank}:  # the scale alpha / rank would be wrong (or a division by zero)
        raise InputError(f"the params hold LoRA adapters of rank {sorted(ranks)} but the adaptation says "
                         f"lora_rank={adaptation.lora_rank}; pass the AdaptationConfig the params were "
                         "trained with")
    xp = np if all(isinstance(v, np.ndarray) for v in jax.tree.leaves(params)) else jnp
    scale = float(adaptation.lora_alpha) / adaptation.lora_rank
    flat = flax.traverse_util.flatten_dict(base)
    for module, (a, b) in adapters.items():
        kernel = flat[(*module, "kernel")]
        # Stacked layers: a [layers, *in, rank], b [layers, rank, *out], kernel [layers, *in, *out].
        layers, rank = a.shape[0], a.shape[-1]
        delta = xp.matmul(xp.asarray(a, xp.float32).reshape(layers, -1, rank),
                          xp.asarray(b, xp.float32).reshape(layers, rank, -1))
        flat[(*module, "kernel")] = (xp.asarray(kernel, xp.float32)
                                     + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat)
