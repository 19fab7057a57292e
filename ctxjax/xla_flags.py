"""XLA:CPU settings that ctxjax applies before JAX starts a backend: on `import ctxjax` (so a notebook and a
jitted step of a user's own get them, not only the command line) or by calling `apply()`.

XLA:CPU hands reductions fused with elementwise work to YNNPACK by default, which turns them into
matrix-vector products. For the RMSNorm weight gradients (a [L, D] -> [D] sum per norm per layer) that took
about 0.07 s each at 16k tokens on the 2-core machine of docs/benchmarks.md; letting YNNPACK take only the
matmuls themselves cut the 16k train step from 11.1 s to 10.6 s there. XLA aborts the process on a flag it
does not know, so the flag is only added for the jaxlib versions it was checked with; a flag the user set in
XLA_FLAGS is left alone. XLA reads XLA_FLAGS once, when JAX starts its first backend: ctxjax imported after a
computation (or after `jax.devices()`) is too late, and says so once. `CTXJAX_XLA_FLAGS=0` leaves XLA_FLAGS
untouched.
"""

from __future__ import annotations

import os
import warnings

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
CHECKED_JAXLIB = ("0.10.",)  # version prefixes that know CPU_FLAGS


def _jaxlib_checked() -> bool:
    import jaxlib

    return jaxlib.__version__.startswith(CHECKED_JAXLIB)


def apply_cpu_flags(environ=os.environ) -> None:
    """Add CPU_FLAGS to XLA_FLAGS (other platforms ignore them). Takes effect only before JAX's first
    computation in this process, and in processes started from it."""
    if not _jaxlib_checked():
        return
    flags = environ.get("XLA_FLAGS", "").split()
    for name, value in CPU_FLAGS.items():
        if not any(flag.split("=", 1)[0] == name for flag in flags):
            flags.append(f"{name}={value}")
    environ["XLA_FLAGS"] = " ".join(flags)


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public way to ask without starting one

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return started() if started else bool(getattr(xla_bridge, "_backends", None))


def _flags_in(environ) -> bool:
    names = {flag.split("=", 1)[0] for flag in environ.get("XLA_FLAGS", "").split()}
    return all(name in names for name in CPU_FLAGS)


_warned = False


def apply(environ=os.environ) -> bool:
    """Put CPU_FLAGS (or the user's own values of them) into effect for this process if it is not too late;
    returns whether they are. `import ctxjax` calls it; call it yourself only after setting XLA_FLAGS anew.
    When JAX's CPU backend has started without them it warns once how to get them."""
    global _warned
    if not _jaxlib_checked():  # a jaxlib that may not know them (it would abort): nothing to set or advise
        return False
    if environ.get("CTXJAX_XLA_FLAGS", "1") == "0":
        return _flags_in(environ)
    if not _backend_started():
        apply_cpu_flags(environ)
        return _flags_in(environ)
    if _flags_in(environ):  # set before the backend started (or by the user, who chose)
        return True
    import jax

    if jax.default_backend() == "cpu" and not _warned:
        _warned = True
        flags = " ".join(f"{name}={value}" for name, value in CPU_FLAGS.items())
        warnings.warn(f"ctxjax was imported after JAX started its CPU backend, so XLA:CPU runs without "
                      f"{flags} (long-context train steps about 5% slower on CPU): import ctxjax before "
                      f"running anything in JAX, or start Python with XLA_FLAGS='{flags}'", stacklevel=3)
    return False
