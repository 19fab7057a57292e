"""Ring attention: sequence parallelism over the `sequence` mesh axis, blockwise attention inside each shard.

Each device keeps its shard of queries and passes its key/value shard (with their segment ids and
positions) to the next device, S - 1 times; after every hop it continues the online softmax of its queries
over the shard it now holds (`blockwise.forward_pass`). The backward pass (custom VJP) sends the key/value
shards round the ring once more, each with a dK/dV accumulator that collects every device's contribution and
arrives home after S hops. Per device, memory is O(L / S) plus one score block.

The mesh comes from the context: call inside `with jax.set_mesh(mesh):` (or under a jit whose abstract mesh
has the axis). Batch is split over the `data`/`fsdp` axes and heads over `tensor` when those axes exist and
divide the shapes; length over `sequence`.

Load balance. Causality is by position, so the kernel does not care in which order tokens sit along the
length: a hidden key block is skipped wherever it lives. With plain order the last shard does S times the
work of the first. `zigzag_order` gives the order in which shard i holds chunks i and 2S-1-i of the sequence
(equal causal work per shard); `zigzag_batch` permutes tokens, positions, segment ids, targets and weights
with it once when the batch is made (not in every layer), and the model computes the same loss. The trainer
does so whenever the mesh has a sequence axis (`ring_zigzag`). Non-causal attention (`causal=False`) is
balanced in either order: every shard sees every other.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from ctxjax.errors import InputError
from ctxjax.attention import blockwise
from ctxjax.attention.common import (BATCH_AXES, HEAD_AXIS, block_size, check_inputs, dividing_axes,
                                     from_grouped, keep_for_backward, repeat, to_grouped)

SEQUENCE_AXIS = "sequence"


def _ring_permutation(n_shards):
    return [(i, (i + 1) % n_shards) for i in range(n_shards)]


def _with_keys(g, kv):
    k, v, kv_segment_ids, kv_positions = kv
    return g._replace(k=k, v=v, kv_segment_ids=kv_segment_ids, kv_positions=kv_positions)


def _keys(g):
    return g.k, g.v, g.kv_segment_ids, g.kv_positions


# `rules` = (sliding window, logit soft cap, causal): the static arguments the blockwise passes take after the
# blocks.
def _ring_forward_state(g, block_q, block_k, rules, n_shards):
    def hop(_, carry):
        state, kv = carry
        state = blockwise.forward_pass(state, _with_keys(g, kv), block_q, block_k, *rules)
        return state, lax.ppermute(kv, SEQUENCE_AXIS, _ring_permutation(n_shards))

    state, kv = repeat(n_shards - 1, hop, (blockwise.init_state(g), _keys(g)))
    return blockwise.forward_pass(state, _with_keys(g, kv), block_q, block_k, *rules)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _ring_grouped(g, block_q, block_k, rules, n_shards):
    out, _ = blockwise.finish(_ring_forward_state(g, block_q, block_k, rules, n_shards), g.q.dtype)
    return out


def _ring_grouped_fwd(g, block_q, block_k, rules, n_shards):
    out, lse = keep_for_backward(*blockwise.finish(_ring_forward_state(g, block_q, block_k, rules, n_shards),
                                                   g.q.dtype))
    return out, (g, out, lse)


def _ring_grouped_bwd(block_q, block_k, rules, n_shards, residuals, d_out):
    g, out, lse = residuals
    delta = blockwise.row_delta(out, d_out)

    def hop(_, carry):
        dq, d_slopes, kv, dkv = carry
        dq_part, dk_part, dv_part, d_slopes_part = blockwise.backward_pass(
            _with_keys(g, kv), lse, delta, d_out, block_q, block_k, *rules)
        dkv = (dkv[0] + dk_part, dkv[1] + dv_part)
        # dK/dV travel with their keys; after n_shards hops both are back on the shard that owns them.
        kv, dkv = lax.ppermute((kv, dkv), SEQUENCE_AXIS, _ring_permutation(n_shards))
        if d_slopes is not None:
            d_slopes = d_slopes + d_slopes_part
        return dq + dq_part, d_slopes, kv, dkv

    zeros_kv = jnp.zeros(g.k.shape, jnp.float32)
    d_slopes = None if g.slopes is None else jnp.zeros(g.slopes.shape, jnp.float32)
    init = (jnp.zeros(g.q.shape, jnp.float32), d_slopes, _keys(g), (zeros_kv, zeros_kv))
    dq, d_slopes, _, (dk, dv) = repeat(n_shards, hop, init)
    return (g._replace(q=dq.astype(g.q.dtype), k=dk.astype(g.k.dtype), v=dv.astype(g.v.dtype),
                       q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                       slopes=d_slopes),)


_ring_grouped.defvjp(_ring_grouped_fwd, _ring_grouped_bwd)


class SequenceLayout(NamedTuple):
    """How a sequence-parallel kernel splits its inputs over the active mesh: the length over `sequence`
    (n_shards ways), batch over the data/fsdp axes and heads over `tensor` where they divide."""

    mesh: Any
    n_shards: int
    batch_axes: tuple | None
    head_axis: tuple | None


def sequence_layout(kernel: str, q, k) -> SequenceLayout:
    """The layout of the active mesh, or a one-line error when there is no sequence axis, queries and keys
    differ in length (decoding with a cache) or the length does not split over the axis."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or SEQUENCE_AXIS not in mesh.axis_names:
        raise InputError(f"{kernel} attention needs an active mesh with a {SEQUENCE_AXIS!r} axis: call it "
                         f"inside `with jax.set_mesh(mesh):`, or use attention='blockwise' on one device")
    n_shards = mesh.shape[SEQUENCE_AXIS]
    batch, length, n_heads, _ = q.shape
    if k.shape[1] != length:
        raise InputError(f"{kernel} attention needs queries and keys of one length (got {length} and "
                         f"{k.shape[1]}); use 'blockwise' or 'xla' for decoding with a cache")
    if length % n_shards:
        raise InputError(f"length {length} must be a multiple of the {SEQUENCE_AXIS!r} axis size {n_shards}")
    return SequenceLayout(mesh, n_shards, dividing_axes(mesh, BATCH_AXES, batch),
                          dividing_axes(mesh, (HEAD_AXIS,), int(np.gcd(n_heads, k.shape[2]))))


def ring_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                   alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=blockwise.DEFAULT_BLOCK_Q,
                   block_k=blockwise.DEFAULT_BLOCK_K, causal=True):
    """The kernel contract of `ctxjax.attention`, with the length sharded over the `sequence` mesh axis."""
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    mesh, n_shards, batch_axes, head_axis = sequence_layout("ring", q, k)
    length = q.shape[1]
    tokens, ids = P(batch_axes, SEQUENCE_AXIS, head_axis, None), P(batch_axes, SEQUENCE_AXIS)
    local_length = length // n_shards
    bq, bk = block_size(block_q, local_length), block_size(block_k, local_length)

    def local(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes):
        g = to_grouped(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
                       bq, bk)
        rules = (sliding_window, float(logit_softcap), bool(causal))
        return from_grouped(_ring_grouped(g, bq, bk, rules, n_shards), local_length)

    slopes_spec = None if alibi_slopes is None else P(head_axis)
    sharded = jax.shard_map(local, mesh=mesh,
                            in_specs=(tokens, tokens, tokens, ids, ids, ids, ids, slopes_spec),
                            out_specs=tokens, check_vma=False)
    return sharded(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes)


def zigzag_order(length: int, n_shards: int) -> np.ndarray:
    """Token order that balances causal work: shard i holds chunks i and 2*n_shards-1-i of 2*n_shards chunks.

    `x[:, zigzag_order(L, S)]` reorders a batch; `np.argsort(order)` undoes it.
    """
    if length % (2 * n_shards):
        raise InputError(f"zig-zag order needs a length that is a multiple of 2 * {n_shards}; got {length}")
    chunks = np.arange(length).reshape(2 * n_shards, length // (2 * n_shards))
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * n_shards - 1 - i]])
                           for i in range(n_shards)])


def zigzag_batch(batch: dict, n_shards: int) -> dict:
    """Every [B, L] field of a batch in `zigzag_order`: tokens, positions, segment ids, targets and weights
    move together, and the loss (a weighted sum over tokens) is unchanged."""
    order = zigzag_order(next(iter(batch.values())).shape[1], n_shards)
    return {key: value[:, order] for key, value in batch.items()}
