"""The command line's XLA:CPU flag: added unless the user chose, known to this jaxlib, and taking effect."""

import subprocess
import sys

from ctxjax.xla_flags import CPU_FLAGS, apply_cpu_flags

FLAG = next(iter(CPU_FLAGS))


def test_added_once_and_the_users_choice_kept():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    apply_cpu_flags(environ)
    apply_cpu_flags(environ)
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}={CPU_FLAGS[FLAG]}"
    mine = {"XLA_FLAGS": f"{FLAG}=LIBRARY_FUSION_TYPE_DOT"}
    apply_cpu_flags(mine)
    assert mine["XLA_FLAGS"] == f"{FLAG}=LIBRARY_FUSION_TYPE_DOT"


def test_this_jaxlib_takes_the_flag():
    """An unknown flag would abort the process; applied, the [L, D] -> [D] reduction is no YNNPACK fusion."""
    code = ("from ctxjax.xla_flags import apply_cpu_flags; apply_cpu_flags()\n"
            "import jax, jax.numpy as jnp\n"
            "x = jnp.ones((512, 64))\n"
            "print('__ynn_fusion' in jax.jit(lambda x, y: (x * y).sum(0)).lower(x, x).compile().as_text())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
