"""JAX's persistent compilation cache is on for ctxjax's entry points: in ~/.cache/ctxjax/jax (CTXJAX_CACHE),
off with CTXJAX_COMPILATION_CACHE=0, and a cache the user configured is left alone."""

import os
import subprocess
import sys

import jax

from ctxjax.compile_cache import enable_compilation_cache

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_the_cli_writes_compiled_programs_to_the_ctxjax_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(CTXJAX_CACHE=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run([sys.executable, "-m", "ctxjax.cli", "train", "--config",
                           os.path.join(ROOT, "configs", "demo.py:tiny"), "--workdir", str(tmp_path / "w"),
                           "--compile-only"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.listdir(tmp_path / "cache" / "jax")  # the stages' programs, for the next run to load


def test_off_by_environment_and_a_users_cache_is_kept(monkeypatch):
    monkeypatch.setenv("CTXJAX_COMPILATION_CACHE", "0")
    assert enable_compilation_cache() is None
    monkeypatch.delenv("CTXJAX_COMPILATION_CACHE")
    configured = jax.config.jax_compilation_cache_dir  # the test session's (tests/conftest.py)
    assert configured and enable_compilation_cache() == configured
