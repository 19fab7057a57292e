"""Fused kernels (cudnn, splash) and `auto`: the fast-path check, the fallback, and splash itself
(interpreted)."""

import functools
import logging

import jax
import numpy as np
import pytest
from attention_cases import cache_case, random_case
from test_attention_blockwise import assert_same_as_xla, outputs_and_grads
from test_attention_ring import make_mesh

from ctxjax.attention import KERNELS, get_kernel
from ctxjax.attention.auto import choose_kernel
from ctxjax.attention.common import warn_fallback
from ctxjax.attention.fused import index_order_is_position_order, splash_fused, splash_tile
from ctxjax.attention.ring import ring_attention
from ctxjax.attention.shifted import group_segments, shifted_sparse_attention
from ctxjax.attention.xla import xla_attention


def ids_and_positions(case):
    return case.q_segment_ids, case.kv_segment_ids, case.q_positions, case.kv_positions


def test_fast_path_check():
    packed = random_case(length=64)
    assert index_order_is_position_order(*ids_and_positions(packed))
    assert not index_order_is_position_order(*ids_and_positions(cache_case()))  # queries are not the keys
    pose = random_case(length=64, max_gap=3)  # gaps keep positions increasing: still index order
    assert index_order_is_position_order(*ids_and_positions(pose))
    seg, pos = packed.q_segment_ids, packed.q_positions
    swapped = pos.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert not index_order_is_position_order(seg, seg, swapped, swapped)
    returning = seg.copy()
    returning[:, -1] = 1  # segment 1 comes back after later segments
    assert not index_order_is_position_order(returning, returning, pos, pos)
    # S²-Attn's (segment, group) ids keep an ordinary batch on the fused kernels' fast path.
    for shift in (0, 8):
        groups = group_segments(seg, pos, 16, shift)
        assert index_order_is_position_order(groups, groups, pos, pos) and groups.max() > seg.max()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name", ["cudnn", "splash", "auto"])
def test_off_platform_kernels_equal_xla(name, causal):
    """On CPU the fused kernels are blockwise; every registered name satisfies the contract."""
    assert_same_as_xla(get_kernel(name), random_case(seed=8, length=48, causal=causal))


def test_a_requested_kernel_that_cannot_run_says_why(caplog):
    warn_fallback.cache_clear()  # said once per process and reason
    with caplog.at_level(logging.WARNING):
        assert_same_as_xla(get_kernel("splash"), random_case(seed=8, length=48))
    assert "attention 'splash' runs as 'blockwise': the step is compiled for cpu, not TPU" in caplog.text


@pytest.mark.parametrize("length, window, tiles, s2_group, softcap, causal",
                         [(128, 0, (128, 128), 0, 0.0, True), (256, 40, (256, 128), 0, 0.0, True),
                          (128, 0, (128, 128), 32, 0.0, True), (128, 0, (128, 128), 0, 1.5, True),
                          (640, 0, (128, 128), 0, 0.0, True), (256, 0, (128, 128), 0, 1.5, False),
                          (256, 40, (256, 128), 0, 0.0, False)],
                         ids=["causal", "window-larger-tiles", "s2-groups", "softcap",
                              "five-key-tiles-separate-dq-pass", "bidirectional-softcap",
                              "bidirectional-window"])
def test_splash_interpreted_equals_xla(length, window, tiles, s2_group, softcap, causal):
    case = random_case(seed=9, batch=1, length=length, n_heads=2, n_kv_heads=1, head_dim=32, alibi=False,
                       sliding_window=window, logit_softcap=softcap, causal=causal)

    def splash(q, k, v, *, q_segment_ids, scale, sliding_window, logit_softcap, causal, **_):
        return splash_fused(q, k, v, q_segment_ids, scale, sliding_window=sliding_window,
                            logit_softcap=logit_softcap, block_q=tiles[0], block_k=tiles[1], interpret=True,
                            causal=causal)

    def reference(kernel):  # LongLoRA's S²-Attn reaches splash as segment ids, which splash takes natively
        return functools.partial(shifted_sparse_attention, kernel, group=s2_group) if s2_group else kernel

    out, grads = outputs_and_grads(reference(splash), case)
    want_out, want_grads = outputs_and_grads(reference(xla_attention), case)
    np.testing.assert_allclose(out, want_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_windowed_fast_path_needs_consecutive_positions():
    from ctxjax.attention.fused import _index_order_fits

    packed, pose = random_case(length=64), random_case(length=64, max_gap=3)
    assert _index_order_fits(*ids_and_positions(packed), sliding_window=8)
    assert _index_order_fits(*ids_and_positions(pose), sliding_window=0)
    assert not _index_order_fits(*ids_and_positions(pose), sliding_window=8)  # 8 indices span > 8 positions


def test_bidirectional_fast_path_needs_only_equal_segments_without_a_window():
    """Non-causal without a window, positions play no part: any order of tokens fits (splash compares segment
    ids pair by pair), a KV cache (other ids on the key side) does not; with a window, as causal."""
    from ctxjax.attention.fused import _index_order_fits

    packed, pose = random_case(length=64), random_case(length=64, max_gap=3)
    order = np.random.default_rng(0).permutation(64)
    shuffled = [x[:, order] for x in ids_and_positions(packed)]
    assert not _index_order_fits(*shuffled, sliding_window=0)
    assert _index_order_fits(*shuffled, sliding_window=0, causal=False)
    assert not _index_order_fits(*ids_and_positions(cache_case()), sliding_window=0, causal=False)
    assert _index_order_fits(*ids_and_positions(packed), sliding_window=8, causal=False)
    assert not _index_order_fits(*ids_and_positions(pose), sliding_window=8, causal=False)
    assert not _index_order_fits(*shuffled, sliding_window=8, causal=False)


def test_splash_tiles_divide_the_length():
    assert [splash_tile(b, 1024) for b in (512, 384, 100, 4096)] == [512, 256, 128, 1024]
    assert splash_tile(512, 384) == 384 and splash_tile(256, 384) == 128


def test_auto_choice():
    assert choose_kernel(256, 256, "cpu") is xla_attention
    assert choose_kernel(512, 512, "cpu") is KERNELS["cpu"]
    assert choose_kernel(8192, 8192, "cpu") is KERNELS["cpu"]
    assert choose_kernel(8192, 8192, "gpu") is KERNELS["cudnn"]
    assert choose_kernel(8192, 8192, "tpu") is KERNELS["splash"]
    with jax.set_mesh(make_mesh(data=2, sequence=4)):
        assert choose_kernel(8192, 8192, "cpu") is ring_attention
        assert choose_kernel(1, 8192, "cpu") is xla_attention  # decoding: one query row, not sharded


def test_unknown_kernel_lists_the_names():
    with pytest.raises(ValueError, match="choose one of"):
        get_kernel("flash")


@pytest.mark.parametrize("window", [0, 65], ids=["full-mask", "symmetric-window"])
def test_bidirectional_splash_compiles_for_tpu(libtpu, window):
    """Mosaic takes splash's non-causal masks (a FullMask, a symmetric LocalMask), forward and backward, under
    a 4-chip v5e mesh (compiled here on the CPU host by libtpu)."""
    import jax.numpy as jnp
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from ctxjax.attention.fused import splash_attention
    from ctxjax.plan.chips import parse_topology
    from ctxjax.plan.devices import tpu_devices

    mesh = Mesh(np.array(tpu_devices(parse_topology("v5e:2x2"))), ("data",), axis_types=(AxisType.Auto,))
    batch, length, head_dim = 4, 256, 128

    def spec(*shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P("data")))

    def grads(q, k, v, segment_ids, positions):
        def loss(q, k, v):
            out = splash_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                   q_positions=positions, kv_positions=positions, scale=head_dim ** -0.5,
                                   sliding_window=window, causal=False)
            return out.astype(jnp.float32).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    with jax.set_mesh(mesh):
        ids = spec(batch, length, dtype=jnp.int32)
        compiled = jax.jit(grads).lower(spec(batch, length, 2, head_dim), spec(batch, length, 1, head_dim),
                                        spec(batch, length, 1, head_dim), ids, ids).compile()
    assert 'custom_call_target="tpu_custom_call"' in compiled.as_text()


def test_cudnn_says_it_takes_no_bidirectional_window(monkeypatch):
    """jax.nn.dot_product_attention's cuDNN path takes no window to the right of the query: a non-causal
    window runs blockwise, saying so; non-causal without a window and a causal window stay on cuDNN."""
    import jax.numpy as jnp

    from ctxjax.attention import fused

    monkeypatch.setattr(fused, "target_platform", lambda: "gpu")
    q = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
    assert "no non-causal window" in fused.cudnn_unusable(q, q, None, 0.0, sliding_window=65, causal=False)
    assert fused.cudnn_unusable(q, q, None, 0.0, sliding_window=0, causal=False) is None
    assert fused.cudnn_unusable(q, q, None, 0.0, sliding_window=65, causal=True) is None
