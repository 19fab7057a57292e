"""`ctxjax train --config configs/x.py[:variant] --workdir W [--config.FIELD=VALUE ...]`: run or resume a
training (re-running the same command resumes from the latest checkpoint in W).

Multi-host (TPU pods, or several processes on one machine): pass --coordinator-address HOST:PORT
--num-processes N --process-id I on every process, or --distributed on Cloud TPU VMs, where JAX reads the
coordinator from the environment. jax.distributed.initialize then runs before anything else touches JAX."""

from __future__ import annotations

import json

import jax

from ctxjax.errors import InputError
from ctxjax.train import load_config, train_and_evaluate
from ctxjax.train.aot import compile_stages
from ctxjax.train.configs import apply_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train through the config's stages of context growth", description=__doc__,
        epilog="--config.FIELD=VALUE overrides any field of the recipe: VALUE is a Python literal, else a "
               "string, and a,b for a list (e.g. --config.tokens_per_step=4096 "
               "--config.adaptation.lora_rank=8 --config.adaptation.lora_targets=q,v). The fields and what "
               "they do: the recipe file, ctxjax/train/defaults.py and, for model.* / execution.* / "
               "adaptation.*, ctxjax/config.py, ctxjax/execution.py and ctxjax/adaptation.py.")
    parser.add_argument("--config", required=True,
                        help="recipe file, e.g. configs/demo.py or configs/demo.py:tiny")
    parser.add_argument("--workdir", required=True,
                        help="checkpoints, metrics, tokenizer and exports go here")
    parser.add_argument("--coordinator-address", help="multi-host: HOST:PORT of process 0")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() with settings from the environment "
                             "(Cloud TPU)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile every stage's step ahead of time, print its memory estimate, train "
                             "nothing")
    parser.set_defaults(run=run, accepts_config_overrides=True)


def initialize_distributed(args) -> None:
    if args.coordinator_address:
        if args.num_processes is None or args.process_id is None:
            raise InputError("--coordinator-address needs --num-processes and --process-id too")
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def run(args) -> int:
    initialize_distributed(args)  # before anything runs on a device: importing JAX alone starts no backend
    config = apply_overrides(load_config(args.config), args.config_overrides)
    if args.compile_only:
        for row in compile_stages(config):
            print(json.dumps(row))
        return 0
    summary = train_and_evaluate(config, args.workdir)

    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0
