"""Ulysses attention on 8 simulated CPU devices equals the single-device reference, values and gradients:
packed segments, GQA (also with fewer K/V heads than the sequence axis), ALiBi, windows, soft caps."""

import functools

import jax
import numpy as np
import pytest
from attention_cases import random_case
from test_attention_blockwise import TOL, outputs_and_grads
from test_attention_ring import make_mesh

from ctxjax.attention.ulysses import kv_copies, ulysses_attention
from ctxjax.attention.xla import xla_attention

ulysses = functools.partial(ulysses_attention, block_q=16, block_k=16)


def assert_equal_to_reference(case, mesh):
    want_out, want_grads = outputs_and_grads(xla_attention, case)
    with jax.set_mesh(mesh):
        out, grads = outputs_and_grads(ulysses, case)
    np.testing.assert_allclose(out, want_out, **TOL)
    for name, got, want in zip(("dq", "dk", "dv", "d_slopes"), grads, want_grads):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL)


@pytest.mark.parametrize(
    "axes, n_heads, n_kv_heads",
    [(dict(sequence=4), 8, 4), (dict(sequence=4), 8, 2), (dict(sequence=8), 8, 1),
     (dict(data=2, sequence=4), 4, 4), (dict(data=2, tensor=2, sequence=2), 8, 4)],
    ids=["seq4-gqa", "seq4-kv-copied", "seq8-mqa", "data2-seq4-mha", "data2-tensor2-seq2"],
)
def test_ulysses_equals_single_device(axes, n_heads, n_kv_heads):
    case = random_case(seed=7, batch=2, length=64, n_heads=n_heads, n_kv_heads=n_kv_heads)
    assert_equal_to_reference(case, make_mesh(**axes))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_ulysses_with_a_window_a_soft_cap_and_pose_gaps_equals_single_device(causal):
    case = random_case(seed=11, batch=1, length=64, n_heads=4, n_kv_heads=4, sliding_window=13,
                       logit_softcap=1.5, max_gap=3, causal=causal)
    assert_equal_to_reference(case, make_mesh(sequence=4))


def test_ulysses_bidirectional_packed_gqa_equals_single_device():
    case = random_case(seed=7, batch=2, length=64, n_heads=8, n_kv_heads=2, causal=False)
    assert_equal_to_reference(case, make_mesh(sequence=4))


def test_heads_that_do_not_split_over_the_axis_are_refused_in_one_line():
    assert kv_copies(8, 2, 4) == 2 and kv_copies(8, 8, 4) == 1
    case = random_case(length=32, n_heads=6, n_kv_heads=3)
    with jax.set_mesh(make_mesh(sequence=4)), pytest.raises(ValueError, match="execution.attention='ring'"):
        ulysses_attention(case.q, case.k, case.v, **case.kwargs())
    case = random_case(length=32, n_heads=12, n_kv_heads=3)  # query heads split, 3 K/V heads do not
    with jax.set_mesh(make_mesh(sequence=4)), pytest.raises(ValueError, match="3 key/value heads"):
        ulysses_attention(case.q, case.k, case.v, **case.kwargs())


def test_needs_a_sequence_mesh():
    case = random_case(length=32)
    with pytest.raises(ValueError, match="ulysses attention needs an active mesh"):
        ulysses_attention(case.q, case.k, case.v, **case.kwargs())
