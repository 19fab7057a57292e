"""Jitted forward passes for tests: one compilation per (config, execution, shape), shared by the test
files."""

import functools

import jax

from ctxjax import Transformer
from ctxjax.execution import ExecutionConfig


@functools.cache
def _compiled(cfg, execution):
    model = Transformer(cfg, execution)
    return jax.jit(lambda p, t, pos, seg: model.apply({"params": p}, t, positions=pos, segment_ids=seg))


def forward(cfg, params, tokens, positions=None, segment_ids=None, execution=ExecutionConfig()):
    return _compiled(cfg, execution)(params, tokens, positions, segment_ids)
