"""The whole model gives the same logits and gradients with the blockwise, cpu and ring kernels as with
xla."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import packed_positions
from test_attention_ring import make_mesh

from ctxjax import ModelConfig, Transformer, init_params
from ctxjax.attention import cpu
from ctxjax.execution import ExecutionConfig
from ctxjax.loss import chunked_cross_entropy
from ctxjax.positions import Alibi, Rope

LENGTH = 64


def packed_batch(seed=0, batch=2, vocab=97):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, LENGTH)).astype(np.int32)
    segment_ids = np.sort(rng.integers(1, 4, (batch, LENGTH)), axis=1).astype(np.int32)
    return tokens, packed_positions(segment_ids), segment_ids


def logits_and_grads(cfg, params, tokens, positions, segment_ids, execution=ExecutionConfig()):
    model = Transformer(cfg, execution)

    def loss(params):
        logits = model.apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


@pytest.mark.parametrize("position, window", [(Rope(), 0), (Alibi(), 0), (Rope(), 10)],
                         ids=["rope", "alibi", "rope-window"])
def test_blockwise_model_equals_xla_model(position, window):
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, position=position,
                      sliding_window=window)
    params = init_params(cfg, jax.random.PRNGKey(0))
    batch = packed_batch()
    want_logits, want_grads = logits_and_grads(cfg, params, *batch)
    for kernel, mesh in (("blockwise", None), ("cpu", None), ("ring", make_mesh(data=2, sequence=4))):
        # Tiles from the config, smaller than the (per-shard) length: several unequal blocks per row.
        blocked = ExecutionConfig(attention=kernel, attention_block_q=16, attention_block_k=8)
        if mesh is None:
            logits, grads = logits_and_grads(cfg, params, *batch, blocked)
        else:
            with jax.set_mesh(mesh):
                logits, grads = logits_and_grads(cfg, params, *batch, blocked)
        np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=1e-5, err_msg=kernel)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4, err_msg=kernel)


def test_chunked_loss_from_hidden_equals_loss_from_logits():
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=1, n_heads=4)
    params = init_params(cfg, jax.random.PRNGKey(1))
    tokens, positions, segment_ids = packed_batch(seed=1)
    targets = np.roll(tokens, -1, axis=1)
    model = Transformer(cfg, ExecutionConfig(attention="blockwise"))
    hidden = model.apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids,
                         return_hidden=True)
    logits = model.apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids)
    target_logits = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    want = jnp.mean(jax.nn.logsumexp(logits, -1) - target_logits)
    got = chunked_cross_entropy(hidden, params["lm_head"]["kernel"], targets, chunk=24)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["blockwise", "cpu"])
def test_remat_attention_keeps_the_kernel_residuals(kernel):
    """`remat="attention"` gives the gradients of no remat, and its backward pass runs no second attention
    forward (the blockwise forward's while loops, the cpu kernel's forward call) where `remat="full"` does."""
    if kernel == "cpu" and not cpu.kernel_available():
        pytest.skip("no C++ compiler: the cpu kernel is blockwise")
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)
    run = ExecutionConfig(attention=kernel, attention_block_q=16, attention_block_k=16)
    params = init_params(cfg, jax.random.PRNGKey(0))
    batch = packed_batch()
    want_logits, want_grads = logits_and_grads(cfg, params, *batch, run)
    logits, grads = logits_and_grads(cfg, params, *batch, run.replace(remat="attention"))
    np.testing.assert_allclose(logits, want_logits, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)

    def forwards(remat):
        model = Transformer(cfg, run.replace(remat=remat))
        tokens, positions, segment_ids = batch

        def loss(params):
            logits = model.apply({"params": params}, tokens, positions=positions, segment_ids=segment_ids)
            return jnp.sum(logits)

        text = jax.jit(jax.grad(loss)).lower(params).as_text()
        if kernel == "cpu":
            return text.count("ctxjax_cpu_attention_forward")
        return text.count("stablehlo.while")

    assert forwards("attention") < forwards("full")
