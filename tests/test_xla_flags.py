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


def run_python(code, **env):
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CTXJAX_XLA_FLAGS")}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                         timeout=300, env={**environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_importing_ctxjax_gives_a_users_own_jitted_step_the_flag():
    """A notebook: `import ctxjax`, then a jitted function of its own; the user's XLA_FLAGS stay."""
    code = ("import os, ctxjax, jax, jax.numpy as jnp\n"
            "x = jnp.ones((512, 64))\n"
            "print(len(jax.devices()), os.environ['XLA_FLAGS'])\n"
            "print('__ynn_fusion' in jax.jit(lambda x, y: (x * y).sum(0)).lower(x, x).compile().as_text())")
    out = run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    devices, flags = out.stdout.splitlines()[-2].split(" ", 1)
    assert devices == "2" and flags.split() == ["--xla_force_host_platform_device_count=2",
                                                f"{FLAG}={CPU_FLAGS[FLAG]}"]
    assert out.stdout.splitlines()[-1] == "False"
    # Switched off: XLA_FLAGS is left as it was.
    out = run_python("import os, ctxjax; print(os.environ.get('XLA_FLAGS'))", CTXJAX_XLA_FLAGS="0")
    assert out.stdout.splitlines()[-1] == "None"


def test_importing_ctxjax_after_jax_started_warns_once():
    code = ("import jax; jax.devices()\n"
            "import ctxjax\n"
            "from ctxjax import xla_flags\n"
            "print(xla_flags.apply(), xla_flags.apply())")
    out = run_python(code)
    assert out.stdout.splitlines()[-1] == "False False"
    assert out.stderr.count("ctxjax was imported after JAX started its CPU backend") == 1
    # The flag given before the start (the user's own value) is in effect: nothing to warn about.
    out = run_python(code, XLA_FLAGS=f"{FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
    assert out.stdout.splitlines()[-1] == "True True" and "ctxjax was imported after" not in out.stderr


def test_a_jaxlib_not_checked_gets_neither_the_flag_nor_the_advice(monkeypatch):
    import warnings

    from ctxjax import xla_flags

    monkeypatch.setattr(xla_flags, "CHECKED_JAXLIB", ("9.99.",))
    monkeypatch.setattr(xla_flags, "_warned", False)
    for started in (False, True):
        monkeypatch.setattr(xla_flags, "_backend_started", lambda: started)
        environ = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert xla_flags.apply(environ) is False
        assert environ == {}
