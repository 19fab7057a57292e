"""`auto`: the best kernel for the platform, the active mesh and the length, decided at trace time.

The platform is the one the step is compiled for (`target_platform`: the mesh's devices), so a TPU topology
compiled on a CPU host gets splash."""

from __future__ import annotations

import jax

from ctxjax.attention.blockwise import blockwise_attention
from ctxjax.attention.common import target_platform
from ctxjax.attention.cpu import cpu_attention, single_device
from ctxjax.attention.fused import FUSED_KERNELS
from ctxjax.attention.ring import SEQUENCE_AXIS, ring_attention
from ctxjax.attention.xla import xla_attention

# Up to this many scores per head the whole matrix is small and one einsum beats the block loops. On the
# 2-core CPU of docs/benchmarks.md the demo model's train step is faster with xla at 128 tokens and with
# blockwise at 512 (`bench/train_step.py`); at 4k blockwise is 15x faster. Decoding (one query row) stays on
# xla. Longer sequences on CPU go to the fused `cpu` kernel, which itself runs blockwise where it cannot.
XLA_MAX_SCORES = 256 * 256


def choose_kernel(q_length: int, kv_length: int, backend: str | None = None):
    """The kernel `auto` uses for these lengths on `backend` (default: the platform the step is compiled for)
    under the active mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if (not mesh.empty and SEQUENCE_AXIS in mesh.axis_names and mesh.shape[SEQUENCE_AXIS] > 1
            and q_length == kv_length):
        return ring_attention
    backend = backend or target_platform()
    # The fused kernels attend a sequence to itself; a prefill into a longer KV cache is not one.
    if q_length == kv_length and backend in FUSED_KERNELS:
        return FUSED_KERNELS[backend]
    if q_length * kv_length <= XLA_MAX_SCORES:
        return xla_attention
    # The fused CPU kernel runs on one device; a sharded step without a sequence axis runs blockwise.
    return cpu_attention if backend == "cpu" and single_device() else blockwise_attention


def auto_attention(q, k, v, **kwargs):
    """The kernel contract of `ctxjax.attention`, run by `choose_kernel(...)`."""
    return choose_kernel(q.shape[1], k.shape[1])(q, k, v, **kwargs)
