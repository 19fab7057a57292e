"""Model FLOPs per trained token and the machine's matmul peak, for an honest MFU.

FLOPs per token of one forward+backward pass (backward = 2x forward):
    6 * N_matmul                       weights used in matmuls (embedding lookups excluded, output
                                       projection in)
  + 12 * n_layers * n_heads * head_dim * K  attention scores and weighted values, K the keys a query sees on
                                             average: L/2 causally (half of full attention's L), less with a
                                             sliding window or S²-Attn groups
  - 2 * frozen matmul weights          no weight gradient for them (LoRA, optimizer.trainable)
This is the PaLM/nanoGPT count with causal attention counted once (as MaxText does since 2025).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from ctxjax.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    d, h, g, dh, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.mlp_dim
    attention = d * h * dh * 2 + d * g * dh * 2  # q, o and k, v
    mlp = d * f * (3 if cfg.gated_mlp else 2)
    head = d * d if cfg.output_head == "mlm" else 0  # the masked-LM head's dense
    output = 0 if cfg.output_head == "none" else d * cfg.vocab_size
    return cfg.n_layers * (attention + mlp) + head + output


def attended_keys(cfg: ModelConfig, seq_len: int, group: int = 0) -> float:
    """Keys a query sees on average over the layers: L/2 causally (L in an encoder); with a window W < L,
    W - W^2 / (2L) (the first W queries see 1..W keys, the rest W each; an encoder's 2W - 1 less the edges),
    on the layers that have it (`full_attention_layers` have none). With S²-Attn groups of G < L positions
    (`group`), each group is a sequence of G."""
    if group:
        seq_len = min(seq_len, group)

    def keys(window):
        if not cfg.causal:  # both sides
            if not window or window >= seq_len:
                return seq_len
            return 2 * window - 1 - window * (window - 1) / seq_len
        return seq_len / 2 if not window or window >= seq_len else window - window * window / (2 * seq_len)

    n_full = len(cfg.full_attention_layers)
    return (n_full * keys(0) + (cfg.n_layers - n_full) * keys(cfg.sliding_window)) / cfg.n_layers


def frozen_matmul_params(cfg: ModelConfig, params, labels) -> int:
    """Matmul weights labelled 'freeze' by `optimizer.trainable_labels` (the step computes no weight gradient
    for them): every kernel, and a tied embedding table, which is also the output projection."""
    def is_matmul_weight(path) -> bool:
        names = [str(getattr(k, "key", k)) for k in path]
        return names[-1] == "kernel" or (cfg.tied and names == ["embed", "embedding"])

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(leaf.size for (path, leaf), label in zip(leaves, jax.tree.leaves(labels))
               if label == "freeze" and is_matmul_weight(path))


def flops_per_token(cfg: ModelConfig, seq_len: int, frozen_params: int = 0, group: int = 0) -> float:
    """`frozen_params`: matmul weights without a weight gradient (LoRA, `trainable`): 4 FLOPs per token,
    not 6. LoRA adapters themselves (rank x (in + out) per projection, ~1% of a 4096-wide weight at rank 8)
    are not counted. `group`: S²-Attn's group size (AdaptationConfig.shifted_sparse_group), 0 for full
    attention."""
    attention = 12.0 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * attended_keys(cfg, seq_len, group)
    return 6.0 * matmul_params(cfg) - 2.0 * frozen_params + attention


def best_matmul_rate(square_matmul, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """The best FLOP/s of `square_matmul(size)` (a function that multiplies two float32 [size, size] matrices
    and waits for the result), after one warm-up call, over `repeats` calls at each size. Two sizes because
    one can sit well below the peak (a 2-core AMD EPYC: 242 GFLOP/s at 1024, 453 at 2048)."""
    best = 0.0
    for size in sizes:
        multiply = square_matmul(size)
        multiply()
        for _ in range(repeats):
            start = time.perf_counter()
            multiply()
            best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


@functools.cache
def measured_peak_flops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """FLOP/s of float32 square matmuls on the default device (`best_matmul_rate`): the peak MFU is measured
    against (on CPUs there is no datasheet number that the compiler can reach)."""
    def square_matmul(size):
        a, matmul = jnp.ones((size, size), jnp.float32), jax.jit(lambda x: x @ x)
        return lambda: matmul(a).block_until_ready()

    return best_matmul_rate(square_matmul, sizes, repeats)
