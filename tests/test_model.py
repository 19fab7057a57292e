"""Properties of the model itself: segments, relative schemes, every scheme end to end, dtypes, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import run_model

from ctxjax import ModelConfig, Transformer, init_params, param_logical_axes, positions
from ctxjax.execution import ExecutionConfig

SCHEMES = {
    "rope": positions.Rope(),
    "rope-yarn": positions.Rope("yarn", factor=4.0, original_max_position_embeddings=8),
    "alibi": positions.Alibi(),
    "learned": positions.Learned(),
    "sinusoidal": positions.Sinusoidal(),
    "none": positions.NoPE(),
}


def tiny(position=positions.Rope(), **kw):
    return ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                       position=position, **kw)


def forward(cfg, params, tokens, pos=None, seg=None, execution=ExecutionConfig()):
    return run_model.forward(cfg, params, tokens, pos, seg, execution)


TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 61, (2, 24)))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_segments_do_not_see_each_other(name):
    """A packed row [doc A | doc B] with restarting positions gives each document the logits it gets alone."""
    cfg = tiny(SCHEMES[name])
    params = init_params(cfg, jax.random.PRNGKey(1))
    a, b = TOKENS[:1, :10], TOKENS[1:, :14]
    packed = jnp.concatenate([a, b], axis=1)
    pos = jnp.concatenate([jnp.arange(10), jnp.arange(14)])[None]
    seg = jnp.asarray([[1] * 10 + [2] * 14])
    together = forward(cfg, params, packed, pos, seg)
    np.testing.assert_allclose(together[:, :10], forward(cfg, params, a), atol=1e-5)
    np.testing.assert_allclose(together[:, 10:], forward(cfg, params, b), atol=1e-5)


@pytest.mark.parametrize("name", ["rope", "rope-yarn", "alibi", "none"])
def test_relative_schemes_ignore_a_constant_position_shift(name):
    cfg = tiny(SCHEMES[name])
    params = init_params(cfg, jax.random.PRNGKey(2))
    pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
    np.testing.assert_allclose(forward(cfg, params, TOKENS, pos + 1000), forward(cfg, params, TOKENS, pos),
                               atol=2e-4)


def test_absolute_schemes_do_see_the_shift():
    for name in ("learned", "sinusoidal"):
        cfg = tiny(SCHEMES[name])
        params = init_params(cfg, jax.random.PRNGKey(2))
        pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
        assert np.abs(forward(cfg, params, TOKENS, pos + 3) - forward(cfg, params, TOKENS, pos)).max() > 1e-4


def test_causal_future_tokens_do_not_change_past_logits():
    cfg = tiny()
    params = init_params(cfg, jax.random.PRNGKey(3))
    changed = TOKENS.at[:, 12:].set(0)
    np.testing.assert_allclose(forward(cfg, params, changed)[:, :12], forward(cfg, params, TOKENS)[:, :12],
                               atol=1e-6)


def test_jit_apply_matches_eager_and_gpt2_family_runs():
    for cfg in (tiny(), ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, family="gpt2",
                                    max_seq_len=32, position=positions.Learned())):
        params = init_params(cfg, jax.random.PRNGKey(4))
        jitted = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
        out = jitted(params, TOKENS)
        assert out.shape == (2, 24, 61) and out.dtype == jnp.float32
        np.testing.assert_allclose(out, forward(cfg, params, TOKENS), atol=1e-5)


def test_bfloat16_forward_runs_and_stays_close_to_float32():
    cfg = tiny()
    params = init_params(cfg, jax.random.PRNGKey(5))
    bf16 = cfg.replace(param_dtype="bfloat16")
    params_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    assert jax.tree.leaves(init_params(bf16, jax.random.PRNGKey(5)))[0].dtype == jnp.bfloat16
    out = forward(bf16, params_bf16, TOKENS, execution=ExecutionConfig(dtype="bfloat16"))
    assert out.dtype == jnp.float32  # logits are always float32
    reference = forward(cfg, params, TOKENS)
    assert np.abs(out - reference).max() < 0.05 * np.abs(reference).max()
    # Mixed precision: float32 params, bfloat16 compute.
    mixed = forward(cfg, params, TOKENS, execution=ExecutionConfig(dtype="bfloat16"))
    assert np.abs(mixed - reference).max() < 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("change", [dict(remat="full"), dict(remat="dots"), dict(remat="dots_no_batch"),
                                    dict(scan_unroll=2), dict(scan_unroll=3, remat="full")])
def test_remat_policies_and_unrolling_change_speed_and_memory_not_results(change):
    cfg = tiny().replace(n_layers=3)  # unroll 2 leaves a remainder layer
    params = init_params(cfg, jax.random.PRNGKey(6))

    def loss(p, run):
        return jnp.mean(Transformer(cfg, run).apply({"params": p}, TOKENS) ** 2)

    plain = jax.grad(loss)(params, ExecutionConfig())
    changed = jax.grad(loss)(params, ExecutionConfig(**change))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, changed)


def test_hidden_states_and_logits_from_hidden_compose_to_logits():
    cfg = tiny(tie_embeddings=True)
    params = init_params(cfg, jax.random.PRNGKey(7))
    model = Transformer(cfg)
    hidden = model.apply({"params": params}, TOKENS, return_hidden=True)
    assert hidden.shape == (2, 24, 32)
    logits = model.apply({"params": params}, hidden, method=Transformer.logits_from_hidden)
    np.testing.assert_allclose(logits, forward(cfg, params, TOKENS), atol=1e-6)


def test_parameters_carry_logical_axis_names():
    axes = param_logical_axes(tiny())
    assert tuple(axes["layers"]["attn"]["q"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(axes["layers"]["attn"]["k"]["kernel"]) == ("layers", "embed", "kv_heads", "head_dim")
    assert tuple(axes["layers"]["mlp"]["gate"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["lm_head"]["kernel"]) == ("embed", "vocab")


def test_learned_positions_beyond_the_table_are_refused_or_nan():
    cfg = tiny(positions.Learned()).replace(max_seq_len=16)
    params = init_params(cfg, jax.random.PRNGKey(8))
    with pytest.raises(ValueError, match="longer than the learned position table"):
        forward(cfg, params, TOKENS)
    out = forward(cfg, params, TOKENS[:, :4], pos=jnp.asarray([[0, 1, 2, 16]] * 2))
    assert np.isnan(out[:, 3]).all()  # loud, never a silently clamped lookup


@pytest.mark.parametrize("attention", ["xla", "blockwise"])
def test_a_bidirectional_model_sees_both_sides_and_keeps_documents_apart(attention):
    """causal=False (encoders): an early logit changes with a later token, a packed neighbour still changes
    nothing, and the kernels agree."""
    cfg = tiny(causal=False, sliding_window=0)
    params = init_params(cfg, jax.random.PRNGKey(3))
    run = ExecutionConfig(attention=attention, attention_block_q=8, attention_block_k=8)
    changed = TOKENS.at[:, 20:].set(0)
    assert np.abs(forward(cfg, params, changed, execution=run)[:, :12]
                  - forward(cfg, params, TOKENS, execution=run)[:, :12]).max() > 1e-3
    pos = jnp.concatenate([jnp.arange(10), jnp.arange(14)])[None]
    seg = jnp.asarray([[1] * 10 + [2] * 14])
    together = forward(cfg, params, TOKENS[:1], pos, seg, execution=run)
    np.testing.assert_allclose(together[:, :10], forward(cfg, params, TOKENS[:1, :10], execution=run),
                               atol=1e-5)
    np.testing.assert_allclose(together, forward(cfg, params, TOKENS[:1], pos, seg), atol=1e-5)


@pytest.mark.parametrize("fields, message", [
    (dict(family="t5"), "family='t5' is unknown"),
    (dict(causal="no"), "causal='no' must be True"),
    (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
    (dict(param_dtype="float8"), "param_dtype='float8' is unknown"),
    (dict(position="rope"), "position must be a ctxjax.positions scheme"),
    (dict(n_kv_heads=-2), "n_kv_heads=-2 must be a positive integer or None"),
    (dict(d_model=64.0), "d_model=64.0 must be a positive integer"),
    (dict(norm_eps=-1.0), "norm_eps=-1.0 must be > 0"),
    (dict(d_model=60, n_heads=4), "rotary dim 15 .* must be even"),
    (dict(n_layers=2, full_attention_layers=(2,)),
     r"full_attention_layers=\(2,\) must be increasing layer indices"),
    (dict(local_position=positions.Rope(theta=1e4)), "local_position applies to the layers outside"),
    (dict(full_attention_layers=(0,), local_position=positions.Alibi()), "local layers must rotate too"),
    (dict(query_pre_attn_scalar=0.0), "query_pre_attn_scalar=0.0 must be > 0"),
])
def test_bad_model_configs_fail_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


@pytest.mark.parametrize("fields, message", [
    (dict(dtype="float8"), "ExecutionConfig: dtype='float8' is unknown"),
    (dict(attention="flash"), "ExecutionConfig: attention='flash' is unknown"),
    (dict(remat="some"), "ExecutionConfig: remat='some' is unknown"),
    (dict(scan_unroll=0), "ExecutionConfig: scan_unroll=0 must be a positive integer"),
])
def test_bad_execution_configs_fail_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        ExecutionConfig(**fields)


@pytest.mark.parametrize("field", ["dtype", "attention", "remat", "scan_unroll", "lora_rank"])
def test_how_a_model_runs_or_is_adapted_is_no_model_config_field(field):
    with pytest.raises(TypeError, match=field):
        ModelConfig(**{field: 1})


@pytest.mark.parametrize("tokens", [jnp.zeros((8,), jnp.int32), jnp.zeros((1, 0), jnp.int32),
                                    jnp.zeros((1, 4), jnp.float32)], ids=["1-d", "empty", "float"])
def test_tokens_that_are_not_a_batch_of_ids_are_a_one_line_error(tokens):
    cfg = tiny(positions.Rope())
    with pytest.raises(ValueError, match=r"tokens must be integer ids of shape \[batch, length\]"):
        Transformer(cfg).apply({"params": init_params(cfg, jax.random.PRNGKey(0))}, tokens)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_model_config_survives_json(name):
    import json

    cfg = tiny(SCHEMES[name], sliding_window=5)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    run = ExecutionConfig(attention="blockwise", remat="dots")
    assert ExecutionConfig(**json.loads(json.dumps(run.to_dict()))) == run
    with pytest.raises(ValueError, match="no field"):
        cfg.replace(n_head=3)


def test_mfu_counts_each_layers_own_window():
    """Gemma 3-style: one of three layers sees the whole causal context (L/2 keys), two a window of 10."""
    from ctxjax import flops

    cfg = ModelConfig(n_layers=3, sliding_window=10, full_attention_layers=(1,))
    assert flops.attended_keys(cfg, 1000) == pytest.approx((500 + 2 * (10 - 100 / 2000)) / 3)
