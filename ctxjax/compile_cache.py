"""JAX's persistent compilation cache, on by default for ctxjax's entry points: a resumed run, a second
`make demo` or `ctxjax eval`, and every arm of a study that compiles a program compiled before load it from
disk instead of compiling it again.

The cache lives in `$CTXJAX_CACHE/jax` (default `~/.cache/ctxjax/jax`, beside the cpu kernel's build).
`CTXJAX_COMPILATION_CACHE=0` turns it off; a cache the user configured (`JAX_COMPILATION_CACHE_DIR`, or
`jax.config.update("jax_compilation_cache_dir", ...)`) is left as it is. Programs compiled for other devices
than the host's (`ctxjax plan`) bypass it (ctxjax/train/aot.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache.compilation_cache import reset_cache

# Programs that compile faster than this are not written: the tiny ones cost more to store than to rebuild.
MIN_COMPILE_SECONDS = 0.5


def cache_directory() -> Path:
    return Path(os.environ.get("CTXJAX_CACHE") or Path.home() / ".cache" / "ctxjax") / "jax"


def enable_compilation_cache() -> str | None:
    """Turn the cache on unless switched off or configured already; returns its directory (None: off)."""
    if os.environ.get("CTXJAX_COMPILATION_CACHE", "1") == "0":
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    directory = cache_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    reset_cache()  # JAX decides once per process whether to use a cache: let it decide again
    return str(directory)
