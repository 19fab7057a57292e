"""Positional schemes on their own: RoPE tables against transformers' rope functions (including partial
rotary, which HF supports in Phi-3), HF config keys both ways, validation, ALiBi slopes, learned tables."""

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ctxjax import ModelConfig, positions
from ctxjax.positions.rope import Rope, yarn_correction_range


def _hf_rotation(rope_parameters, partial, positions_np, q, k):
    """HF's cos/sin tables and its partial-rotary application (Phi-3's apply_rotary_pos_emb). Phi-3 takes
    only default/longrope; the other types' tables come from Llama's rotary module, which builds them with
    the same rope functions (they read partial_rotary_factor from the rope dict)."""
    from transformers import LlamaConfig, Phi3Config
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding, apply_rotary_pos_emb

    common = dict(hidden_size=128, num_attention_heads=4, max_position_embeddings=256,
                  rope_parameters=rope_parameters)
    if rope_parameters["rope_type"] in ("default", "longrope"):
        rotary = Phi3RotaryEmbedding(Phi3Config(**common, original_max_position_embeddings=64,
                                                partial_rotary_factor=partial))
    else:
        rotary = LlamaRotaryEmbedding(LlamaConfig(**common))
    cos, sin = rotary(torch.zeros(1), torch.tensor(positions_np))
    # HF layout is [B, heads, L, Dh]; ours is [B, L, heads, Dh].
    qh, kh = (torch.tensor(a).transpose(1, 2) for a in (q, k))
    q_out, k_out = apply_rotary_pos_emb(qh, kh, cos, sin)
    return q_out.transpose(1, 2).numpy(), k_out.transpose(1, 2).numpy()


@pytest.mark.parametrize("partial", [1.0, 0.5, 0.75])
@pytest.mark.parametrize("params", [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0},
], ids=["default", "linear", "yarn"])
def test_rotation_matches_transformers_partial_rotary(params, partial):
    head_dim = 32
    hf_params = {**params, "rope_theta": 10000.0, "partial_rotary_factor": partial}
    if params["rope_type"] == "yarn":
        hf_params["original_max_position_embeddings"] = 64
    rng = np.random.RandomState(0)
    q = rng.randn(2, 100, 4, head_dim).astype(np.float32)
    k = rng.randn(2, 100, 2, head_dim).astype(np.float32)
    pos = np.stack([np.arange(100), np.arange(100) * 2 + 5])
    want_q, want_k = _hf_rotation(hf_params, partial, pos, q, k)
    rope = Rope.from_hf({"rope_parameters": hf_params, "max_position_embeddings": 256})
    got_q, got_k = rope.rotate(jnp.asarray(q), jnp.asarray(k), jnp.asarray(pos))
    np.testing.assert_allclose(got_q, want_q, atol=2e-5)
    np.testing.assert_allclose(got_k, want_k, atol=2e-5)
    if partial < 1:  # the pass-through dims are untouched, not even scaled by the attention factor
        d = int(head_dim * partial)
        np.testing.assert_array_equal(np.asarray(got_q)[..., d:], q[..., d:])


def test_longrope_partial_rotary_switches_factor_sets_at_original_length():
    d = 16  # head_dim 32 * 0.5
    params = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
              "original_max_position_embeddings": 64, "short_factor": [1.0] * (d // 2),
              "long_factor": [1.0 + i for i in range(d // 2)]}
    rope = Rope.from_hf({"rope_parameters": params, "max_position_embeddings": 256,
                         "original_max_position_embeddings": 64})
    assert rope.factor == 4.0  # v5: max_position_embeddings / original when no explicit factor
    rng = np.random.RandomState(1)
    for length in (64, 65):  # exactly L0 keeps the short factors; one more switches to long
        q = rng.randn(1, length, 4, 32).astype(np.float32)
        pos = np.arange(length)[None]
        want_q, _ = _hf_rotation(params, 0.5, pos, q, q[:, :, :2])
        got_q, _ = rope.rotate(jnp.asarray(q), jnp.asarray(q[:, :, :2]), jnp.asarray(pos))
        np.testing.assert_allclose(got_q, want_q, atol=2e-5)


def test_yarn_correction_range_matches_reference_numbers():
    def rng(theta, l0, truncate=True, d=128):
        return yarn_correction_range(Rope("yarn", theta=theta, factor=4.0,
                                          original_max_position_embeddings=l0, truncate=truncate), d)

    assert rng(1e4, 4096) == (20, 46)
    assert rng(1e6, 32768) == (23, 40)
    low, high = rng(150000.0, 4096, truncate=False, d=64)
    assert math.isclose(low, 8.09278, abs_tol=1e-5) and math.isclose(high, 17.39802, abs_tol=1e-5)


def test_llama3_bands_match_llama31_worked_case():
    rope = Rope("llama3", theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    inv = np.asarray(rope.inverse_frequencies(128)[0])
    base = np.asarray(Rope(theta=500000.0).inverse_frequencies(128)[0])
    ratio = base / inv
    assert np.allclose(ratio[:29], 1) and np.allclose(ratio[35:], 8)
    assert np.all((ratio[29:35] > 1) & (ratio[29:35] < 8))


def test_static_ntk_raises_the_base_and_exports_as_default_rope():
    rope = Rope("ntk", factor=4.0)
    cfg = ModelConfig(d_model=64, n_heads=4, position=rope)  # head_dim 16
    theta = 10000.0 * 4.0 ** (16 / 14)
    np.testing.assert_allclose(rope.inverse_frequencies(16)[0], Rope(theta=theta).inverse_frequencies(16)[0])
    hf = rope.to_hf(cfg)
    assert hf["rope_scaling"] is None and hf["rope_parameters"]["rope_type"] == "default"
    assert math.isclose(hf["rope_theta"], theta)


@pytest.mark.parametrize("rope", [
    Rope(),
    Rope(theta=500000.0, partial_rotary_factor=0.5),
    Rope("linear", factor=2.0),
    Rope("dynamic", factor=2.0, original_max_position_embeddings=64),
    Rope("yarn", factor=4.0, original_max_position_embeddings=32, beta_fast=16.0, truncate=False),
    Rope("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
         original_max_position_embeddings=32),
    Rope("longrope", factor=4.0, original_max_position_embeddings=32, short_factor=(1.0,) * 8,
         long_factor=(2.0,) * 8),
])
def test_hf_config_keys_round_trip_in_both_formats(rope):
    cfg = ModelConfig(d_model=64, n_heads=4, max_seq_len=128, position=rope)
    hf = {"max_position_embeddings": cfg.max_seq_len, **rope.to_hf(cfg)}
    assert Rope.from_hf(hf) == rope
    # transformers 4.x reads rope_theta + rope_scaling only; 5.x may meet a file with rope_parameters only.
    old = {k: v for k, v in hf.items() if k != "rope_parameters"}
    new = {k: v for k, v in hf.items() if k not in ("rope_scaling", "rope_theta")}
    assert Rope.from_hf(old) == rope and Rope.from_hf(new) == rope


def test_hf_precedence_rope_scaling_over_rope_parameters_and_legacy_type_key():
    hf = {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500000.0,
          "rope_parameters": {"rope_type": "default", "rope_theta": 1.0}, "max_position_embeddings": 64}
    assert Rope.from_hf(hf) == Rope("linear", theta=500000.0, factor=2.0)
    # A top-level original_max_position_embeddings beats the one inside the dict (transformers 5).
    hf = {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8},
          "original_max_position_embeddings": 32, "max_position_embeddings": 64}
    assert Rope.from_hf(hf).original_max_position_embeddings == 32
    assert Rope.from_hf({"rope_scaling": {"type": "su", "short_factor": [1.0], "long_factor": [1.0]},
                         "max_position_embeddings": 64}).rope_type == "longrope"


@pytest.mark.parametrize("rope, message", [
    (dict(rope_type="nope"), "unknown rope_type"),
    (dict(rope_type="linear", factor=0.5), "factor=0.5 must be >= 1"),
    (dict(rope_type="linear"), "needs `factor`"),
    (dict(rope_type="yarn", factor=2.0), "needs `original_max_position_embeddings`"),
    (dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=8, beta_fast=1.0, beta_slow=4.0),
     "beta_fast=1.0 must be >= beta_slow=4.0"),
    (dict(rope_type="longrope", factor=2.0, original_max_position_embeddings=8, short_factor=(1.0,) * 3,
          long_factor=(1.0,) * 8), "`short_factor` must list 8 factors"),
    (dict(rope_type="llama3", factor=2.0, original_max_position_embeddings=8), "low_freq_factor"),
    (dict(partial_rotary_factor=1.5), "partial_rotary_factor"),
    (dict(partial_rotary_factor=0.3125), "rotary dim 5 .* must be even"),  # head_dim 16 x 0.3125
    (dict(rope_type="longrope", factor=2.0, original_max_position_embeddings=8, short_factor=(1.0,) * 8,
          long_factor=(0.0,) * 8), "`long_factor` must hold factors > 0"),
])
def test_bad_rope_parameters_fail_with_a_message_naming_the_fix(rope, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(d_model=64, n_heads=4, position=Rope(**rope))


def test_registry_builds_schemes_by_name_and_rejects_unknown_names_and_fields():
    assert positions.make("rope", rope_type="linear", factor=2.0) == Rope("linear", factor=2.0)
    assert isinstance(positions.make("none"), positions.NoPE)
    with pytest.raises(ValueError, match="unknown positional scheme 'xpos'"):
        positions.make("xpos")
    with pytest.raises(ValueError, match="no field"):
        positions.make("alibi", factor=2.0)


@pytest.mark.parametrize("n_heads", [6, 8, 12, 16])
def test_alibi_slopes_equal_bloom(n_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(1, 3)
    bloom = build_alibi_tensor(mask, n_heads, torch.float32)[:, 0, 1].numpy()  # slope * position 1
    np.testing.assert_array_equal(positions.alibi_slopes(n_heads), bloom)


def test_alibi_attention_equals_bloom_bias_form():
    """Our kernel's -m*(i-j) bias and BLOOM's +m*j bias differ by a per-row constant: same attention."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from ctxjax.attention import xla_attention

    rng = np.random.RandomState(0)
    b, length, h, d = 1, 9, 6, 8
    q, k, v = (rng.randn(b, length, h, d).astype(np.float32) for _ in range(3))
    alibi = build_alibi_tensor(torch.ones(b, length), h, torch.float32).reshape(b, h, 1, length).numpy()
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d) + alibi
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), v)
    pos = jnp.arange(length)[None]
    seg = jnp.ones((b, length), jnp.int32)
    got = xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=seg, kv_segment_ids=seg,
                        q_positions=pos, kv_positions=pos, scale=1 / math.sqrt(d),
                        alibi_slopes=positions.alibi_slopes(h))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_learned_table_extend_interpolates_or_copies():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    params = {"pos_embed": {"embedding": jnp.asarray(table)}, "embed": {"embedding": jnp.zeros((5, 3))}}
    grown = positions.extend(params, 7, method="interpolate")["pos_embed"]["embedding"]
    assert grown.shape == (7, 3)
    np.testing.assert_allclose(grown[0], table[0]) and np.testing.assert_allclose(grown[-1], table[-1])
    np.testing.assert_allclose(grown[1], (table[0] + table[1]) / 2)  # 1 -> old position 0.5
    copied = positions.extend(params, 10, method="copy")["pos_embed"]["embedding"]
    np.testing.assert_array_equal(copied[4:8], table)
    assert params["pos_embed"]["embedding"].shape == (4, 3)  # the input is not modified
    with pytest.raises(ValueError, match="only grows"):
        positions.extend(params, 2)
    assert positions.EXTEND_METHODS == ("interpolate", "copy")
    with pytest.raises(ValueError, match=re.escape("extend method 'nearest' is unknown; use one of "
                                                   "('interpolate', 'copy')")):
        positions.extend(params, 8, method="nearest")
