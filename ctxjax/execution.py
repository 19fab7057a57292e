"""How a model runs: the attention kernel and its tiles, rematerialisation, scan unrolling, the compute dtype.

None of it changes what the model computes beyond float rounding, so none of it is stored with a model: a run
may resume, an evaluation run and an export be written with any of these settings. The model takes it
beside its ModelConfig:
`Transformer(cfg, execution=ExecutionConfig(attention="blockwise", dtype="bfloat16"))`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from ctxjax import attention as attention_lib
from ctxjax.attention.common import ATTENTION_RESIDUALS
from ctxjax.config import DTYPES
from ctxjax.dataclass_config import replace_fields
from ctxjax.errors import InputError
# Rematerialisation of each block: what the backward pass keeps instead of recomputing.
REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the cheap rest
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
    # Recompute the block, except the attention of the block kernels (blockwise, cpu, ring): their output and
    # log-sum-exp are kept, O(L) per layer, so the costliest part of a long-context layer runs forward once.
    "attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_RESIDUALS),
}


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    attention: str = "xla"  # kernel name in ctxjax.attention
    # Tile of the block-based kernels (blockwise, ring, and the fused kernels' fallback): queries x keys per
    # step of the online softmax. Larger tiles mean fewer, bigger matmuls; the default was fastest on CPU.
    attention_block_q: int = 512
    attention_block_k: int = 512
    remat: str = "none"  # rematerialisation policy of each block, one of REMAT_POLICIES
    # Layers per iteration of the scan over layers. Unrolling drops the scan's stacked per-layer buffers (on a
    # 2-core CPU a 4-layer model trains ~15-20% faster fully unrolled); compile time grows with it.
    scan_unroll: int = 1
    dtype: str = "float32"  # compute dtype of activations (the parameters keep ModelConfig.param_dtype)

    def __post_init__(self):
        def fail(message: str):
            raise InputError(f"ExecutionConfig: {message}")

        if self.attention not in attention_lib.KERNELS:
            fail(f"attention={self.attention!r} is unknown; use one of {sorted(attention_lib.KERNELS)}")
        for name in ("attention_block_q", "attention_block_k", "scan_unroll"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{name}={value!r} must be a positive integer")
        if self.remat not in REMAT_POLICIES:
            fail(f"remat={self.remat!r} is unknown; use one of {tuple(REMAT_POLICIES)}")
        if self.dtype not in DTYPES:
            fail(f"dtype={self.dtype!r} is unknown; use one of {DTYPES}")

    def replace(self, **changes: Any) -> "ExecutionConfig":
        return replace_fields(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

