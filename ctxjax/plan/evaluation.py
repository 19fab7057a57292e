"""The evaluation programs of a run, compiled for the slice like its train steps: what `eval_at_stage_end`
(and `ctxjax eval` under the same mesh) runs after the last stage, at the evaluation's longest length.

- `perplexity`: `evaluate.scoring.window_nll` on `eval.batch_size` windows;
- `generate prefill`: `generate.prefill` of as many prompts into a KV cache with room for the answer;
- `generate decode`: the loop of single-token steps over that cache (`generate._decode`).

All with the last stage's model, the parameters sharded as in training (adapters merged, as the trainer
evaluates), and the evaluation's own execution (`eval.attention`, else `auto`; float32), which is not the
training's: a step that fits in bfloat16 can have an evaluation that does not.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ctxjax import generate
from ctxjax.evaluate.config import as_eval_config
from ctxjax.evaluate.scoring import evaluation_execution, window_nll
from ctxjax.model import init_cache
from ctxjax.sharding import LOGICAL_RULES, make_mesh
from ctxjax.train.aot import StepDoesNotFit, compile_or_explain
from ctxjax.train.configs import validate
from ctxjax.train.resume import base_model_config, model_config_for_stage
from ctxjax.train.state import abstract_params, param_shardings

# Tokens a generation program is planned to add to its prompt: more than any retrieval answer needs.
PLANNED_NEW_TOKENS = 32


class CompiledProgram(NamedTuple):
    name: str
    seq_len: int
    batch_size: int
    params: Any  # abstract parameters with their shardings
    compiled: Any


def compiled_evaluation(config, devices) -> Iterator[CompiledProgram]:
    """The evaluation programs (see the module doc), compiled for `devices` one at a time."""
    devices = list(devices)
    _, stages, _ = validate(config, len(devices))
    cfg = model_config_for_stage(config, base_model_config(config, None, ""), stages[-1])
    eval_config = as_eval_config({**dict(config.eval), "source": "stdlib:eval"})  # the source is not read
    length = max(eval_config.resolved_lengths(cfg.max_seq_len))
    batch, run = eval_config.batch_size, evaluation_execution(eval_config.attention)
    mesh = make_mesh(dict(config.mesh), devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        shardings = param_shardings(cfg, mesh)
        params = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                          sharding=sharding),
                              abstract_params(cfg), shardings)
        replicated = NamedSharding(mesh, PartitionSpec())

        def ints(*shape):
            return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=replicated)

        def program(name, lowered, seq_len):
            what = f"evaluation program {name!r} (length {seq_len}, batch {batch})"
            return CompiledProgram(name, seq_len, batch, params, compile_or_explain(lowered, what))

        yield program("perplexity", window_nll.lower(cfg, run, params, ints(batch, length + 1)), length)
        prompt = -(-length // 64) * 64  # generate pads prompts to multiples of 64
        cache_len = prompt + PLANNED_NEW_TOKENS
        prompts = ints(batch, prompt)  # tokens, positions and segment ids alike
        lowered = generate.prefill.lower(cfg, run, params, prompts, prompts, prompts, cache_len)
        prefill = program("generate prefill", lowered, prompt)
        yield prefill
        # The decode loop takes the logits and cache as the prefill leaves them, shardings included.
        logits, cache = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                                 sharding=sharding),
                                     jax.eval_shape(lambda: (jnp.zeros((batch, cfg.vocab_size)),
                                                             init_cache(cfg, batch, cache_len, run.dtype))),
                                     prefill.compiled.output_shardings)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)  # jax.random.PRNGKey's
        decode = generate._decode.lower(cfg, run, params, logits, cache, ints(batch), key,
                                        max_new_tokens=PLANNED_NEW_TOKENS, sampling=generate.Sampling(),
                                        stop_tokens=(), keep_logits=False)
        yield program("generate decode", decode, cache_len)


__all__ = ["CompiledProgram", "StepDoesNotFit", "compiled_evaluation"]
