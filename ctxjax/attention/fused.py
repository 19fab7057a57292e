"""Fused vendor kernels: cuDNN flash attention on GPU, Pallas splash attention on TPU.

Both mask causally by *index*, not position, and neither takes ALiBi slopes without an L x L bias. They equal
the contract when positions grow with the index inside each segment and every segment is one contiguous run
(`index_order_is_position_order`): true of ordinary and packed training batches, false of e.g. a KV cache
or shuffled (zig-zag) rows. Non-causal without a window, positions play no part: the kernels only need the
same segment ids on both sides (splash compares ids pair by pair, so any order fits). A non-causal window is
splash's symmetric `LocalMask`; cuDNN (through `jax.nn.dot_product_attention`) takes no window to the right,
so that case runs blockwise. That is data, so it is checked at run time on O(L) ints, and a `lax.cond` runs
the fused kernel when it holds and `blockwise` otherwise. Shapes, dtypes or platforms the fused kernel cannot
take at all (checked at trace time) go straight to `blockwise`, with a warning that says why. Off their
platform both kernels are `blockwise`, so a config naming them still runs on CPU. The platform is that of the
devices the step is compiled for (the active mesh's), not the host's: a step compiled on a CPU host for a TPU
topology gets the TPU kernel.

Splash is a Mosaic kernel, which XLA does not partition: under a mesh it runs per shard (`per_shard`). The
cuDNN call needs no such wrapper: JAX gives it a partitioning rule (`custom_partitioning` over batch and heads
in jax/_src/cudnn/fused_attention_stablehlo.py).

cuDNN is reached through `jax.nn.dot_product_attention(implementation='cudnn')`, which has no segment ids:
its fast path also needs one segment per row. Splash takes segment ids natively.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ctxjax.attention.blockwise import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, blockwise_attention
from ctxjax.attention.common import (check_inputs, contract_kwargs, per_shard, target_device_kind,
                                     target_platform, warn_fallback)

SPLASH_BLOCK = 128  # splash's default tile; lengths must be multiples of it
# Splash's fused backward (dQ computed with dK/dV, one pass) up to this many key tiles; a separate dQ pass
# beyond, whose memory does not grow with the number of tiles (see splash_fused).
FUSED_BACKWARD_MAX_KEY_TILES = 4


def index_order_is_position_order(q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    """True (traced bool) iff causal-by-position within segments equals causal-by-index within segments.

    Needs self-attention (same ids and positions on both sides), positions strictly increasing inside each
    segment, and segment ids increasing from one run to the next (so a segment never comes back).
    """
    if q_positions.shape != kv_positions.shape:
        return jnp.asarray(False)
    same_side = jnp.all(q_segment_ids == kv_segment_ids) & jnp.all(q_positions == kv_positions)
    seg_next, seg_prev = q_segment_ids[:, 1:], q_segment_ids[:, :-1]
    increasing = jnp.where(seg_next == seg_prev, q_positions[:, 1:] > q_positions[:, :-1],
                           seg_next > seg_prev)
    return same_side & jnp.all(increasing)


def _one_segment_per_row(segment_ids):
    return jnp.all(segment_ids == segment_ids[:, :1])


def _index_order_fits(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window, causal=True):
    """`index_order_is_position_order`, and with a window also no position gaps inside a segment (PoSE), so
    that a window of W indices is a window of W positions. Non-causal without a window only segments count:
    the same ids on both sides."""
    if not causal and not sliding_window:
        if q_segment_ids.shape != kv_segment_ids.shape:
            return jnp.asarray(False)
        return jnp.all(q_segment_ids == kv_segment_ids)
    fits = index_order_is_position_order(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    if sliding_window:
        same = q_segment_ids[:, 1:] == q_segment_ids[:, :-1]
        fits &= jnp.all(~same | (q_positions[:, 1:] == q_positions[:, :-1] + 1))
    return fits


def _with_fallback(fast_ok, fused, q, k, v, kwargs):
    """Run `fused(q, k, v)` when `fast_ok` holds at run time, blockwise attention otherwise."""
    return lax.cond(fast_ok, lambda q, k, v: fused(q, k, v),
                    lambda q, k, v: blockwise_attention(q, k, v, **kwargs), q, k, v)


def cudnn_unusable(q, k, alibi_slopes, logit_softcap, sliding_window=0, causal=True) -> str | None:
    """Why cuDNN cannot run these inputs where the step is compiled; None when it can."""
    platform = target_platform()
    if platform != "gpu":
        return f"the step is compiled for {platform}, not GPU"
    if alibi_slopes is not None or logit_softcap:
        return "cuDNN takes neither ALiBi slopes nor a logit soft cap"
    if sliding_window and not causal:
        return "cuDNN (jax.nn.dot_product_attention) takes no window to the right: no non-causal window"
    if q.shape[1] != k.shape[1]:
        return "queries and keys differ in length (decoding with a cache)"
    if q.dtype not in (jnp.float16, jnp.bfloat16):
        return f"cuDNN needs float16 or bfloat16, not {q.dtype} (set execution.dtype)"
    if q.shape[-1] > 128 or q.shape[-1] % 8:
        return f"cuDNN needs head_dim <= 128 and a multiple of 8, not {q.shape[-1]}"
    return None


def cudnn_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                    alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=DEFAULT_BLOCK_Q,
                    block_k=DEFAULT_BLOCK_K, causal=True):
    """cuDNN flash attention (GPU, float16/bfloat16, head_dim <= 128, no ALiBi, no soft cap, no non-causal
    window); blockwise otherwise."""
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    kwargs = contract_kwargs(q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
                              sliding_window, logit_softcap, block_q, block_k, causal)
    reason = cudnn_unusable(q, k, alibi_slopes, logit_softcap, sliding_window, causal)
    if reason:
        warn_fallback("cudnn", reason)
        return blockwise_attention(q, k, v, **kwargs)
    # (W - 1, 0): each query sees itself and the W - 1 tokens before it.
    window = (sliding_window - 1, 0) if sliding_window else None
    fused = functools.partial(jax.nn.dot_product_attention, scale=scale, is_causal=bool(causal),
                              local_window_size=window, implementation="cudnn")
    fast_ok = (_index_order_fits(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window,
                                 causal)
               & _one_segment_per_row(q_segment_ids))
    return _with_fallback(fast_ok, fused, q, k, v, kwargs)


def splash_tile(requested: int, length: int) -> int:
    """The tile splash uses for a requested size: a multiple of 128 (TPU lanes) that divides `length` (a
    multiple of 128 itself), as close to `requested` from below as there is."""
    tile = max(SPLASH_BLOCK, min(requested, length) // SPLASH_BLOCK * SPLASH_BLOCK)
    while length % tile:
        tile -= SPLASH_BLOCK
    return tile


def splash_fused(q, k, v, segment_ids, scale, sliding_window=0, logit_softcap=0.0, block_q=SPLASH_BLOCK,
                 block_k=SPLASH_BLOCK, interpret=False, causal=True):
    """Splash attention with causal-by-index (and sliding-window) or, non-causal, full (or symmetric-window)
    masks, segment masks and an optional logit soft cap, in tiles of about `block_q` x `block_k`
    (`splash_tile`); `interpret=True` runs it on CPU for tests."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # TPU-only module; import lazily

    batch, length, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    group = n_heads // n_kv
    if sliding_window:  # W - 1 indices before each query and, non-causal, as many after it
        after = 0 if causal else sliding_window - 1
        head_mask = splash.LocalMask((length, length), window_size=(sliding_window - 1, after), offset=0)
    elif causal:
        head_mask = splash.CausalMask((length, length))
    else:
        head_mask = splash.FullMask((length, length))
    mask = splash.MultiHeadMask([head_mask] * group)
    bq, bk = splash_tile(block_q, length), splash_tile(block_k, length)
    # Forward and backward in the same tiles; larger tiles than splash's default 128 keep the TPU's matrix
    # units busy at long lengths. The fused backward computes dQ beside dK/dV but keeps one dQ partial per key
    # tile (L/bk copies of dQ): compiled for a v5e, a 2-layer d_model-2048 step at 32k tokens needed 11.6 GiB
    # of temporaries with it and 4.4 GiB with a separate dQ pass. So it is fused only over a few key tiles.
    fused_backward = length // bk <= FUSED_BACKWARD_MAX_KEY_TILES
    separate_dq = {} if fused_backward else dict(block_q_dq=bq, block_kv_dq=bk)
    tiles = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                              block_kv_dkv_compute=bk, use_fused_bwd_kernel=fused_backward, **separate_dq)
    kernel = splash.make_splash_mqa_single_device(mask=mask, block_sizes=tiles, interpret=interpret,
                                                  attn_logits_soft_cap=float(logit_softcap) or None)
    # One multi-query kernel per (batch row, K/V head): its query heads share that K/V head, uncopied.
    qg = ((q * jnp.asarray(scale, q.dtype)).reshape(batch, length, n_kv, group, head_dim)
          .transpose(0, 2, 3, 1, 4))
    kg, vg = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def per_row(qr, kr, vr, seg):
        ids = splash.SegmentIds(seg, seg)
        return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(per_row)(qg, kg, vg, segment_ids)  # [B, G, R, L, Dh]
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, n_heads, head_dim)


def splash_unusable(q, k, alibi_slopes) -> str | None:
    """Why splash cannot run these inputs where the step is compiled; None when it can."""
    platform = target_platform()
    if platform != "tpu":
        return f"the step is compiled for {platform}, not TPU"
    kind = target_device_kind()
    if q.dtype == jnp.bfloat16 and kind in ("TPU v2", "TPU v3"):
        return f"libtpu's Mosaic has no bfloat16 matrix multiply on {kind}"
    if alibi_slopes is not None:
        return "splash takes no ALiBi slopes"
    if q.shape[1] != k.shape[1]:
        return "queries and keys differ in length (decoding with a cache)"
    if q.shape[1] % SPLASH_BLOCK:
        return f"length {q.shape[1]} is not a multiple of {SPLASH_BLOCK}"
    return None


def splash_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                     alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=DEFAULT_BLOCK_Q,
                     block_k=DEFAULT_BLOCK_K, causal=True):
    """Pallas splash attention (TPU, lengths multiple of 128, no ALiBi); blockwise otherwise."""
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    kwargs = contract_kwargs(q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
                              sliding_window, logit_softcap, block_q, block_k, causal)
    reason = splash_unusable(q, k, alibi_slopes)
    if reason:
        warn_fallback("splash", reason)
        return blockwise_attention(q, k, v, **kwargs)
    kernel = per_shard(functools.partial(splash_fused, scale=scale, sliding_window=sliding_window,
                                         logit_softcap=logit_softcap, block_q=block_q, block_k=block_k,
                                         causal=bool(causal)),
                       q.shape[0], q.shape[2], k.shape[2])
    fused = lambda q, k, v: kernel(q, k, v, q_segment_ids)  # noqa: E731
    fast_ok = _index_order_fits(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window,
                                causal)
    return _with_fallback(fast_ok, fused, q, k, v, kwargs)


# The fused kernel of each platform that has one: what `auto` picks there for self-attention, and what
# Ulysses runs over each device's heads.
FUSED_KERNELS = {"gpu": cudnn_attention, "tpu": splash_attention}
