"""The fused CPU kernel equals the xla reference on the whole contract, and runs blockwise where it cannot."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import cache_case, random_case
from test_attention_blockwise import assert_same_as_xla, outputs_and_grads
from test_attention_ring import make_mesh

from ctxjax.attention import cpu
from ctxjax.attention.blockwise import blockwise_attention
from ctxjax.attention.xla import xla_attention

pytestmark = pytest.mark.skipif(not cpu.kernel_available(),
                                reason="no C++ compiler: the cpu kernel is blockwise")


@pytest.mark.parametrize(
    "case",
    [
        random_case(length=96, n_heads=4, n_kv_heads=2),  # packed rows, GQA, ALiBi, RoPE
        # several tiles each way
        random_case(seed=1, length=300, n_heads=8, n_kv_heads=2, head_dim=64, alibi=False),
        random_case(seed=2, length=70, n_heads=4, n_kv_heads=1, head_dim=32, alibi=False),  # multi-query
        random_case(seed=3, length=64, n_heads=2, n_kv_heads=2, n_segments=1, max_gap=3),  # PoSE-style gaps
        cache_case(),  # decoding: few queries against a partly empty cache
        random_case(seed=7, length=333, sliding_window=13),  # Mistral's window, over several key tiles
        cache_case(sliding_window=7),
        random_case(seed=9, length=80, logit_softcap=1.5, sliding_window=30),  # Gemma 2's cap, with ALiBi too
        random_case(seed=10, batch=3, length=5, n_heads=6, n_kv_heads=3, n_segments=2),  # shorter than a tile
    ],
    ids=["packed-gqa-alibi-rope", "tiles-d64", "mqa", "pose-gaps", "kv-cache", "window", "window-kv-cache",
         "softcap", "short"],
)
def test_equals_xla(case):
    assert_same_as_xla(cpu.cpu_attention, case)


@pytest.mark.parametrize(
    "case",
    [
        random_case(length=96, n_heads=4, n_kv_heads=2),  # packed rows, GQA, ALiBi, RoPE
        random_case(seed=1, length=300, n_heads=8, n_kv_heads=2, head_dim=64, alibi=False),  # padded key tile
        random_case(seed=3, length=64, n_heads=2, n_kv_heads=2, n_segments=1, max_gap=3),  # PoSE-style gaps
        random_case(seed=7, length=333, sliding_window=13),  # symmetric window over several tiles
        random_case(seed=9, length=80, logit_softcap=1.5, sliding_window=30),  # cap, window and ALiBi
        random_case(seed=10, batch=3, length=5, n_heads=6, n_kv_heads=3, n_segments=2),  # shorter than a tile
        # one document, no bias: tiles every query sees whole, but for the padded keys
        random_case(seed=4, length=70, n_segments=1, alibi=False),
    ],
    ids=["packed-gqa-alibi-rope", "tiles-d64", "pose-gaps", "window", "softcap", "short", "unmasked-padded"],
)
def test_bidirectional_equals_xla(case):
    case = case._replace(causal=False)
    kernel = functools.partial(cpu.cpu_attention, **case.kwargs())
    assert cpu.FORWARD in jax.jit(kernel).lower(case.q, case.k, case.v).as_text()  # native, not blockwise
    assert_same_as_xla(cpu.cpu_attention, case)


def test_query_rows_that_see_nothing_give_zeros():
    """A query whose segment has no key (cache slots all empty) gets output 0 and zero gradients, as
    blockwise."""
    case = cache_case(q_len=3, filled=3)
    case = case._replace(kv_segment_ids=np.zeros_like(case.kv_segment_ids))
    out, grads = outputs_and_grads(cpu.cpu_attention, case)
    np.testing.assert_array_equal(out, 0.0)
    for grad in grads:
        np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_array_equal(out, outputs_and_grads(blockwise_attention, case)[0])


def test_runs_the_native_kernel_where_it_can():
    case = random_case(seed=4, batch=1, length=40)
    kernel = functools.partial(cpu.cpu_attention, **case.kwargs())
    assert cpu.FORWARD in jax.jit(kernel).lower(case.q, case.k, case.v).as_text()
    # A head_dim that is no multiple of 16 and a multi-device mesh take the blockwise kernel.
    odd = random_case(seed=4, batch=1, length=40, head_dim=24)
    odd_kernel = functools.partial(cpu.cpu_attention, **odd.kwargs())
    assert cpu.FORWARD not in jax.jit(odd_kernel).lower(odd.q, odd.k, odd.v).as_text()
    want = xla_attention(odd.q, odd.k, odd.v, **odd.kwargs())
    np.testing.assert_allclose(odd_kernel(odd.q, odd.k, odd.v), want, atol=1e-5, rtol=1e-5)
    with jax.set_mesh(make_mesh(data=2)):
        assert cpu.FORWARD not in jax.jit(kernel).lower(case.q, case.k, case.v).as_text()


def test_bfloat16_is_computed_in_float32():
    case = random_case(seed=6, batch=1, length=50)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (case.q, case.k, case.v))
    kernel = functools.partial(cpu.cpu_attention, **case.kwargs())
    assert cpu.FORWARD in jax.jit(kernel).lower(q, k, v).as_text()
    out = kernel(q, k, v)
    assert out.dtype == jnp.bfloat16
    want = xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)), **case.kwargs())
    np.testing.assert_allclose(out.astype(jnp.float32), want, atol=1e-2)  # one bfloat16 rounding of the out
    grads = jax.grad(lambda q, k, v: kernel(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in grads)


def test_a_machine_without_a_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CTXJAX_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        assert cpu.kernel_available.__wrapped__() is False
    assert "runs as 'blockwise'" in caplog.text and "CXX" in caplog.text


def test_the_built_library_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXJAX_CACHE", str(tmp_path))
    first = cpu._build("c++", ["-march=native"])
    assert first.parent == tmp_path and first.exists()
    mtime = first.stat().st_mtime_ns
    assert cpu._build("c++", ["-march=native"]) == first and first.stat().st_mtime_ns == mtime
