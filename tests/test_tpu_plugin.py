"""An installed libtpu on a machine without a chip: the command line skips the TPU plugin (7 s of probing and
a screen of errors otherwise), unless the user chose the platforms or a chip is there."""

import pytest

from ctxjax.tpu_plugin import libtpu_available, skip_tpu_plugin_without_a_chip

needs_libtpu = pytest.mark.skipif(not libtpu_available(),
                                  reason='libtpu is not installed: pip install "jax[tpu]"')


@needs_libtpu
def test_without_a_chip_jax_starts_on_the_other_platforms(tmp_path):
    environ = {}
    skip_tpu_plugin_without_a_chip(environ, chip_paths=(str(tmp_path / "accel*"),))
    assert environ["JAX_PLATFORMS"] in ("cpu", "cuda,cpu")


@needs_libtpu
def test_a_chip_or_the_users_choice_is_left_alone(tmp_path):
    (tmp_path / "accel0").touch()
    environ = {}
    skip_tpu_plugin_without_a_chip(environ, chip_paths=(str(tmp_path / "accel*"),))
    assert environ == {}
    mine = {"JAX_PLATFORMS": "tpu"}
    skip_tpu_plugin_without_a_chip(mine, chip_paths=(str(tmp_path / "none*"),))
    assert mine == {"JAX_PLATFORMS": "tpu"}
