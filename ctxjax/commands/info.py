"""`ctxjax info HF_DIR`: what ctxjax reads from a Hugging Face model directory (architecture, sizes,
positional scheme, parameter count, the class an export writes), without loading the weights."""

from __future__ import annotations

import dataclasses
import os

import jax

from ctxjax import hf
from ctxjax.hf.config import architecture, model_config_from_hf
from ctxjax.model import init_params


def register(subparsers) -> None:
    parser = subparsers.add_parser("info",
                                   help="show the ModelConfig ctxjax reads from a Hugging Face directory",
                                   description=__doc__)
    parser.add_argument("hf_dir", help="a Hugging Face model directory (config.json + weights)")
    parser.set_defaults(run=run)


def run(args) -> int:
    config = hf.read_hf_config(args.hf_dir)
    cfg = model_config_from_hf(config, where=os.path.join(args.hf_dir, "config.json"))
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0), seq_len=1))
    n_params = sum(x.size for x in jax.tree.leaves(shapes))
    print(f"architecture: {architecture(config)}")
    for field in dataclasses.fields(cfg):
        print(f"{field.name}: {getattr(cfg, field.name)}")
    print(f"parameters: {n_params:,}")
    try:
        print(f"exports as: {hf.hf_config_from_model(cfg, architecture(config))['architectures'][0]}")
    except ValueError as error:
        # E.g. overrides a class cannot express (not reachable from config.json alone).
        print(f"exports as: nothing ({error})")
    return 0
