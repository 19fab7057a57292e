"""Ring attention on 8 simulated CPU devices equals the single-device reference, values and gradients."""

import functools

import jax
import numpy as np
import pytest
from attention_cases import random_case
from jax.sharding import AxisType
from test_attention_blockwise import TOL, outputs_and_grads

from ctxjax.attention.ring import ring_attention, zigzag_batch, zigzag_order
from ctxjax.attention.shifted import shifted_sparse_attention
from ctxjax.attention.xla import xla_attention

ring = functools.partial(ring_attention, block_q=8, block_k=8)


def make_mesh(**axes):
    return jax.make_mesh(tuple(axes.values()), tuple(axes), axis_types=(AxisType.Auto,) * len(axes))


def assert_ring_equals_xla(case, wrap=lambda kernel: kernel, **axes):
    """Ring (wrapped as the reference is) on a mesh of `axes` (default: a sequence axis of 4) equals the
    single-device reference, values and gradients."""
    want_out, want_grads = outputs_and_grads(wrap(xla_attention), case)
    with jax.set_mesh(make_mesh(**(axes or {"sequence": 4}))):
        out, grads = outputs_and_grads(wrap(ring), case)
    np.testing.assert_allclose(out, want_out, **TOL)
    for name, got, want in zip(("dq", "dk", "dv", "d_slopes"), grads, want_grads):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL)


@pytest.fixture(scope="module")
def case_and_reference():
    case = random_case(seed=7, batch=2, length=128, n_heads=4, n_kv_heads=2)
    return case, outputs_and_grads(xla_attention, case)


@pytest.mark.parametrize(
    "axes",
    [dict(sequence=4), dict(sequence=8), dict(data=2, sequence=4), dict(data=2, tensor=2, sequence=2)],
    ids=["seq4", "seq8", "data2-seq4", "data2-tensor2-seq2"],
)
def test_ring_equals_single_device(axes, case_and_reference):
    case, (want_out, want_grads) = case_and_reference
    with jax.set_mesh(make_mesh(**axes)):
        out, grads = outputs_and_grads(ring, case)
    np.testing.assert_allclose(out, want_out, **TOL)
    for name, got, want in zip(("dq", "dk", "dv", "d_slopes"), grads, want_grads):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL)


@pytest.mark.parametrize("window", [0, 21], ids=["bidirectional", "bidirectional-window"])
def test_ring_bidirectional_equals_single_device(window):
    """Non-causal: every shard's keys reach every query of the same document (within the window)."""
    case = random_case(seed=12, batch=2, length=64, n_heads=4, n_kv_heads=2, sliding_window=window,
                       causal=False)
    assert_ring_equals_xla(case)


def test_ring_with_a_logit_soft_cap_equals_single_device():
    case = random_case(seed=11, batch=2, length=64, n_heads=4, n_kv_heads=2, logit_softcap=1.5)
    assert_ring_equals_xla(case)


@pytest.mark.parametrize("s2_group", [0, 16], ids=["window", "window+s2"])
def test_ring_with_a_sliding_window_equals_single_device(s2_group):
    """Also under LongLoRA's S²-Attn, which the ring kernel sees as stretched positions and a window."""
    case = random_case(seed=11, batch=1, length=128, n_heads=4, n_kv_heads=2, sliding_window=21)

    def wrap(kernel):
        return functools.partial(shifted_sparse_attention, kernel, group=s2_group) if s2_group else kernel

    assert_ring_equals_xla(case, wrap=wrap)


def test_zigzag_order_gives_the_same_attention(case_and_reference):
    """Tokens reordered so each shard holds an early and a late chunk: same result, reordered."""
    case, (want_out, _) = case_and_reference
    order = zigzag_order(case.q.shape[1], 4)
    shuffled = case._replace(**{f: getattr(case, f)[:, order] for f in
                                ("q", "k", "v", "q_segment_ids", "kv_segment_ids", "q_positions",
                                 "kv_positions")})
    with jax.set_mesh(make_mesh(sequence=4)):
        out, _ = outputs_and_grads(ring, shuffled)
    undo = np.argsort(order)
    # The test cotangent is drawn per index, not per token, so only the forward is comparable here.
    np.testing.assert_allclose(np.asarray(out)[:, undo], want_out, **TOL)
    assert sorted(order.tolist()) == list(range(case.q.shape[1]))
    np.testing.assert_array_equal(order[:32], np.r_[0:16, 112:128])


def test_zigzag_batch_moves_every_field_together():
    tokens = np.arange(2 * 16).reshape(2, 16)
    batch = {"tokens": tokens, "targets": tokens + 1, "positions": tokens % 16}
    shuffled = zigzag_batch(batch, 2)
    np.testing.assert_array_equal(shuffled["tokens"][0], np.r_[0:4, 12:16, 4:8, 8:12])
    np.testing.assert_array_equal(shuffled["targets"], shuffled["tokens"] + 1)
    np.testing.assert_array_equal(shuffled["positions"], shuffled["tokens"] % 16)


def test_needs_a_sequence_mesh():
    case = random_case(length=32)
    with pytest.raises(ValueError, match="jax.set_mesh"):
        ring_attention(case.q, case.k, case.v, **case.kwargs())
    with jax.set_mesh(make_mesh(data=8)), pytest.raises(ValueError, match="'sequence' axis"):
        ring_attention(case.q, case.k, case.v, **case.kwargs())


def test_length_must_divide_over_shards():
    case = random_case(length=30)
    with jax.set_mesh(make_mesh(sequence=4)), \
            pytest.raises(ValueError, match="multiple of the 'sequence' axis"):
        ring_attention(case.q, case.k, case.v, **case.kwargs())
