"""The training state {step, params, opt_state, first_bad_step}: how it is created (sharded from the
start, never materialised on one device), how it is laid out on the mesh, and how it changes shape at a
stage boundary (a positional scheme's parameters growing, e.g. a learned table).

The parameters are those of a ModelConfig plus the LoRA adapters its AdaptationConfig adds; how the model runs
(ExecutionConfig) never changes them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ctxjax.adaptation import AdaptationConfig
from ctxjax.config import ModelConfig
from ctxjax.model import Transformer
from ctxjax.sharding import LOGICAL_RULES, logical_shardings, strip_boxes

NO_ADAPTERS = AdaptationConfig()


def _boxed_params(cfg: ModelConfig, adaptation: AdaptationConfig, rng):
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg, adaptation=adaptation).init(rng, tokens)["params"]


def state_from_params(params, tx: optax.GradientTransformation):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "first_bad_step": jnp.full((), -1, jnp.int32)}


def abstract_params(cfg: ModelConfig, adaptation: AdaptationConfig = NO_ADAPTERS):
    return strip_boxes(jax.eval_shape(lambda: _boxed_params(cfg, adaptation, jax.random.PRNGKey(0))))


def param_shardings(cfg: ModelConfig, mesh: Mesh, adaptation: AdaptationConfig = NO_ADAPTERS,
                    rules=LOGICAL_RULES):
    """NamedShardings of the model's parameters, from their logical axis names."""
    boxed = jax.eval_shape(lambda: _boxed_params(cfg, adaptation, jax.random.PRNGKey(0)))
    return logical_shardings(boxed, mesh, rules)


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    adaptation: AdaptationConfig = NO_ADAPTERS, rules=LOGICAL_RULES):
    """(abstract state, shardings) for the whole state: parameters by their logical axes, optimizer moments
    like the parameter they belong to, everything else replicated."""
    params = param_shardings(cfg, mesh, adaptation, rules)
    abstract = jax.eval_shape(lambda: state_from_params(abstract_params(cfg, adaptation), tx))
    replicated = NamedSharding(mesh, PartitionSpec())
    # Frozen parameters (multi_transform) hold an empty MaskedNode instead of moments: it stays as it is.
    # tree_map_params runs tx.init on placeholders; traced (eval_shape), nothing runs on a device, so this
    # works for devices the host cannot run on (a TPU topology compiled on a CPU host: `ctxjax plan`).
    found = []
    jax.eval_shape(lambda: found.append(optax.tree_map_params(
        tx, lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
        abstract["opt_state"], params, transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))))
    opt_shardings = found[0]
    shardings = {"step": replicated, "params": params, "opt_state": opt_shardings,
                 "first_bad_step": replicated}
    return abstract, shardings


def init_state(cfg: ModelConfig, tx, rng, shardings, adaptation: AdaptationConfig = NO_ADAPTERS):
    """A fresh state created directly in its sharded layout (jit with out_shardings)."""
    init = jax.jit(lambda r: state_from_params(strip_boxes(_boxed_params(cfg, adaptation, r)), tx),
                   out_shardings=shardings)
    return init(rng)


def place_params(params, tx, shardings):
    """A fresh state around given (e.g. imported) params, laid out on the mesh."""
    params = jax.device_put(params, shardings["params"])
    return jax.jit(lambda p: state_from_params(p, tx), out_shardings=shardings)(params)


def grow_positions(state, cfg: ModelConfig, method: str):
    """The state for a stage of model `cfg` whose positional scheme holds more positions than the state's
    parameters (a learned table growing at a stage boundary: `PositionScheme.extend`). Parameters that grow
    keep their rows; their new rows' Adam moments start at zero, as at initialisation. Unchanged when nothing
    grows."""
    params = cfg.position.extend(state["params"], cfg.max_seq_len, method=method)
    if params is state["params"]:
        return state
    host = jax.device_get({**state, "params": params})
    old = {_names(path): leaf.shape
           for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    new = {_names(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(host["params"])[0]}
    grown = {path: (old[path], new[path]) for path in new if new[path] != old[path]}

    def grow(path, leaf):
        names = _names(path)
        for param, (before, after) in grown.items():  # a moment of a grown parameter: its path ends with it
            if names[-len(param):] == param and getattr(leaf, "shape", None) == before:
                return np.pad(leaf, [(0, a - b) for a, b in zip(after, before)])
        return leaf

    return {**host, "opt_state": jax.tree_util.tree_map_with_path(grow, host["opt_state"])}


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
