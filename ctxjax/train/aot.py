"""Ahead-of-time compilation of every stage's train step, with nothing materialised: no parameters, no
data. It catches shape, sharding and out-of-memory problems of a long stage before a pod run starts
(`ctxjax train --compile-only`), and is how the tests check that every recipe compiles."""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from ctxjax.attention.common import target_platform
from ctxjax.errors import InputError
from ctxjax.model import Transformer
from ctxjax.optimizer import make_optimizer, trainable_labels
from ctxjax.schedule import Stage, learning_rate_schedule
from ctxjax.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from ctxjax.train.configs import adaptation_config, execution_config, validate
from ctxjax.train.export import exportable
from ctxjax.train.resume import base_model_config, model_config_for_stage, with_shardings
from ctxjax.train.state import abstract_params, state_shardings
from ctxjax.train.step import jit_train_step

BATCH_DTYPES = {"tokens": jnp.int32, "positions": jnp.int32, "segment_ids": jnp.int32, "targets": jnp.int32,
                "weights": jnp.float32}


class CompiledStage(NamedTuple):
    """A stage's train step compiled ahead of time: `state` is the abstract training state with the
    shardings the step takes (ShapeDtypeStructs), `compiled` the executable with its memory and cost
    analyses, `labels` the trainable labels of the parameters."""

    stage: Stage
    model: Transformer
    state: Any
    labels: Any
    compiled: Any


def compiled_stages(config, devices=None) -> Iterator[CompiledStage]:
    """Every stage's train step compiled for `devices` (default: this host's; abstract TPU devices of a
    topology work too), with the config's mesh, kernels, remat and dtypes, one stage at a time: a stage that
    does not fit (StepDoesNotFit) comes after the stages before it have been reported. The config's mesh is
    the active one while the generator waits."""
    devices = list(devices if devices is not None else jax.devices())
    _, stages, _ = validate(config, len(devices))
    base = base_model_config(config, None, "")
    exportable(model_config_for_stage(config, base, stages[-1]), config.export_dir)
    mesh = make_mesh(dict(config.mesh), devices)
    run, adaptation = execution_config(config), adaptation_config(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        first = model_config_for_stage(config, base, stages[0])
        labels = trainable_labels(abstract_params(first, adaptation), config.optimizer.trainable)
        tx = make_optimizer(config.optimizer, learning_rate_schedule(stages), labels)
        for stage in stages:
            cfg = model_config_for_stage(config, base, stage)
            abstract, shardings = state_shardings(cfg, tx, mesh, adaptation)
            batch = {k: jax.ShapeDtypeStruct((stage.batch_size, stage.seq_len), dtype,
                                             sharding=batch_sharding(mesh))
                     for k, dtype in BATCH_DTYPES.items()}
            model = Transformer(cfg, run, adaptation)
            step = jit_train_step(config, model, tx, labels, stage, mesh, shardings)
            state = with_shardings(abstract, shardings)
            what = f"stage {stage.index} (seq_len {stage.seq_len}, batch {stage.batch_size})"
            compiled = compile_or_explain(step.lower(state, batch), what)
            yield CompiledStage(stage, model, state, labels, compiled)


class StepDoesNotFit(InputError):
    """The compiler found that a stage's step needs more memory than a device has."""


FIT_HINT = ("use more devices (or fsdp/tensor axes), execution.remat='full', a smaller micro_batch_size or a "
            "shorter seq_len")


def compile_or_explain(lowered, what: str):
    """`lowered.compile()`, or StepDoesNotFit naming `what` and its largest arrays when the program needs more
    memory than a device has."""
    try:
        with _no_persistent_cache_when_cross_compiling():
            return lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        # The TPU compiler refuses a program larger than HBM: that is the answer a plan wants, in one line.
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        first = str(error).strip().splitlines()[0].rstrip(".")
        raise StepDoesNotFit(f"{what} does not fit: {first}; largest arrays of the step (global shapes, per "
                             f"device inside per-shard kernels): {largest_arrays(lowered.as_text())}; "
                             f"{FIT_HINT}") from None


@contextlib.contextmanager
def _no_persistent_cache_when_cross_compiling():
    """A program compiled for other devices than the host's (a TPU topology on a CPU host: `ctxjax plan`)
    bypasses JAX's persistent compilation cache: it cannot be loaded back without those devices (each read
    warns, then compiles again), so writing it would only fill the user's cache. The cache is switched off
    for the compile and back on after; JAX decides whether to use it once per process, hence the resets."""
    if target_platform() == jax.default_backend() or not jax.config.jax_enable_compilation_cache:
        yield
        return
    reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        reset_cache()


_TENSOR = re.compile(r"tensor<((?:\d+x)+)([a-z]+\d*)>")
_BITS = {"i1": 8, "pred": 8}


def largest_arrays(program: str, count: int = 3) -> str:
    """The `count` largest distinct array types in a lowered (StableHLO) program, e.g.
    "f32[8,4,8192,8192] 8.0 GiB": the compiler's refusal gives only totals, and these name what to shrink.
    Global shapes, before partitioning: a sharded array's device share is smaller."""
    sizes = {}
    for dims, dtype in _TENSOR.findall(program):
        shape = [int(d) for d in dims.rstrip("x").split("x")]
        bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype) or 32)
        sizes[f"{dtype}[{','.join(map(str, shape))}]"] = math.prod(shape) * bits // 8
    top = sorted(sizes.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {size / 2**30:.1f} GiB" if size >= 2**30 else f"{name} {size / 2**20:.2f} MiB"
                     for name, size in top) or "none found"


def compile_stages(config, devices=None) -> list[dict]:
    """One row per stage: shapes and XLA's memory estimate (bytes per device) of its compiled step."""
    rows = []
    for c in compiled_stages(config, devices):
        memory = c.compiled.memory_analysis()
        rows.append({
            "stage": c.stage.index, "seq_len": c.stage.seq_len, "batch_size": c.stage.batch_size,
            "attention": c.model.execution.attention, "position": c.model.config.position.name,
            "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
            "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        })
    return rows
