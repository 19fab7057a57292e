"""The blockwise kernel equals the xla reference, values and gradients, on every part of the contract."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import cache_case, random_case

from ctxjax.attention import get_kernel
from ctxjax.attention.blockwise import blockwise_attention
from ctxjax.attention.xla import xla_attention

TOL = dict(atol=1e-5, rtol=1e-5)


def outputs_and_grads(kernel, case):
    """Output and gradients w.r.t. q, k, v (and ALiBi slopes) of <output, fixed random cotangent>."""
    cotangent = np.random.default_rng(1).standard_normal(case.q.shape).astype(np.float32)
    kwargs = case.kwargs()
    slopes = kwargs.pop("alibi_slopes")

    def loss(q, k, v, slopes):
        out = kernel(q, k, v, alibi_slopes=slopes, **kwargs)
        return jnp.sum(out * cotangent), out

    argnums = (0, 1, 2) if slopes is None else (0, 1, 2, 3)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(case.q, case.k, case.v, slopes)
    return out, grads


def assert_same_as_xla(kernel, case):
    out, grads = outputs_and_grads(kernel, case)
    want_out, want_grads = outputs_and_grads(xla_attention, case)
    np.testing.assert_allclose(out, want_out, **TOL)
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        np.testing.assert_allclose(got, want, err_msg=name, **TOL)
    if len(grads) == 4:  # one float32 sum over every (query, key) pair, terms scaled by distances up to L
        np.testing.assert_allclose(grads[3], want_grads[3], err_msg="d_slopes", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("block_q, block_k", [(32, 32), (16, 48), (40, 24), (512, 512)],
                         ids=["square", "wide-keys", "not-multiples", "larger-than-length"])
def test_packed_gqa_alibi_rope(block_q, block_k, causal):
    kernel = functools.partial(blockwise_attention, block_q=block_q, block_k=block_k)
    assert_same_as_xla(kernel, random_case(length=96, n_heads=4, n_kv_heads=2, causal=causal))


@pytest.mark.parametrize(
    "case",
    [
        random_case(seed=2, length=70, n_heads=4, n_kv_heads=1, alibi=False),  # multi-query, no ALiBi
        random_case(seed=3, length=64, n_heads=2, n_kv_heads=2, n_segments=1, max_gap=3),  # PoSE-style gaps
        cache_case(),  # decoding: few queries against a partly empty cache
        random_case(seed=7, length=96, sliding_window=13),  # Mistral's window, not a multiple of the block
        random_case(seed=8, length=64, n_segments=1, max_gap=2, sliding_window=20),  # window over PoSE gaps
        cache_case(sliding_window=7),
        random_case(seed=9, length=80, logit_softcap=1.5, sliding_window=30),  # Gemma 2's cap, with ALiBi too
    ],
    ids=["mqa-no-alibi", "pose-gaps", "kv-cache", "window", "window-pose", "window-kv-cache", "softcap"],
)
def test_other_layouts(case):
    assert_same_as_xla(functools.partial(blockwise_attention, block_q=16, block_k=16), case)


@pytest.mark.parametrize(
    "case",
    [
        random_case(seed=2, length=70, n_heads=4, n_kv_heads=1, alibi=False),  # MQA, padded keys, no window
        random_case(seed=3, length=64, n_heads=2, n_kv_heads=2, n_segments=1, max_gap=3),  # PoSE-style gaps
        random_case(seed=7, length=90, sliding_window=13),  # ModernBERT-style symmetric window, padded keys
        random_case(seed=8, length=64, n_segments=1, max_gap=2, sliding_window=20),  # window over PoSE gaps
        random_case(seed=9, length=80, logit_softcap=1.5, sliding_window=30),  # cap, window and ALiBi
    ],
    ids=["mqa-padded", "pose-gaps", "window", "window-pose", "softcap"],
)
def test_bidirectional_layouts(case):
    assert_same_as_xla(functools.partial(blockwise_attention, block_q=16, block_k=16),
                       case._replace(causal=False))


def test_xla_bidirectional_is_softmax_over_allowed_keys():
    """Non-causal `xla` against numpy: each query's softmax runs over the keys of its own document within
    |pos_i - pos_j| < W, with ALiBi's symmetric bias -slope * |pos_i - pos_j| and Gemma 2's soft cap."""
    case = random_case(seed=11, batch=2, length=40, n_heads=4, n_kv_heads=2, max_gap=1, sliding_window=6,
                       logit_softcap=2.0, causal=False)
    out = np.asarray(xla_attention(case.q, case.k, case.v, **case.kwargs()))
    group = case.q.shape[2] // case.k.shape[2]
    future_keys_seen = False
    for b in range(case.q.shape[0]):
        for h in range(case.q.shape[2]):
            q, k, v = case.q[b, :, h], case.k[b, :, h // group], case.v[b, :, h // group]
            scores = q.astype(np.float64) @ k.T * case.scale
            scores = case.logit_softcap * np.tanh(scores / case.logit_softcap)
            distance = np.abs(case.q_positions[b][:, None] - case.kv_positions[b][None, :])
            scores -= case.alibi_slopes[h] * distance
            allowed = (case.q_segment_ids[b][:, None] == case.kv_segment_ids[b][None, :]) & (
                distance < case.sliding_window)
            for i in range(len(q)):
                logits = scores[i, allowed[i]]
                p = np.exp(logits - logits.max())
                np.testing.assert_allclose(out[b, i, h], p @ v[allowed[i]] / p.sum(), **TOL)
            after = case.q_positions[b][:, None] < case.kv_positions[b][None, :]
            future_keys_seen |= (allowed & after).any()
    assert future_keys_seen


def test_registered_default_blocks():
    assert get_kernel("blockwise") is blockwise_attention
    case = random_case(seed=4, batch=1, length=40)
    np.testing.assert_allclose(blockwise_attention(case.q, case.k, case.v, **case.kwargs()),
                               xla_attention(case.q, case.k, case.v, **case.kwargs()), **TOL)


def test_hidden_key_blocks_are_skipped():
    """Keys after every query of a block are never touched: NaNs there do not reach those queries."""
    case = random_case(seed=5, batch=1, length=128, n_segments=1)
    poisoned_k, poisoned_v = case.k.copy(), case.v.copy()
    poisoned_k[:, 64:] = np.nan
    poisoned_v[:, 64:] = np.nan
    out = blockwise_attention(case.q, poisoned_k, poisoned_v, **case.kwargs(), block_q=32, block_k=32)
    want = xla_attention(case.q, case.k, case.v, **case.kwargs())
    np.testing.assert_allclose(out[:, :64], want[:, :64], **TOL)


def test_key_blocks_before_the_window_are_skipped():
    """With a window of 16, queries 96.. see no key before 81: NaNs in keys 0..63 do not reach them."""
    case = random_case(seed=5, batch=1, length=128, n_segments=1, sliding_window=16)
    poisoned_k, poisoned_v = case.k.copy(), case.v.copy()
    poisoned_k[:, :64] = np.nan
    poisoned_v[:, :64] = np.nan
    out = blockwise_attention(case.q, poisoned_k, poisoned_v, **case.kwargs(), block_q=32, block_k=32)
    want = xla_attention(case.q, case.k, case.v, **case.kwargs())
    np.testing.assert_allclose(out[:, 96:], want[:, 96:], **TOL)
    assert np.isnan(np.asarray(out[:, 64:96])).any()  # ... while block 64..95 does reach back into them


def test_bidirectional_key_blocks_outside_the_window_are_skipped():
    """Non-causal with a window of 16 each side: queries 32..63 see keys 17..78 only; NaNs in keys 0..15 and
    96..127 do not reach them, while keys after the queries are seen (no causality)."""
    case = random_case(seed=5, batch=1, length=128, n_segments=1, sliding_window=16, causal=False)
    poisoned_k, poisoned_v = case.k.copy(), case.v.copy()
    poisoned_k[:, :16], poisoned_k[:, 96:] = np.nan, np.nan
    poisoned_v[:, :16], poisoned_v[:, 96:] = np.nan, np.nan
    out = blockwise_attention(case.q, poisoned_k, poisoned_v, **case.kwargs(), block_q=32, block_k=16)
    want = xla_attention(case.q, case.k, case.v, **case.kwargs())
    np.testing.assert_allclose(out[:, 32:64], want[:, 32:64], **TOL)
    causal = xla_attention(case.q, case.k, case.v, **case._replace(causal=True).kwargs())
    assert not np.allclose(want[:, 32:64], causal[:, 32:64], atol=1e-3)


def test_xla_window_mask_is_mistrals():
    """Query i sees keys i - W + 1 .. i of its own document (transformers' sliding_window_overlay)."""
    from ctxjax.attention.xla import attention_mask

    positions = np.arange(10)[None]
    segments = np.ones((1, 10), np.int32)
    mask = np.asarray(attention_mask(segments, segments, positions, positions, sliding_window=3))[0, 0, 0]
    want = np.array([[0 <= i - j < 3 for j in range(10)] for i in range(10)])
    np.testing.assert_array_equal(mask, want)


def test_xla_bidirectional_window_mask_is_modernberts():
    """Non-causal, W = ModernBERT's local_attention // 2 + 1: |i - j| <= local_attention // 2, as in
    transformers' sliding_window_bidirectional_overlay (ModernBertAttention passes config.sliding_window +
    1)."""
    from ctxjax.attention.xla import attention_mask

    positions = np.arange(10)[None]
    segments = np.array([[1] * 6 + [2] * 4], np.int32)
    local_attention = 4
    mask = np.asarray(attention_mask(segments, segments, positions, positions,
                                     sliding_window=local_attention // 2 + 1, causal=False))[0, 0, 0]
    want = np.array([[abs(i - j) <= local_attention // 2 and segments[0, i] == segments[0, j]
                      for j in range(10)] for i in range(10)])
    np.testing.assert_array_equal(mask, want)


def test_bfloat16_runs_close_to_reference():
    case = random_case(seed=6, batch=1, length=64, alibi=False)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (case.q, case.k, case.v))
    out = blockwise_attention(q, k, v, **case.kwargs(), block_q=16, block_k=16)
    assert out.dtype == jnp.bfloat16
    want = xla_attention(q, k, v, **case.kwargs()).astype(np.float32)
    np.testing.assert_allclose(out.astype(np.float32), want, atol=3e-2)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k=np.zeros((2, 96, 3, 16), np.float32), v=np.zeros((2, 96, 3, 16), np.float32)), "multiple of"),
        (dict(q_positions=np.zeros((2, 95), np.int32)), "q_positions must be"),
        (dict(alibi_slopes=np.zeros((2,), np.float32)), "alibi_slopes must be"),
        (dict(block_q=0), "block sizes"),
        (dict(sliding_window=-1), "sliding_window must be"),
        (dict(logit_softcap=-1.0), "logit_softcap must be a number >= 0"),
        (dict(causal="no"), "causal must be True"),
    ],
)
def test_bad_inputs_name_the_fix(change, message):
    case = random_case(length=96)
    args = dict(q=case.q, k=case.k, v=case.v, **case.kwargs())
    args.update(change)
    with pytest.raises(ValueError, match=message):
        blockwise_attention(**args)
