"""AdamW with the conventions long-context fine-tuning expects: no weight decay on norms, biases and
embeddings; global-norm clipping; optionally only some parameter groups trainable (LoRA adapters, and e.g.
LongLoRA's embeddings + norms), selected by regular expressions over parameter paths like
`layers/attn_norm/scale`."""

from __future__ import annotations

import re
from typing import Callable

import jax
import optax

from ctxjax.errors import InputError
from ctxjax.lora import is_adapter


def param_path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def decay_mask(params):
    """True where weight decay applies: matrix weights (`kernel`), not norms, biases or embedding tables."""
    return jax.tree_util.tree_map_with_path(lambda path, _: param_path(path).endswith("kernel"), params)


def trainable_labels(params, patterns: str):
    """'train' or 'freeze' per parameter; `patterns` is a comma-separated list of regexes (searched in the
    path). LoRA adapters always train, and when a model has them everything else is frozen unless a pattern
    names it (LongLoRA: "embed,norm"); without adapters, empty patterns mean everything trains. A pattern that
    matches nothing is an error (a typo would otherwise silently freeze the whole model)."""
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    has_adapters = any(is_adapter(p.split("/")) for p in paths)
    if not patterns and not has_adapters:
        return jax.tree.map(lambda _: "train", params)
    regexes = [re.compile(p.strip()) for p in patterns.split(",") if p.strip()]
    for regex in regexes:
        if not any(regex.search(p) for p in paths):
            raise InputError(f"trainable pattern {regex.pattern!r} matches no parameter; parameter paths "
                             f"look like {paths[:4]}")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if is_adapter(param_path(path).split("/")) or any(
            r.search(param_path(path)) for r in regexes) else "freeze", params)


def make_optimizer(opt, learning_rate: Callable[[int], float], labels) -> optax.GradientTransformation:
    """`opt`: b1, b2, eps, weight_decay, clip_norm (see the configs); `labels`: 'train' / 'freeze' per
    parameter (`trainable_labels(params, opt.trainable)`)."""
    adamw = optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                        mask=decay_mask)
    chain = optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw) if opt.clip_norm else adamw
    if all(label == "train" for label in jax.tree.leaves(labels)):
        return chain
    # Frozen parameters get no optimizer state at all: that is the memory LongLoRA-style training saves.
    return optax.multi_transform({"train": chain, "freeze": optax.set_to_zero()}, labels)
