"""A RoPE scaling type is one registered class: a toy type defined here, and nothing else, is validated,
rotates, round-trips through config.json, and gets its own CLI flag in `ctxjax extend-hf / import-hf /
eval`."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest

from ctxjax import ModelConfig, positions
from ctxjax.commands.rope_args import add_rope_arguments, apply_rope_arguments
from ctxjax.positions import rope_scalings
from ctxjax.positions.rope import Rope
from ctxjax.positions.rope_scalings import RopeScaling, Setting, default_inverse_frequencies

STANDARD = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")


class Quadratic(RopeScaling):
    """Every frequency divided by factor², cos and sin scaled by attention_factor (default 1)."""

    name = "quadratic"
    hf_keys = ("factor", "attention_factor")
    settings = (Setting("attention_factor", float, "multiplies cos and sin", default=1.0),)

    def inverse_frequencies(self, rope, d, seq_len):
        return default_inverse_frequencies(rope.theta, d) / jnp.float32(rope.factor) ** 2

    def attention_factor(self, rope):
        return 1.0 if rope.attention_factor is None else rope.attention_factor


@pytest.fixture
def quadratic():
    rope_scalings.register(Quadratic)
    yield
    rope_scalings.unregister(Quadratic.name)


def _cli(argv: list[str], cfg: ModelConfig) -> ModelConfig:
    parser = argparse.ArgumentParser()
    add_rope_arguments(parser)
    return apply_rope_arguments(cfg, {}, parser.parse_args(argv))[0]


def test_a_new_scaling_class_validates_and_rotates(quadratic):
    assert "quadratic" in positions.ROPE_TYPES and tuple(positions.ROPE_TYPES)[-1] == "quadratic"
    rope = Rope(rope_type="quadratic", factor=2.0, attention_factor=0.5)
    ModelConfig(d_model=64, n_heads=4, position=rope)
    with pytest.raises(ValueError, match="rope quadratic: needs `factor`"):
        ModelConfig(d_model=64, n_heads=4, position=Rope("quadratic"))
    with pytest.raises(ValueError, match="name not taken"):
        rope_scalings.register(type("Again", (Quadratic,), {}))
    # Frequencies / 4 at positions 4p are the unscaled angles at p, exact in float32; cos and sin are halved.
    rng = np.random.RandomState(0)
    q, k = (jnp.asarray(rng.randn(2, 50, h, 16).astype(np.float32)) for h in (4, 2))
    pos = jnp.stack([jnp.arange(50), jnp.arange(50) * 3 + 7])
    got_q, got_k = rope.rotate(q, k, pos * 4)
    want_q, want_k = Rope().rotate(q, k, pos)
    np.testing.assert_allclose(got_q, 0.5 * want_q, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_k, 0.5 * want_k, rtol=1e-6, atol=1e-7)


def test_a_new_scaling_class_round_trips_through_hf_config(quadratic):
    rope = Rope("quadratic", factor=2.0, attention_factor=0.5, partial_rotary_factor=0.5)
    cfg = ModelConfig(d_model=64, n_heads=4, max_seq_len=128, position=rope)
    hf = {"max_position_embeddings": 128, **rope.to_hf(cfg)}
    assert hf["rope_scaling"] == {"rope_type": "quadratic", "factor": 2.0, "attention_factor": 0.5,
                                  "type": "quadratic"}
    assert hf["rope_parameters"]["rope_type"] == "quadratic"
    assert Rope.from_hf(hf) == rope
    assert Rope.from_hf({k: v for k, v in hf.items() if k != "rope_scaling"}) == rope


def test_a_new_scaling_class_brings_its_cli_flag_and_extends_models(quadratic):
    base = ModelConfig(d_model=64, n_heads=4, max_seq_len=64)
    extended = _cli(["--rope-type", "quadratic", "--factor", "2", "--attention-factor", "0.5"], base)
    assert extended.position == Rope("quadratic", factor=2.0, attention_factor=0.5,
                                     original_max_position_embeddings=64)
    assert extended.max_seq_len == 128
    # Without the flag the setting's default; extending again keeps the model's value and grows the factor.
    assert _cli(["--rope-type", "quadratic", "--factor", "2"], base).position.attention_factor == 1.0
    assert _cli(["--factor", "4"], extended).position == extended.position.replace(factor=4.0)
    # Training schedules extend through the same class.
    assert Rope().stretched("quadratic", 256, 64) == Rope("quadratic", factor=4.0, attention_factor=1.0,
                                                          original_max_position_embeddings=64)


def test_unregistered_the_standard_types_and_flags_are_back():
    assert tuple(positions.ROPE_TYPES) == STANDARD
    with pytest.raises(ValueError, match="unknown rope_type 'quadratic'"):
        ModelConfig(d_model=64, n_heads=4, position=Rope("quadratic", factor=2.0))
    parser = argparse.ArgumentParser()
    add_rope_arguments(parser)
    assert "--beta-fast" in parser.format_help() and "--attention-factor" not in parser.format_help()
