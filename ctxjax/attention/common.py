"""What every kernel shares: input checks and the grouped, head-major layout the block loops work in."""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from ctxjax.errors import InputError

logger = logging.getLogger("ctxjax.attention")

# Mesh axes the kernels that run per shard (ring, and the Mosaic/FFI calls XLA cannot partition) split over.
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"

# The values the block kernels' backward passes need from their forward (output and log-sum-exp) carry this
# name, so that `ModelConfig(remat="attention")` keeps them and a rematerialised layer does not run the
# attention forward again: O(L) floats per layer instead of a second pass over every tile.
ATTENTION_RESIDUALS = "attention_residuals"

# Padded keys get this position: no real query position (< 2**31 - 1) reaches it, so they are never visible.
KEY_PAD_POSITION = jnp.iinfo(jnp.int32).max
# Padded queries get this position: it never raises a block's largest position, so skipping is unaffected.
QUERY_PAD_POSITION = -1


def check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window=0, logit_softcap=0.0, causal=True):
    """Raise a one-line ValueError naming the fix when shapes break the kernel contract."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise InputError(f"q, k, v must be [batch, length, heads, head_dim]; got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    batch, q_len, n_heads, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise InputError(f"k and v must be [{batch}, kv_length, kv_heads, {head_dim}]; got {k.shape}, "
                         f"{v.shape}")
    n_kv = k.shape[2]
    if n_heads % n_kv:
        raise InputError(f"query heads ({n_heads}) must be a multiple of key/value heads ({n_kv})")
    for name, x, length in (
        ("q_segment_ids", q_segment_ids, q_len),
        ("q_positions", q_positions, q_len),
        ("kv_segment_ids", kv_segment_ids, k.shape[1]),
        ("kv_positions", kv_positions, k.shape[1]),
    ):
        if x.shape != (batch, length):
            raise InputError(f"{name} must be [{batch}, {length}]; got {x.shape}")
    if not isinstance(sliding_window, int) or sliding_window < 0:
        raise InputError(f"sliding_window must be an int >= 0 (0: no window); got {sliding_window!r}")
    if not isinstance(logit_softcap, (int, float)) or not logit_softcap >= 0:
        raise InputError("logit_softcap must be a number >= 0 (0: none; Gemma 2 uses 50); got "
                         f"{logit_softcap!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise InputError(f"causal must be True (decoders) or False (encoders); got {causal!r}")
    if alibi_slopes is not None and jnp.shape(alibi_slopes) != (n_heads,):
        raise InputError(f"alibi_slopes must be [{n_heads}] (one per query head); got "
                         f"{jnp.shape(alibi_slopes)}")


def contract_kwargs(q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
                    sliding_window, logit_softcap, block_q, block_k, causal=True):
    """A kernel's keyword arguments as one dict, for the fused kernels to pass on to their blockwise
    fallback."""
    return dict(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
                kv_positions=kv_positions, scale=scale, alibi_slopes=alibi_slopes,
                sliding_window=sliding_window, logit_softcap=logit_softcap, block_q=block_q, block_k=block_k,
                causal=causal)


def visible(same_segment, distance, window, causal, kv_positions=None):
    """The contract's mask from pairwise `same_segment` and `distance` = pos_i - pos_j (any broadcast shape).

    Causal: 0 <= distance (< window). Non-causal: |distance| < window, or every key without a window; given
    `kv_positions` (broadcast like `distance`), keys at KEY_PAD_POSITION stay hidden then too, since padding
    is hidden from causal queries only by its position's being after theirs."""
    if causal:
        mask = same_segment & (distance >= 0)
        return mask & (distance < window) if window else mask
    mask = same_segment if kv_positions is None else same_segment & (kv_positions != KEY_PAD_POSITION)
    # -window < d < window, without abs: d = -1 - KEY_PAD_POSITION is int32's minimum, whose abs wraps.
    return mask & (distance < window) & (distance > -window) if window else mask


def alibi_distance(distance, causal):
    """The distance ALiBi's bias scales: pos_i - pos_j (causal: never negative where visible) or |pos_i -
    pos_j| (non-causal: symmetric, as in MosaicBERT and jina-bert), as float32."""
    distance = distance.astype(jnp.float32)
    return distance if causal else jnp.abs(distance)


class Grouped(NamedTuple):
    """Inputs in the layout of the block loops, lengths padded to whole blocks.

    q [B, G, Lq, R, Dh] already multiplied by the scale (R = query heads per K/V head); k, v [B, G, Lk, Dh];
    segment ids and positions [B, L] int32; slopes [G, R] float32 or None.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    q_segment_ids: jax.Array
    kv_segment_ids: jax.Array
    q_positions: jax.Array
    kv_positions: jax.Array
    slopes: jax.Array | None


def block_size(requested: int, length: int) -> int:
    """The block actually used: the requested size, or the whole length when that is shorter."""
    if not isinstance(requested, int) or requested < 1:
        raise InputError(f"block sizes must be positive ints; got {requested!r}")
    return min(requested, length)


def _pad_length(x, length, value):
    """Pad axis 1 of x up to `length` with `value` ('edge' repeats the last entry)."""
    x = jnp.asarray(x)
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    if value == "edge":
        return jnp.pad(x, widths, mode="edge")
    return jnp.pad(x, widths, constant_values=value)


def repeat(n, body, init):
    """`for i in range(n): carry = body(i, carry)` as a `lax.while_loop`.

    Not `lax.fori_loop`: with static bounds that becomes a scan, and inside the model's scan over layers
    XLA then planned superlinear memory for the block loops (1.6 GiB instead of 0.26 GiB for four layers
    at 8k tokens). The kernels differentiate through their own VJPs, so they need no scan.
    """
    def step(carry):
        i, value = carry
        return i + 1, body(i, value)

    return lax.while_loop(lambda carry: carry[0] < n, step, (jnp.int32(0), init))[1]


def keep_for_backward(out, lse):
    """Name a block kernel's output and log-sum-exp as ATTENTION_RESIDUALS for rematerialisation policies."""
    return checkpoint_name(out, ATTENTION_RESIDUALS), checkpoint_name(lse, ATTENTION_RESIDUALS)


def round_up(length: int, block: int) -> int:
    return -(-length // block) * block


def to_grouped(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
               q_block, kv_block) -> Grouped:
    """Scale q, split heads into (kv head, group), move heads before length, pad lengths to whole blocks.

    Padded entries keep the segment id of the last real token (so block segment ranges do not widen) and get
    positions that make padded keys invisible and padded queries irrelevant (their rows are cut off after).
    """
    batch, q_len, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    q_pad, kv_pad = round_up(q_len, q_block), round_up(k.shape[1], kv_block)
    # Scaling q before the kernel lets autodiff carry the scale's own gradient, whatever it is.
    q = (q * jnp.asarray(scale, q.dtype)).reshape(batch, q_len, n_kv, n_heads // n_kv, head_dim)
    q = _pad_length(q, q_pad, 0).transpose(0, 2, 1, 3, 4)
    k = _pad_length(k, kv_pad, 0).transpose(0, 2, 1, 3)
    v = _pad_length(v, kv_pad, 0).transpose(0, 2, 1, 3)
    slopes = None
    if alibi_slopes is not None:
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(n_kv, n_heads // n_kv)
    return Grouped(
        q, k, v,
        _pad_length(q_segment_ids.astype(jnp.int32), q_pad, "edge"),
        _pad_length(kv_segment_ids.astype(jnp.int32), kv_pad, "edge"),
        _pad_length(q_positions.astype(jnp.int32), q_pad, QUERY_PAD_POSITION),
        _pad_length(kv_positions.astype(jnp.int32), kv_pad, KEY_PAD_POSITION),
        slopes,
    )


def from_grouped(out, q_len):
    """[B, G, Lq_padded, R, Dh] -> [B, Lq, H, Dh]."""
    batch, n_kv, _, group, head_dim = out.shape
    return out[:, :, :q_len].transpose(0, 2, 1, 3, 4).reshape(batch, q_len, n_kv * group, head_dim)


def target_platform() -> str:
    """The platform the step is compiled for: that of the active mesh's devices, else jax's default backend.

    Not simply the default backend: a step compiled on a CPU host for a TPU topology (`ctxjax plan`) must
    choose the TPU kernels, and the mesh (`jax.set_mesh`) is what knows its devices."""
    device = _target_device()
    return device.platform if device is not None else jax.default_backend()


def target_device_kind() -> str:
    """The device kind the step is compiled for ("TPU v5 lite", "cpu", ...), as `target_platform` finds it."""
    device = _target_device()
    return device.device_kind if device is not None else jax.devices()[0].device_kind


def _target_device():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else getattr(mesh, "abstract_device", None)


@functools.cache
def warn_fallback(kernel: str, reason: str) -> None:
    """A requested kernel that runs as `blockwise` says so, once per process and reason: the same model is
    traced for every stage and layer kind."""
    logger.warning("attention %r runs as 'blockwise': %s", kernel, reason)


def dividing_axes(mesh, names, size):
    """The axes among `names` in the mesh whose sizes multiply to a divisor of `size` (the rest replicate)."""
    axes, product = [], 1
    for name in names:
        if name in mesh.axis_names and size % (product * mesh.shape[name]) == 0:
            axes.append(name)
            product *= mesh.shape[name]
    return tuple(axes) or None


def per_shard(kernel, batch: int, n_heads: int, n_kv: int):
    """`kernel(q, k, v, segment_ids)` run on each shard of the active mesh: batch over the data/fsdp axes,
    heads over the tensor axis (where they divide), the length whole. Custom calls (Mosaic kernels, the FFI)
    have no partitioning rule: unwrapped under a multi-device mesh, Mosaic fails to compile ("cannot be
    automatically partitioned") and an FFI call would gather every input."""
    mesh = jax.sharding.get_abstract_mesh()
    # Inside a shard_map over every axis (e.g. Ulysses' local kernel) the inputs are one shard already.
    if mesh.empty or mesh.size == 1 or set(mesh.manual_axes) == set(mesh.axis_names):
        return kernel
    batch_axes = dividing_axes(mesh, BATCH_AXES, batch)
    head_axis = dividing_axes(mesh, (HEAD_AXIS,), int(np.gcd(n_heads, n_kv)))  # whole groups of query heads
    tokens, ids = P(batch_axes, None, head_axis, None), P(batch_axes, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(tokens, tokens, tokens, ids), out_specs=tokens,
                         check_vma=False)
