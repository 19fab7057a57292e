"""The training state {step, params, opt_state, first_bad_step}: how it is created (sharded from the
start, never materialised on one device), how it is laid out on the mesh, and how it changes shape at a
stage boundary (a learned position table growing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ctxjax import positions
from ctxjax.config import ModelConfig
from ctxjax.model import Transformer
from ctxjax.sharding import LOGICAL_RULES, logical_shardings, strip_boxes


def _boxed_params(cfg: ModelConfig, rng):
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg).init(rng, tokens)["params"]


def state_from_params(params, tx: optax.GradientTransformation):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "first_bad_step": jnp.full((), -1, jnp.int32)}


def abstract_params(cfg: ModelConfig):
    return strip_boxes(jax.eval_shape(lambda: _boxed_params(cfg, jax.random.PRNGKey(0))))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedShardings of the model's parameters, from their logical axis names."""
    return logical_shardings(jax.eval_shape(lambda: _boxed_params(cfg, jax.random.PRNGKey(0))), mesh, rules)


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, rules=LOGICAL_RULES):
    """(abstract state, shardings) for the whole state: parameters by their logical axes, optimizer moments
    like the parameter they belong to, everything else replicated."""
    params = param_shardings(cfg, mesh, rules)
    abstract = jax.eval_shape(lambda: state_from_params(abstract_params(cfg), tx))
    replicated = NamedSharding(mesh, PartitionSpec())
    # Frozen parameters (multi_transform) hold an empty MaskedNode instead of moments: it stays as it is.
    opt_shardings = optax.tree_map_params(
        tx, lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
        abstract["opt_state"], params, transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    shardings = {"step": replicated, "params": params, "opt_state": opt_shardings,
                 "first_bad_step": replicated}
    return abstract, shardings


def init_state(cfg: ModelConfig, tx, rng, shardings):
    """A fresh state created directly in its sharded layout (jit with out_shardings)."""
    init = jax.jit(lambda r: state_from_params(strip_boxes(_boxed_params(cfg, r)), tx), out_shardings=shardings)
    return init(rng)


def place_params(params, tx, shardings):
    """A fresh state around given (e.g. imported) params, laid out on the mesh."""
    params = jax.device_put(params, shardings["params"])
    return jax.jit(lambda p: state_from_params(p, tx), out_shardings=shardings)(params)


def grow_learned_table(state, new_len: int, method: str):
    """Extend the learned position table to `new_len` rows at a stage boundary. The new rows' Adam moments
    start at zero, as at initialisation; every other moment is kept."""
    host = jax.device_get(state)
    old_len = host["params"]["pos_embed"]["embedding"].shape[0]
    params = positions.extend(host["params"], new_len, method=method)

    def grow(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if "pos_embed" in names and getattr(leaf, "ndim", 0) == 2 and leaf.shape[0] == old_len:
            return np.concatenate([leaf, np.zeros((new_len - old_len, leaf.shape[1]), leaf.dtype)])
        return leaf

    opt_state = jax.tree_util.tree_map_with_path(grow, host["opt_state"])
    return {**host, "params": params, "opt_state": opt_state}
