"""`cpu`: fused flash attention for XLA:CPU, the C++ kernel in `cpu_kernel.cc` called through the XLA FFI.

On CPU the pure-JAX `blockwise` kernel is limited by XLA running each tile's matmuls and softmax passes as
separate operations; this kernel keeps a tile's scores in cache from one matmul through the softmax to the
next (docs/benchmarks.md has the numbers). It takes the whole contract (segments, positions, ALiBi, GQA
without copies, sliding windows, soft caps) with head_dim a multiple of 16, on a single device, and computes
in float32 (bfloat16 and float16 inputs are upcast, the output cast back). Anything else, another platform, or
a machine where the kernel cannot be built, runs `blockwise` instead (with a warning saying why), so a config
naming `cpu` still runs everywhere.

The kernel is compiled on first use with the system's C++ compiler (`$CXX`, else `c++`; a few seconds) for
this machine's instruction set, and cached under `$CTXJAX_CACHE` (default `~/.cache/ctxjax`) by source,
compiler flags, jax version and CPU, so later processes load it at once. `CTXJAX_CPU_KERNEL=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.attention.blockwise import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, blockwise_attention, row_delta
from ctxjax.attention.common import (check_inputs, contract_kwargs, from_grouped, keep_for_backward, round_up,
                                    target_platform, to_grouped, warn_fallback)

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernel.cc")
LANES = 16  # the kernel's vector width in floats: head_dim and key tiles are multiples of it
# Tiles: about 64 query rows (positions x query heads per K/V head) by 256 keys keep a tile's scores,
# probabilities and gradients (3 x 64 KiB) in a core's L2 cache; larger or smaller tiles were slower at 4k and
# 16k.
TILE_ROWS = 64
TILE_K = 256
FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)  # computed in float32
FORWARD, BACKWARD = "ctxjax_cpu_attention_forward", "ctxjax_cpu_attention_backward"


def _cache_dir() -> Path:
    return Path(os.environ.get("CTXJAX_CACHE") or Path.home() / ".cache" / "ctxjax")


def _cpu_signature() -> str:
    """What -march=native compiles for: a library built on another CPU (shared home directory) is not
    reused."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build(compiler: str, arch_flags: list[str]) -> Path:
    flags = ["-O3", *arch_flags, "-std=c++17", "-shared", "-fPIC", "-w", "-isystem", jax.ffi.include_dir()]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *flags, jax.__version__, _cpu_signature()])
                         .encode()).hexdigest()[:16]
    library = _cache_dir() / f"cpu_attention-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Build aside, then rename: safe across processes.
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                       text=True)
        os.replace(built, library)
    return library


@functools.cache
def kernel_available() -> bool:
    """Build (or load from the cache) and register the kernel once per process; False, with a warning saying
    why, when this machine cannot build it."""
    if os.environ.get("CTXJAX_CPU_KERNEL", "1") == "0":
        return False
    compiler = os.environ.get("CXX", "c++")
    error = None
    for arch_flags in (["-march=native"], []):  # some compilers (Apple clang on arm64) reject -march=native
        try:
            library = ctypes.cdll.LoadLibrary(str(_build(compiler, arch_flags)))
            break
        except (OSError, subprocess.CalledProcessError) as e:
            error = getattr(e, "stderr", None) or str(e)
    else:
        last_line = (error or "").strip().splitlines()[-1:] or ["no message"]
        logger.warning("attention 'cpu' runs as 'blockwise': building %s with %r failed (%s); install a C++ "
                       "compiler or set CXX", SOURCE.name, compiler, last_line[0][:200])
        return False
    jax.ffi.register_ffi_target(FORWARD, jax.ffi.pycapsule(library.CtxjaxAttentionForward), platform="cpu")
    jax.ffi.register_ffi_target(BACKWARD, jax.ffi.pycapsule(library.CtxjaxAttentionBackward), platform="cpu")
    return True


def single_device() -> bool:
    """The FFI call has no sharding rule: under a multi-device mesh the partitioner would gather every
    input."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.empty or mesh.size == 1


def unusable(q, k) -> str | None:
    """Why `cpu_attention` cannot run the fused kernel for these inputs (decided at trace time); None when it
    can. A kernel that cannot be built has said why already (`kernel_available`)."""
    platform = target_platform()
    if platform != "cpu":
        return f"the step is compiled for {platform}, not CPU"
    if q.dtype not in FLOATS or k.dtype not in FLOATS:
        return f"it takes float32, bfloat16 or float16, not {q.dtype}"
    if q.shape[-1] % LANES:
        return f"head_dim {q.shape[-1]} is not a multiple of {LANES}"
    if not single_device():
        return "the mesh has several devices (use 'ring' or 'blockwise')"
    return None if kernel_available() else "the kernel could not be built"


def usable(q, k) -> bool:
    """Whether `cpu_attention` runs the fused kernel for these inputs (decided at trace time)."""
    return unusable(q, k) is None


def _attributes(g, tile_q, tile_k, window, softcap, causal):
    return dict(tile_q=np.int64(tile_q), tile_k=np.int64(tile_k), window=np.int64(window),
                softcap=np.float32(softcap), alibi=np.int64(g.slopes is not None), causal=np.int64(causal))


def _slopes(g):
    return g.slopes if g.slopes is not None else jnp.zeros(g.q.shape[1:2] + g.q.shape[3:4], jnp.float32)


def _index_args(g):
    return g.q_segment_ids, g.kv_segment_ids, g.q_positions, g.kv_positions


# `rules` = (sliding window, logit soft cap, causal), as in blockwise.
def _forward(g, tile_q, tile_k, rules):
    shapes = (jax.ShapeDtypeStruct(g.q.shape, jnp.float32), jax.ShapeDtypeStruct(g.q.shape[:-1], jnp.float32))
    call = jax.ffi.ffi_call(FORWARD, shapes, vmap_method="sequential")
    return call(g.q, g.k, g.v, *_index_args(g), _slopes(g), **_attributes(g, tile_q, tile_k, *rules))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _fused(g, tile_q, tile_k, rules):
    return _forward(g, tile_q, tile_k, rules)[0]


def _fused_fwd(g, tile_q, tile_k, rules):
    out, lse = keep_for_backward(*_forward(g, tile_q, tile_k, rules))
    return out, (g, out, lse)


def _fused_bwd(tile_q, tile_k, rules, residuals, d_out):
    g, out, lse = residuals
    slopes = _slopes(g)
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (g.q, g.k, g.v, slopes))
    call = jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")
    dq, dk, dv, d_slopes = call(g.q, g.k, g.v, *_index_args(g), slopes, lse, row_delta(out, d_out),
                                d_out.astype(jnp.float32), **_attributes(g, tile_q, tile_k, *rules))
    return (g._replace(q=dq, k=dk, v=dv, q_segment_ids=None, kv_segment_ids=None, q_positions=None,
                       kv_positions=None, slopes=None if g.slopes is None else d_slopes),)


_fused.defvjp(_fused_fwd, _fused_bwd)


def cpu_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
                  alibi_slopes=None, sliding_window=0, logit_softcap=0.0, block_q=DEFAULT_BLOCK_Q,
                  block_k=DEFAULT_BLOCK_K, causal=True):
    """The fused CPU kernel (head_dim a multiple of 16, one device; computed in float32); blockwise otherwise.

    It picks its own tiles (`TILE_ROWS`, `TILE_K`); `block_q`/`block_k` only reach the blockwise fallback.
    """
    check_inputs(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, alibi_slopes,
                 sliding_window, logit_softcap, causal)
    reason = unusable(q, k)
    if reason:
        warn_fallback("cpu", reason)
        return blockwise_attention(q, k, v, **contract_kwargs(q_segment_ids, kv_segment_ids, q_positions,
                                                              kv_positions, scale, alibi_slopes,
                                                              sliding_window, logit_softcap, block_q,
                                                              block_k, causal))
    group = q.shape[2] // k.shape[2]
    tile_q = max(1, min(TILE_ROWS // group, q.shape[1]))
    tile_k = min(TILE_K, round_up(k.shape[1], LANES))
    dtype = q.dtype
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    g = to_grouped(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale, alibi_slopes,
                   tile_q, tile_k)
    rules = (sliding_window, float(logit_softcap), bool(causal))
    return from_grouped(_fused(g, tile_q, tile_k, rules), q.shape[1]).astype(dtype)
