"""Test-session set-up shared by every test file.

Eight simulated CPU devices for the whole session, so sharding and ring-attention tests can build meshes;
single-device tests are unaffected (arrays live on device 0). XLA reads the flag when jax first
initialises a backend, so it is set here, before any test imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
