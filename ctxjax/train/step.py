"""The jitted train step: loss on final hidden states (chunked over the vocabulary), gradient accumulation
over micro-batches, AdamW update, and a guard that refuses non-finite updates without a host sync."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.loss import loss_sums as chunked_loss_sums
from ctxjax.loss import objective_sums as chunked_objective_sums
from ctxjax.model import Transformer
from ctxjax.sharding import batch_sharding


def output_projection(cfg: ModelConfig, params):
    """(kernel [D, V], bias [V] or None): logits = hidden @ kernel + bias, for the hidden states the model
    returns with `return_hidden` (a masked-LM decoder has a bias; a bare encoder has no projection)."""
    if cfg.output_head == "none":
        raise InputError("a bare encoder (head='none') has no output projection to train a token loss "
                         "through; use the masked-LM model (head='mlm')")
    kernel = params["embed"]["embedding"].T if cfg.tied else params["lm_head"]["kernel"]
    return kernel, params["output_bias"] if cfg.output_head == "mlm" else None


def output_kernel(cfg: ModelConfig, params):
    """[D, V] matrix that maps final hidden states to logits (see `output_projection` for its bias)."""
    return output_projection(cfg, params)[0]


def _loss_inputs(model: Transformer, params, batch):
    """Hidden states, output kernel, targets and weights of one batch, and the output bias: the arguments of
    the chunked loss."""
    hidden = model.apply({"params": params}, batch["tokens"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"], return_hidden=True)  # [B, L, D]
    kernel, bias = output_projection(model.config, params)
    bias = None if bias is None else bias.astype(hidden.dtype)
    return (hidden, kernel.astype(hidden.dtype), batch["targets"], batch["weights"]), bias


def loss_sums(model: Transformer, params, batch, loss_chunk: int):
    """(sum of token losses, sum of log(Z)^2, number of target tokens) of one batch."""
    inputs, bias = _loss_inputs(model, params, batch)
    return chunked_loss_sums(*inputs, bias=bias, chunk=loss_chunk,
                             logit_softcap=model.config.final_logit_softcapping)


def objective_sums(model: Transformer, params, batch, loss_chunk: int, z_loss: float,
                   position_buckets: tuple[int, ...] = ()):
    """`ctxjax.loss.ObjectiveSums` of one batch (the objective's gradient is computed inside the chunked
    loss), its token losses also summed per position bucket: bucket i holds the targets predicted at positions
    below position_buckets[i] (and not below the one before; the last bucket everything beyond). Positions are
    those the model sees: packed documents count from their own start, PoSE's are shifted."""
    groups = jnp.searchsorted(jnp.asarray(position_buckets, jnp.int32), batch["positions"], side="right") \
        if position_buckets else None
    inputs, bias = _loss_inputs(model, params, batch)
    return chunked_objective_sums(*inputs, bias=bias, z_loss=z_loss, chunk=loss_chunk,
                                  logit_softcap=model.config.final_logit_softcapping, groups=groups,
                                  n_groups=len(position_buckets) + 1)


def position_buckets(original_context: int, longest: int) -> tuple[int, ...]:
    """The upper bounds of the position buckets of loss by position: the original context, then each doubling
    of it below `longest` (e.g. 128, 256 for a run that grows 128 -> 512: buckets [0, 128), [128, 256),
    [256, 512))."""
    bounds = [original_context]
    while bounds[-1] * 2 < longest:
        bounds.append(bounds[-1] * 2)
    return tuple(bounds) if longest > original_context else ()


def _is_none(x) -> bool:
    return x is None


def make_train_step(model: Transformer, tx: optax.GradientTransformation, *, micro_batches: int = 1,
                    loss_chunk: int = 1024, z_loss: float = 0.0, labels=None, buckets: tuple[int, ...] = ()):
    """state = {step, params, opt_state, first_bad_step} -> (new state, metrics) of `model` (a Transformer
    with its ModelConfig, ExecutionConfig and AdaptationConfig). Not jitted here: the caller jits it with
    shardings and donation. The objective is cross-entropy + z_loss * mean log(Z)^2.

    `labels` ('train'/'freeze' per parameter, `optimizer.trainable_labels`): the loss is differentiated with
    respect to the trainable parameters only, so frozen weights cost no weight-gradient matmuls (LoRA's
    saving). `buckets` (see `position_buckets`): metrics["loss_by_position"] [len(buckets) + 1, 2] holds the
    token losses and token counts per position bucket, from the same pass."""

    def trainable_part(params):
        if labels is None:
            return params
        return jax.tree.map(lambda p, label: p if label == "train" else None, params, labels)

    def with_frozen(trainable, params):
        return jax.tree.map(lambda t, p: p if t is None else t, trainable, params, is_leaf=_is_none)

    def grads_of(params, batch):
        def objective(trainable):
            sums = objective_sums(model, with_frozen(trainable, params), batch, loss_chunk, z_loss, buckets)
            return sums.objective, (sums.total, sums.count, sums.by_group)

        (_, parts), grads = jax.value_and_grad(objective, has_aux=True)(trainable_part(params))
        return (*parts, grads)

    def accumulate(params, batch):
        if micro_batches == 1:
            return grads_of(params, batch)
        split = jax.tree.map(lambda x: x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:]),
                             batch)

        def body(carry, micro):
            return jax.tree.map(jnp.add, carry, grads_of(params, micro)), None

        zeros = (0.0, 0.0, jnp.zeros((len(buckets) + 1, 2)),
                 jax.tree.map(jnp.zeros_like, trainable_part(params)))
        summed, _ = jax.lax.scan(body, zeros, split)
        return summed

    def train_step(state, batch):
        total, count, by_position, grads = accumulate(state["params"], batch)
        denominator = jnp.maximum(count, 1.0)
        loss = total / denominator
        grads = jax.tree.map(lambda g: (g / denominator).astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads)
        # Frozen parameters' gradients are zeros the optimizer ignores (multi_transform's set_to_zero).
        grads = jax.tree.map(lambda g, p: jnp.zeros_like(p) if g is None else g, grads, state["params"],
                             is_leaf=_is_none)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A NaN/inf step changes nothing; the loop sees first_bad_step at its next sync point and stops,
        # so the state (and every checkpoint) stays the last good one.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        first_bad = jnp.where(~finite & (state["first_bad_step"] < 0), state["step"], state["first_bad_step"])
        new_state = {
            "step": state["step"] + 1,
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "first_bad_step": first_bad,
        }
        return new_state, {"loss": loss, "grad_norm": grad_norm, "target_tokens": count,
                           "loss_by_position": by_position}

    return train_step


def jit_train_step(config, model: Transformer, tx, labels, stage, mesh, shardings,
                   buckets: tuple[int, ...] = ()):
    """The stage's train step jitted with the state's shardings, the batch sharding and a donated state
    (updated in place: no second copy of parameters and optimizer state). `labels`: trainable_labels of the
    params; `buckets`: the position buckets of the loss by position."""
    micro = int(config.micro_batch_size) or stage.batch_size
    step = make_train_step(model, tx, micro_batches=stage.batch_size // micro,
                           loss_chunk=int(config.loss_chunk), z_loss=float(config.z_loss), labels=labels,
                           buckets=buckets)
    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, None),
                   donate_argnums=0)
