"""Jitted forward passes for tests: one compilation per (config, shape), shared across test files."""

import functools

import jax

from ctxjax import Transformer


@functools.cache
def _compiled(cfg):
    return jax.jit(lambda p, t, pos, seg: Transformer(cfg).apply({"params": p}, t, positions=pos, segment_ids=seg))


def forward(cfg, params, tokens, positions=None, segment_ids=None):
    return _compiled(cfg)(params, tokens, positions, segment_ids)
