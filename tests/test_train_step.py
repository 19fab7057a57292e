"""The pieces of a train step on their own: gradient accumulation, frozen parameter groups, the weight
decay mask, the non-finite guard, the stage schedules and the FLOP count."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ctxjax import ModelConfig, Transformer, flops, positions
from ctxjax.optimizer import decay_mask, make_optimizer, trainable_labels
from ctxjax.sharding import make_mesh
from ctxjax.schedule import build_stages, learning_rate_schedule, model_config_for, stage_at
from ctxjax.train.state import abstract_params, init_state, state_shardings
from ctxjax.train.step import make_train_step, position_buckets

CFG = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
MODEL = Transformer(CFG)


def optimizer(trainable=""):
    opt = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
                                         trainable=trainable))
    return make_optimizer(opt, 1e-2, trainable_labels(abstract_params(CFG), trainable))


def batch(rows=4, length=16, seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, 50, (rows, length)).astype(np.int32)
    return {"tokens": tokens, "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
            "segment_ids": np.ones((rows, length), np.int32), "targets": np.roll(tokens, -1, axis=1),
            "weights": rng.randint(0, 2, (rows, length)).astype(np.float32)}


def fresh_state(tx):
    _, shardings = state_shardings(CFG, tx, make_mesh({}, jax.devices()[:1]))
    return init_state(CFG, tx, jax.random.PRNGKey(0), shardings)


def test_gradient_accumulation_equals_the_full_batch():
    tx = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step is its sign: too sensitive)
    full, full_metrics = jax.jit(make_train_step(MODEL, tx))(fresh_state(tx), batch())
    accumulated, acc_metrics = jax.jit(make_train_step(MODEL, tx, micro_batches=4))(fresh_state(tx), batch())
    np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], rtol=1e-6)
    assert acc_metrics["target_tokens"] == batch()["weights"].sum()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accumulated["params"],
                 full["params"])


def test_loss_by_position_buckets_the_positions_the_model_sees_from_the_same_pass():
    """Bucket bounds: the original context, then each doubling. PoSE-style positions (a shifted second half)
    land in the far buckets although the row is short; accumulated micro-batches give the same sums; the
    buckets together are the loss."""
    assert position_buckets(128, 512) == (128, 256) and position_buckets(128, 128) == ()
    data = batch()
    data["positions"] = np.concatenate([np.arange(8), 20 + np.arange(8)])[None].repeat(4, 0).astype(np.int32)
    tx = optax.sgd(0.0)
    _, metrics = jax.jit(make_train_step(MODEL, tx, buckets=(4, 8, 16)))(fresh_state(tx), data)
    _, micro = jax.jit(make_train_step(MODEL, tx, buckets=(4, 8, 16), micro_batches=2))(fresh_state(tx), data)
    by_position = np.asarray(metrics["loss_by_position"])
    weights = data["weights"]
    counts = [weights[:, :4].sum(), weights[:, 4:8].sum(), 0.0, weights[:, 8:].sum()]
    np.testing.assert_array_equal(by_position[:, 1], counts)  # [0, 4), [4, 8), none in [8, 16), [16, ...)
    np.testing.assert_allclose(by_position[:, 0].sum() / by_position[:, 1].sum(), metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(micro["loss_by_position"], by_position, rtol=1e-5)


def test_z_loss_pulls_the_softmax_normaliser_towards_one():
    tx = optax.sgd(0.5)
    plain, metrics = jax.jit(make_train_step(MODEL, tx))(fresh_state(tx), batch())
    with_z, z_metrics = jax.jit(make_train_step(MODEL, tx, z_loss=1.0))(fresh_state(tx), batch())
    np.testing.assert_allclose(z_metrics["loss"], metrics["loss"], rtol=1e-6)  # the reported loss is the CE

    def mean_log_z(params):
        from ctxjax.train.step import loss_sums

        _, z_total, count = loss_sums(MODEL, params, batch(), 1024)
        return float(z_total / count)

    assert mean_log_z(with_z["params"]) < mean_log_z(plain["params"])


def test_only_trainable_groups_change_and_frozen_ones_keep_no_optimizer_state():
    tx = optimizer(trainable="embed,norm")
    before = fresh_state(tx)
    after, _ = jax.jit(make_train_step(MODEL, tx))(jax.tree.map(jnp.copy, before), batch())
    changed = jax.tree_util.tree_map_with_path(
        lambda path, a, b: ("/".join(k.key for k in path), bool(np.any(a != b))), before["params"],
        after["params"])
    for name, did_change in jax.tree.leaves(changed, is_leaf=lambda x: isinstance(x, tuple)):
        assert did_change == ("embed" in name or "norm" in name), name
    moments = [x for x in jax.tree.leaves(after["opt_state"]) if getattr(x, "ndim", 0) > 0]
    assert sum(x.size for x in moments) < sum(x.size for x in jax.tree.leaves(before["params"]))
    with pytest.raises(ValueError, match="matches no parameter"):
        optimizer(trainable="lora_A")


def test_weight_decay_applies_to_matrices_only():
    mask = decay_mask(abstract_params(CFG))
    assert mask["layers"]["attn"]["q"]["kernel"] and mask["lm_head"]["kernel"]
    assert not mask["embed"]["embedding"] and not mask["layers"]["attn_norm"]["scale"]


def test_a_non_finite_step_changes_nothing_and_records_its_step():
    tx = optimizer()
    state = fresh_state(tx)
    state["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(jnp.nan)
    state["step"] = jnp.asarray(5, jnp.int32)
    after, metrics = jax.jit(make_train_step(MODEL, tx))(jax.tree.map(jnp.copy, state), batch())
    assert not np.isfinite(metrics["loss"]) and int(after["first_bad_step"]) == 5
    np.testing.assert_array_equal(after["params"]["layers"]["mlp"]["up"]["kernel"],
                                  state["params"]["layers"]["mlp"]["up"]["kernel"])


def test_stage_schedules_join_learning_rates_and_step_sequence_lengths():
    stages = build_stages([dict(steps=10, seq_len=128, lr=1e-3, warmup_steps=4),
                           dict(steps=6, seq_len=512, lr=2e-4, warmup_steps=2)], tokens_per_step=2048)
    assert [s.batch_size for s in stages] == [16, 4] and [s.start for s in stages] == [0, 10]
    lr = learning_rate_schedule(stages)
    assert float(lr(0)) == 0.0 and np.isclose(float(lr(4)), 1e-3)
    assert np.isclose(float(lr(10)), 0.0) and np.isclose(float(lr(12)), 2e-4)  # stage 1 warms up again
    assert np.isclose(float(lr(9)), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 5 / 6))))
    assert [stage_at(stages, s).seq_len for s in (0, 9, 10, 15, 16)] == [128, 128, 512, 512, 512]


def test_rope_scaling_fills_in_each_longer_stage():
    base = CFG.replace(max_seq_len=128)
    stages = build_stages([dict(steps=1, seq_len=128, lr=1.0), dict(steps=1, seq_len=512, lr=1.0),
                           dict(steps=1, seq_len=512, lr=1.0, position={"theta": 5e5})], tokens_per_step=512)
    assert model_config_for(base, stages[0], "yarn").position == base.position
    extended = model_config_for(base, stages[1], "yarn")
    assert extended.position == positions.Rope("yarn", factor=4.0, original_max_position_embeddings=128)
    assert extended.max_seq_len == 512
    llama3 = model_config_for(base, stages[1], "llama3").position
    assert (llama3.low_freq_factor, llama3.high_freq_factor) == (1.0, 4.0)
    assert model_config_for(base, stages[2], "yarn").position == positions.Rope(theta=5e5)  # explicit wins


def test_flops_per_token_counts_causal_attention_once():
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, d_ff=128)
    matmul = 2 * (64 * 64 * 4 + 64 * 128 * 3) + 64 * 100
    assert flops.matmul_params(cfg) == matmul
    assert flops.flops_per_token(cfg, 1000) == 6 * matmul + 6 * 2 * 4 * 16 * 1000
    # A window of 100: the first 100 queries see 1..100 keys (50.5 on average, counted as 50), the rest 100.
    windowed = cfg.replace(sliding_window=100)
    attended = (100 * 50 + 900 * 100) / 1000
    assert flops.flops_per_token(windowed, 1000) == 6 * matmul + 12 * 2 * 4 * 16 * attended
    assert flops.flops_per_token(windowed, 100) == flops.flops_per_token(cfg, 100)
    assert flops.measured_peak_flops(sizes=(128, 256), repeats=2) > 0


def test_adam_state_moments_follow_the_parameter_shardings():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    tx = optimizer()
    _, shardings = state_shardings(CFG, tx, mesh)
    adam = [s for s in jax.tree.leaves(shardings["opt_state"]) if s.spec != jax.sharding.PartitionSpec()]
    expected = jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert shardings["params"]["layers"]["mlp"]["up"]["kernel"].spec == expected
    assert sum(s.spec == expected for s in adam) == 2 * 2  # mu and nu of the gate and up kernels
    assert isinstance(tx, optax.GradientTransformation)
