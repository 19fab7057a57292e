"""Attention kernels behind one signature, chosen by `ModelConfig.attention`.

Every kernel computes, for each query token i and key token j of the same batch row,

    softmax_j( scale * q_i . k_j  -  slope_h * (pos_i - pos_j) )  over keys with
    seg_j == seg_i  and  0 <= pos_i - pos_j  (< sliding_window, when that is > 0),

and returns the weighted sum of v. With `causal=False` (encoders: BERT, RoBERTa, ModernBERT) it is

    softmax_j( scale * q_i . k_j  -  slope_h * |pos_i - pos_j| )  over keys with
    seg_j == seg_i  and  |pos_i - pos_j| < sliding_window  (when that is > 0; every key of the segment else):

packed documents still never see each other; a window W is symmetric (W - 1 positions on each side plus the
query itself); ALiBi's bias is symmetric, -slope * |pos_i - pos_j|, as in the bidirectional ALiBi of
MosaicBERT and jina-bert. ModernBERT's local layers see |i - j| <= config.local_attention // 2 (transformers'
`sliding_window_bidirectional_overlay`), so they take W = local_attention // 2 + 1: the `+ 1` transformers'
ModernBertAttention itself adds to turn that inclusive half-width into flash attention's window.

Shapes: q [B, Lq, H, Dh]; k, v [B, Lk, G, Dh] with H a multiple of G (query head h reads key/value head
h // (H // G), never a copied K/V); segment ids and positions [B, L] int32; `alibi_slopes` [H] float or None;
`sliding_window` an int (0: none; W: Mistral's window, each query sees itself and the W - 1 positions before
it, and non-causal also the W - 1 after it); `causal` a bool (default True; False for encoders);
`logit_softcap` a float (0: none; C: Gemma 2's C * tanh(scale * q.k / C) in place of the scaled score, before
the bias); `block_q`, `block_k` the tile of the block-based kernels (the model passes
`ModelConfig.attention_block_q/_k`; `xla` has no tiles and ignores them). Causality is by *position* within a
segment, so packed rows, PoSE-shifted positions, ring shards and KV caches (empty slots get segment id 0) all
use the same rule.
`xla` is the reference; every other kernel is tested equal to it.

Kernels:
- `xla`: full [Lq, Lk] scores; quadratic memory, fastest for short sequences.
- `blockwise`: online softmax over blocks with a custom VJP; linear memory; skips hidden blocks.
- `ring`: sequence parallel over the `sequence` mesh axis (needs `jax.set_mesh`), blockwise inside.
- `ulysses`: sequence parallel over the same axis by all-to-all exchanges of heads for length, with the
  platform's local kernel (splash, cudnn, blockwise) over each device's heads.
- `cudnn` (GPU) and `splash` (TPU): fused kernels for the layouts they support, blockwise otherwise (cuDNN
  takes no non-causal window).
- `cpu`: a fused C++ kernel for XLA:CPU (float32, one device), built on first use; blockwise otherwise.
- `auto`: the best of these for the platform, the mesh and the length.

`shifted.shifted_sparse_attention` wraps any of them into LongLoRA's S²-Attn
(`ModelConfig.shifted_sparse_group`).
"""

from __future__ import annotations

from typing import Callable

from ctxjax.errors import InputError
from ctxjax.attention.auto import auto_attention
from ctxjax.attention.blockwise import blockwise_attention
from ctxjax.attention.cpu import cpu_attention
from ctxjax.attention.fused import cudnn_attention, splash_attention
from ctxjax.attention.ring import ring_attention
from ctxjax.attention.ulysses import ulysses_attention
from ctxjax.attention.xla import xla_attention

KERNELS: dict[str, Callable] = {
    "xla": xla_attention,
    "blockwise": blockwise_attention,
    "ring": ring_attention,
    "ulysses": ulysses_attention,
    "cudnn": cudnn_attention,
    "splash": splash_attention,
    "cpu": cpu_attention,
    "auto": auto_attention,
}


def get_kernel(name: str) -> Callable:
    try:
        return KERNELS[name]
    except KeyError:
        raise InputError(f"unknown attention kernel {name!r}; choose one of {sorted(KERNELS)}") from None
