"""Chunked cross-entropy equals the loss from full logits, values and gradients, for any chunk size."""

import jax
import numpy as np
import pytest

from ctxjax.loss import (chunked_cross_entropy, cross_entropy_from_logits, cross_entropy_sum, loss_sums,
                         objective_sums)


def problem(seed=0, batch=2, length=50, dim=16, vocab=37):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((batch, length, dim)).astype(np.float32)
    kernel = rng.standard_normal((dim, vocab)).astype(np.float32) * 0.3
    bias = rng.standard_normal((vocab,)).astype(np.float32)
    targets = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    weights = (rng.random((batch, length)) > 0.2).astype(np.float32)
    return hidden, kernel, bias, targets, weights


def dense_loss(hidden, kernel, bias, targets, weights):
    return cross_entropy_from_logits(hidden @ kernel + bias, targets, weights)


@pytest.mark.parametrize("chunk", [1, 16, 50, 64], ids=["one", "not-a-divisor", "whole", "larger"])
def test_chunked_equals_dense(chunk):
    hidden, kernel, bias, targets, weights = problem()
    grad = jax.value_and_grad(dense_loss, argnums=(0, 1, 2))
    want, want_grads = grad(hidden, kernel, bias, targets, weights)

    def chunked(hidden, kernel, bias):
        return chunked_cross_entropy(hidden, kernel, targets, weights, bias=bias, chunk=chunk)

    got, got_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(hidden, kernel, bias)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, g, w in zip(("d_hidden", "d_kernel", "d_bias"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5, err_msg=name)


def test_sum_and_count_for_accumulation():
    hidden, kernel, _, targets, weights = problem(seed=1)
    total, count = cross_entropy_sum(hidden, kernel, targets, weights, chunk=8)
    assert float(count) == weights.sum()
    want = cross_entropy_from_logits(hidden @ kernel, targets, weights)
    np.testing.assert_allclose(total / count, want, rtol=1e-5)
    # Default weights count every token.
    _, all_count = cross_entropy_sum(hidden, kernel, targets, chunk=8)
    assert float(all_count) == targets.size


def test_z_loss_sum_is_the_weighted_sum_of_squared_log_normalisers():
    hidden, kernel, bias, targets, weights = problem(seed=2)
    _, z_total, _ = loss_sums(hidden, kernel, targets, weights, bias=bias, chunk=16)
    log_z = jax.nn.logsumexp(hidden @ kernel + bias, axis=-1)
    np.testing.assert_allclose(z_total, np.sum(np.asarray(log_z) ** 2 * weights), rtol=1e-5)


def test_logits_are_never_materialised_whole():
    """The largest float32 value in the compiled step is one chunk of logits, not [B, L, V]."""
    hidden, kernel, _, targets, weights = problem(batch=1, length=256, vocab=1000)
    loss = lambda h, k: chunked_cross_entropy(h, k, targets, weights, chunk=32)  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(hidden, kernel)
    sizes = [np.prod(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape")]
    assert max(sizes) < 256 * 1000


@pytest.mark.parametrize(
    "change, message",
    [(dict(kernel=np.zeros((37, 16), np.float32)), "embedding.T"),
     (dict(targets=np.zeros((2, 49), np.int32)), "targets"), (dict(chunk=0), "chunk")],
)
def test_bad_inputs_name_the_fix(change, message):
    hidden, kernel, _, targets, weights = problem()
    args = dict(hidden=hidden, kernel=kernel, targets=targets, weights=weights)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        chunked_cross_entropy(**args)


def test_soft_capped_logits_as_gemma2_caps_them():
    """The training loss caps logits at C tanh(logits / C) exactly as the model's logits do (values and
    grads)."""
    from ctxjax.model import soft_cap

    hidden, kernel, bias, targets, weights = problem()

    def dense(hidden, kernel):
        return cross_entropy_from_logits(soft_cap(hidden @ kernel + bias, 2.0), targets, weights)

    def chunked(hidden, kernel):
        total, _, count = loss_sums(hidden, kernel, targets, weights, bias=bias, chunk=16, logit_softcap=2.0)
        return total / count

    (want, want_grads), (got, got_grads) = (jax.value_and_grad(f, argnums=(0, 1))(hidden, kernel)
                                            for f in (dense, chunked))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    uncapped = float(dense_loss(hidden, kernel, bias, targets, weights))
    assert abs(float(want) - uncapped) > 0.1  # the cap matters
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("chunk, softcap, z_loss", [(16, 0.0, 0.0), (50, 2.0, 1e-2), (7, 0.0, 0.5)],
                         ids=["plain", "softcap-z-loss", "small-chunks"])
def test_objective_gradient_from_the_forward_pass_equals_autodiff(chunk, softcap, z_loss):
    hidden, kernel, bias, targets, weights = problem(seed=3)

    def reference(hidden, kernel, bias):
        total, z_total, _ = loss_sums(hidden, kernel, targets, weights, bias=bias, chunk=chunk,
                                      logit_softcap=softcap)
        return total + z_loss * z_total

    def fused(hidden, kernel, bias):
        objective, total, z_total, count, _ = objective_sums(hidden, kernel, targets, weights, z_loss=z_loss,
                                                             bias=bias, chunk=chunk, logit_softcap=softcap)
        return objective, (total, z_total, count)

    want, want_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(hidden, kernel, bias)
    fused_grad = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2), has_aux=True))
    (got, (total, z_total, count)), got_grads = fused_grad(hidden, kernel, bias)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(total + z_loss * z_total, want, rtol=1e-5)
    assert float(count) == weights.sum()
    for name, g, w in zip(("d_hidden", "d_kernel", "d_bias"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=name)
    # Scaled like any gradient by the objective's cotangent (the train step divides by the token count).
    scaled = jax.grad(lambda h: 3.0 * fused(h, kernel, bias)[0])(hidden)
    np.testing.assert_allclose(scaled, 3.0 * np.asarray(want_grads[0]), atol=1e-5, rtol=1e-5)


def test_token_losses_summed_per_group_come_from_the_same_pass():
    """Loss by position during training: the same token losses, summed per group (here: position buckets of
    a chunked, padded length), with the group weights; together they are the total."""
    hidden, kernel, bias, targets, weights = problem(seed=6)
    batch, length = targets.shape
    groups = np.minimum(np.arange(length) // 10, 2)[None].repeat(batch, 0)  # [0, 10), [10, 20), [20, L)
    sums = jax.jit(lambda h: objective_sums(h, kernel, targets, weights, bias=bias, chunk=7, groups=groups,
                                            n_groups=3))(hidden)
    logits = np.asarray(hidden @ kernel + bias, np.float64)
    token = (np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
             - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0])
    for g in range(3):
        mask = (groups == g) * np.asarray(weights)
        np.testing.assert_allclose(sums.by_group[g], [(token * mask).sum(), mask.sum()], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sums.by_group).sum(0), [sums.total, sums.count], rtol=1e-5)


def test_objective_skips_gradients_nobody_asks_for():
    """A frozen output layer (LoRA) gets no [D, V] weight-gradient matmul: only hidden's is in the program."""
    hidden, kernel, _, targets, weights = problem(seed=4, batch=1, length=64, dim=16, vocab=1000)
    objective = lambda h, k: objective_sums(h, k, targets, weights, chunk=32)[0]  # noqa: E731
    both = jax.jit(jax.grad(objective, argnums=(0, 1))).lower(hidden, kernel).as_text()
    hidden_only = jax.jit(jax.grad(objective, argnums=0)).lower(hidden, kernel).as_text()
    assert both.count("dot_general") == 3 and hidden_only.count("dot_general") == 2
    np.testing.assert_allclose(jax.grad(objective)(hidden, kernel),
                               jax.grad(objective, argnums=(0, 1))(hidden, kernel)[0], rtol=1e-6)


def test_objective_refuses_gradients_of_its_parts():
    hidden, kernel, _, targets, weights = problem(seed=5)
    with pytest.raises(ValueError, match="differentiates its objective only"):
        jax.grad(lambda h: objective_sums(h, kernel, targets, weights)[1])(hidden)
