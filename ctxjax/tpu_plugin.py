"""An installed libtpu on a machine without a TPU chip (a laptop or CI host that has it for `ctxjax plan`).

JAX then tries the TPU plugin at its first computation: about 7 s of probing for TPU workers and a screen of
libtpu errors before it settles on the CPU. The command line skips the plugin there by choosing the other
platforms (JAX_PLATFORMS) before JAX starts a backend. A user's own JAX_PLATFORMS is left alone, and so is a
machine with a chip. `ctxjax plan` is unaffected: it asks libtpu for a topology's devices, not for a backend.
"""

from __future__ import annotations

import glob
import importlib.util
import os

# Where a TPU VM exposes its chips: /dev/accel* (v2-v5e) or VFIO groups (v5p, v6e).
CHIP_PATHS = ("/dev/accel*", "/dev/vfio/[0-9]*")
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def skip_tpu_plugin_without_a_chip(environ=os.environ, chip_paths=CHIP_PATHS) -> None:
    if "JAX_PLATFORMS" in environ or not libtpu_available():
        return
    if any(glob.glob(pattern) for pattern in chip_paths):
        return
    cuda = any(importlib.util.find_spec(name) is not None for name in CUDA_PLUGINS)
    environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"  # for processes started from this one
    if environ is os.environ:  # jax read the variable when it was imported
        import jax

        jax.config.update("jax_platforms", environ["JAX_PLATFORMS"])
