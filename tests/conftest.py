"""Test-session set-up shared by every test file.

Eight simulated CPU devices for the whole session, so sharding and ring-attention tests can build meshes;
single-device tests are unaffected (arrays live on device 0). XLA reads the flag when jax first
initialises a backend, so it is set here, before any test imports jax.
"""

import os
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Identical computations compiled by different tests (a resumed run recompiles the run it resumes) are
# compiled once per session: JAX's persistent cache, in a fresh directory for every session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ctxjax-jit-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


@pytest.fixture
def libtpu():
    """For tests that compile for a TPU topology: skips without libtpu, naming the install command, except
    under CI=true, where a missing libtpu fails the test."""
    from ctxjax.plan.devices import install_command, libtpu_available

    if not libtpu_available():
        message = f"libtpu is not installed: {install_command()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
