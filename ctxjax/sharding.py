"""Device meshes and the one table that maps the model's logical axes to mesh axes.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism that also shards parameters and
optimizer state), `tensor` (heads / MLP / vocabulary split across devices), `sequence` (the length axis of
activations, for ring attention). Model code only names logical axes; `LOGICAL_RULES` below is the single
place where they meet the mesh, and a config may replace it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ctxjax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes, first match wins; a mesh axis already used by an earlier dimension of the same
# array is skipped (so activations [batch, length, embed] shard batch over fsdp and leave embed whole,
# while parameters [embed, mlp] shard embed over fsdp).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def mesh_shape(sizes: dict[str, int], n_devices: int) -> tuple[int, ...]:
    """Resolve one -1 entry so the product equals the device count; one-line errors otherwise."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise InputError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    fill = [i for i, s in enumerate(shape) if s == -1]
    if len(fill) > 1:
        raise InputError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise InputError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if fill:
        if n_devices % known:
            raise InputError(f"mesh {dict(zip(MESH_AXES, shape))} cannot fill {n_devices} devices: "
                             f"{n_devices} is not divisible by {known}")
        shape[fill[0]] = n_devices // known
    if math.prod(shape) != n_devices:
        raise InputError(f"mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices but {n_devices} "
                         "are available; make the product match or set one axis to -1")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(sizes, len(devices))
    try:  # topology-aware placement on TPU pods
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # simulated or unusual devices: plain order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide their dimension (e.g. 2 KV heads on a tensor axis of 4): that
    dimension is replicated instead of failing to compile."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept, size = [], 1
        for name in names:
            if dim % (size * mesh.shape[name]) == 0:
                kept.append(name)
                size *= mesh.shape[name]
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def strip_boxes(tree):
    """Leaves of flax's logical-partitioning boxes without applying their sharding constraint (which would
    run eagerly, outside jit, under an active mesh)."""
    return jax.tree.map(lambda x: (x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata)
                                   else x),
                        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def logical_shardings(abstract_tree, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedShardings for a pytree whose leaves may be flax LogicallyPartitioned boxes (from init under
    eval_shape); plain leaves are replicated. Returns a pytree of the unboxed structure."""
    specs = nn.get_partition_spec(abstract_tree)
    shapes = strip_boxes(abstract_tree)

    def to_sharding(spec, leaf):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec else PartitionSpec()
        return NamedSharding(mesh, _divisible_spec(mesh_spec, tuple(leaf.shape), mesh))

    return jax.tree.map(to_sharding, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches [B, L]: rows over data x fsdp, length over sequence."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, "sequence"))
