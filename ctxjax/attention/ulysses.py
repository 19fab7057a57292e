"""Ulysses attention: sequence parallelism over the `sequence` mesh axis by exchanging heads for length.

Each of the S devices of the `sequence` axis holds L / S tokens of every head. One all-to-all gives each
device the whole length of H / S heads (DeepSpeed-Ulysses, Jacobs et al. 2023); a local kernel attends over
the full sequence there, and a second all-to-all brings the output back to L / S tokens of every head. The
backward pass is the same two exchanges reversed (the transpose of an all-to-all is an all-to-all), so any
local kernel's own VJP serves. Per device: the full length of a few heads, so activations are O(L x H / S)
and the local kernel's own memory (linear for the block kernels).

Compared with `ring`: two all-to-alls of q, k, v and the output per layer instead of S - 1 hops of k, v;
no causal imbalance (every device sees all positions of its heads, so no zig-zag order is needed); the
local kernel can be a fused one (splash on TPU, cuDNN on GPU), which ring's blockwise inner loop cannot;
but S is bounded by the heads: each tensor shard's query heads must split into S groups, and its key/value
heads too, or be copied up to S (GQA with fewer K/V heads than S: each K/V head is repeated S / G times
before the exchange, and the copies' gradients are summed by autodiff).

Positions and segment ids are gathered whole on every device (O(L) ints), so packing, PoSE's shifted
positions, windows and ALiBi (each device takes the slopes of the heads it holds) work as in every kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from ctxjax.errors import InputError
from ctxjax.attention.blockwise import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, blockwise_attention
from ctxjax.attention.common import HEAD_AXIS, check_inputs, target_platform
from ctxjax.attention.fused import FUSED_KERNELS
from ctxjax.attention.ring import SEQUENCE_AXIS, sequence_layout


def local_kernel(platform: str):
    """The kernel each device runs over its heads' full length: the platform's fused kernel (which falls
    back to blockwise, with a warning, where it cannot run), blockwise elsewhere."""
    return FUSED_KERNELS.get(platform, blockwise_attention)


def kv_copies(local_heads: int, local_kv_heads: int, n_shards: int) -> int:
    """How many times each K/V head is repeated so that the exchange splits whole query groups; raises a
    one-line error when the heads cannot split over the axis."""
    if local_heads % n_shards == 0:
        if local_kv_heads % n_shards == 0:
            return 1
        if n_shards % local_kv_heads == 0:
            return n_shards // local_kv_heads
    raise InputError(
        f"ulysses attention splits heads over the {SEQUENCE_AXIS!r} axis ({n_shards}): each tensor shard's "
        f"{local_heads} query heads must be a multiple of it, and its {local_kv_heads} key/value heads a "
        f"multiple or a divisor of it; use a smaller sequence axis, or execution.attention='ring'")


def ulysses_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                      alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=DEFAULT_BLOCK_Q,
                      block_k=DEFAULT_BLOCK_K, causal=True):
    """The kernel contract of `ctxjax.attention`, with the length sharded over the `sequence` mesh axis."""
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    mesh, n_shards, batch_axes, head_axis = sequence_layout("ulysses", q, k)
    n_heads, n_kv = q.shape[2], k.shape[2]
    head_ways = mesh.shape[HEAD_AXIS] if head_axis else 1
    copies = kv_copies(n_heads // head_ways, n_kv // head_ways, n_shards)
    kernel = functools.partial(local_kernel(target_platform()), scale=scale, sliding_window=sliding_window,
                               logit_softcap=logit_softcap, block_q=block_q, block_k=block_k, causal=causal)

    def heads_to_length(x):  # [b, L/S, h, D] -> [b, L, h/S, D]
        return lax.all_to_all(x, SEQUENCE_AXIS, split_axis=2, concat_axis=1, tiled=True)

    def length_to_heads(x):  # [b, L, h/S, D] -> [b, L/S, h, D]
        return lax.all_to_all(x, SEQUENCE_AXIS, split_axis=1, concat_axis=2, tiled=True)

    def whole(ids):  # [b, L/S] -> [b, L]
        return lax.all_gather(ids, SEQUENCE_AXIS, axis=1, tiled=True)

    def local(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes):
        if copies > 1:
            k, v = jnp.repeat(k, copies, axis=2), jnp.repeat(v, copies, axis=2)
        slopes = None
        if alibi_slopes is not None:  # the slopes of the query heads this device holds after the exchange
            per_shard = alibi_slopes.shape[0] // n_shards
            slopes = lax.dynamic_slice_in_dim(alibi_slopes, lax.axis_index(SEQUENCE_AXIS) * per_shard,
                                              per_shard)
        out = kernel(heads_to_length(q), heads_to_length(k), heads_to_length(v),
                     q_segment_ids=whole(q_segment_ids), kv_segment_ids=whole(kv_segment_ids),
                     q_positions=whole(q_positions), kv_positions=whole(kv_positions), alibi_slopes=slopes)
        return length_to_heads(out)

    tokens, ids = P(batch_axes, SEQUENCE_AXIS, head_axis, None), P(batch_axes, SEQUENCE_AXIS)
    slopes_spec = None if alibi_slopes is None else P(head_axis)
    sharded = jax.shard_map(local, mesh=mesh,
                            in_specs=(tokens, tokens, tokens, ids, ids, ids, ids, slopes_spec),
                            out_specs=tokens, check_vma=False)
    return sharded(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes)
