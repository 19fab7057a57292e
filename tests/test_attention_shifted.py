"""LongLoRA's shifted sparse attention (S²-Attn): every kernel under it equals a dense reference with group
masks, values and gradients; groups follow positions (packed documents, zig-zag order); bad settings are
refused."""

import functools
import re

import numpy as np
import pytest
from attention_cases import random_case
from test_attention_blockwise import TOL, outputs_and_grads

from ctxjax import ModelConfig, flops
from ctxjax.adaptation import AdaptationConfig
from ctxjax.attention.blockwise import blockwise_attention
from ctxjax.attention.ring import zigzag_order
from ctxjax.attention.shifted import shifted_sparse_attention
from ctxjax.attention.xla import xla_attention

GROUP = 8


def dense_reference(case, group):
    """Softmax attention written out per head: head h < H/2 sees keys of its own group pos // group, the other
    heads of the shifted group (pos + group/2) // group, always within the causal (or, `causal=False`, the
    symmetric), same-document (and window) mask."""
    q, k, v = (np.asarray(x, np.float64) for x in (case.q, case.k, case.v))
    n_heads, n_kv = q.shape[2], k.shape[2]
    pos, seg = case.q_positions.astype(np.int64), case.q_segment_ids
    out = np.zeros_like(q)
    for h in range(n_heads):
        shift = 0 if h < n_heads // 2 else group // 2
        kv = h // (n_heads // n_kv)
        for b in range(q.shape[0]):
            distance = pos[b][:, None] - pos[b][None, :]
            if not case.causal:
                distance = np.abs(distance)
            groups = (pos[b] + shift) // group
            same_group = groups[:, None] == groups[None, :]
            mask = (seg[b][:, None] == seg[b][None, :]) & (distance >= 0) & same_group
            if case.sliding_window:
                mask &= distance < case.sliding_window
            scores = case.scale * q[b, :, h] @ k[b, :, kv].T
            if case.alibi_slopes is not None:
                scores = scores - case.alibi_slopes[h] * distance
            scores = np.where(mask, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            out[b, :, h] = (probs / probs.sum(-1, keepdims=True)) @ v[b, :, kv]
    return out


KERNELS = {
    "xla": xla_attention,
    "blockwise": functools.partial(blockwise_attention, block_q=16, block_k=8),  # 96 = 6 x 16: padded rows
}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_every_kernel_under_s2_attention_equals_the_dense_group_reference(name, window, causal):
    # gaps: groups follow positions
    case = random_case(seed=3, length=90, max_gap=2, sliding_window=window, causal=causal)
    kernel = functools.partial(shifted_sparse_attention, KERNELS[name], group=GROUP)
    out, grads = outputs_and_grads(kernel, case)
    np.testing.assert_allclose(out, dense_reference(case, GROUP), **TOL)
    if name != "xla":  # gradients: the same as the reference kernel's under the same groups
        reference = functools.partial(shifted_sparse_attention, xla_attention, group=GROUP)
        _, want = outputs_and_grads(reference, case)
        for got, expected in zip(grads, want):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_groups_survive_the_zig_zag_order_of_ring_attention():
    """Zig-zag (for ring attention) permutes tokens but keeps their positions: the groups are the same."""
    case = random_case(seed=4, length=64, n_segments=2, alibi=False)
    kernel = functools.partial(shifted_sparse_attention, xla_attention, group=GROUP)
    order = np.asarray(zigzag_order(64, 4))
    permuted = case._replace(**{name: getattr(case, name)[:, order] for name in
                                ("q", "k", "v", "q_segment_ids", "kv_segment_ids", "q_positions",
                                 "kv_positions")})
    want = outputs_and_grads(kernel, case)[0][:, order]
    np.testing.assert_allclose(outputs_and_grads(kernel, permuted)[0], want, **TOL)


def test_mfu_counts_only_the_keys_inside_a_group():
    cfg = ModelConfig()
    assert flops.attended_keys(cfg, 1000, group=100) == 50 and flops.attended_keys(cfg, 60, group=100) == 30
    assert flops.attended_keys(cfg.replace(sliding_window=10), 1000, group=100) == 10 - 100 / 200
    assert flops.attended_keys(cfg, 1000) == 500  # group 0: full attention
    per_token = flops.flops_per_token(cfg, 1000, group=100)
    assert per_token == flops.flops_per_token(cfg, 100) and per_token < flops.flops_per_token(cfg, 1000)


@pytest.mark.parametrize("fields, message", [
    (dict(shifted_sparse_group=7), "shifted_sparse_group=7 must be an even int >= 0"),
    (dict(shifted_sparse_group=8, model=dict(n_heads=6, n_kv_heads=3, d_model=48)),
     "n_kv_heads=3 must be even (or n_kv_heads 1)"),
])
def test_bad_s2_settings_are_one_line_errors(fields, message):
    fields = dict(fields)
    cfg = ModelConfig(**fields.pop("model", {}))
    with pytest.raises(ValueError, match=re.escape(message)):
        AdaptationConfig(**fields).check(cfg)
