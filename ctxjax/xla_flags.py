"""XLA:CPU settings that the command line applies before JAX starts a backend.

XLA:CPU hands reductions fused with elementwise work to YNNPACK by default, which turns them into
matrix-vector products. For the RMSNorm weight gradients (a [L, D] -> [D] sum per norm per layer) that took
about 0.07 s each at 16k tokens on the 2-core machine of docs/benchmarks.md; letting YNNPACK take only the
matmuls themselves cut the 16k train step from 11.1 s to 10.6 s there. XLA aborts the process on a flag it
does not know, so the flag is only added for the jaxlib versions it was checked with; a flag the user set in
XLA_FLAGS is left alone.
"""

from __future__ import annotations

import os

CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
CHECKED_JAXLIB = ("0.10.",)  # version prefixes that know CPU_FLAGS


def apply_cpu_flags(environ=os.environ) -> None:
    """Add CPU_FLAGS to XLA_FLAGS (other platforms ignore them). Takes effect only before JAX's first
    computation in this process, and in processes started from it."""
    import jaxlib

    if not jaxlib.__version__.startswith(CHECKED_JAXLIB):
        return
    flags = environ.get("XLA_FLAGS", "").split()
    for name, value in CPU_FLAGS.items():
        if not any(flag.split("=", 1)[0] == name for flag in flags):
            flags.append(f"{name}={value}")
    environ["XLA_FLAGS"] = " ".join(flags)
