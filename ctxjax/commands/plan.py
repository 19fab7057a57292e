"""`ctxjax plan --config configs/x.py[:variant] --topology v5e-8 [--config.FIELD=VALUE ...]`: compile every
stage's train step for a TPU slice on this machine (no TPU needed, libtpu is) with the config's mesh,
kernels, remat and dtypes, and print per device what the TPU compiler plans: parameters and optimizer state,
arguments, outputs, temporaries and code against the chip's HBM, XLA's and the model's FLOPs of a step, and
the step time they give at the chip's bf16 peak (MFU 100%) and at MFU 50%. Exits 2 with one line when a stage
does not fit.

`--find-max-seq-len` instead searches the longest sequence length at which the config's last stage fits
(doubling, then bisection; ctxjax/plan/search.py) and prints length -> memory per device; `--memory-limit`
plans for less than the chip's HBM, to keep headroom. `--compare` runs that search for alternatives too
(other remat policies, ring vs ulysses, fsdp vs tensor; or the overrides given, one quoted argument per
alternative) and prints them side by side (ctxjax/plan/compare.py).

After the stages it compiles the evaluation a run does after its last stage, at the evaluation's longest
length (perplexity windows, generation prefill and decode; ctxjax/plan/evaluation.py) and reports their
memory the same way; `--skip-eval` leaves them out.

Topologies: Cloud TPU accelerator types (v5e-8, v5p-128, v4-32, v2-8, v6e-16; for v2, v3, v4 and v5p the
number counts TensorCores, two per chip) or libtpu's names (v5e:2x4, v5p:4x4x4)."""

from __future__ import annotations

import json
import os

import jax

from ctxjax.plan.chips import parse_topology
from ctxjax.plan.devices import tpu_devices
from ctxjax.errors import InputError
from ctxjax.plan.chips import GIB
from ctxjax.plan.compare import compare_plans, default_alternatives, parse_alternatives
from ctxjax.plan.evaluation import compiled_evaluation
from ctxjax.plan.report import (check_fits, comparison_table, gib, length_table, markdown_table, program_plan,
                                 program_table, stage_plan)
from ctxjax.plan.search import longest_context
from ctxjax.train import load_config
from ctxjax.train.aot import FIT_HINT, StepDoesNotFit, compiled_stages
from ctxjax.train.configs import apply_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="compile every stage for a TPU slice here and report memory per chip, FLOPs and MFU",
        description=__doc__)
    parser.add_argument("--config", required=True, help="recipe file, e.g. configs/tpu_pod.py")
    parser.add_argument("--topology", required=True, help="TPU slice, e.g. v5e-8, v5p-128, v4-32, v5e:2x2")
    parser.add_argument("--json", action="store_true", help="one JSON object per stage instead of a table")
    parser.add_argument("--find-max-seq-len", action="store_true",
                        help="search the longest seq_len at which the last stage fits, instead")
    parser.add_argument("--memory-limit", type=float, metavar="GIB",
                        help="memory per device to plan for (default: the chip's HBM per device)")
    parser.add_argument("--skip-eval", action="store_true",
                        help="plan the train steps only, not the evaluation programs after the last stage")
    parser.add_argument("--compare", nargs="*", metavar="OVERRIDES",
                        help="search the longest context for alternatives too: by default other remat "
                             "policies, ring vs ulysses, fsdp vs tensor; or one quoted argument per "
                             "alternative, e.g. "
                             "'execution.remat=full' 'mesh.fsdp=16 mesh.tensor=1'")
    parser.set_defaults(run=run, accepts_config_overrides=True)


def run(args) -> int:
    if "JAX_PLATFORMS" not in os.environ:
        # The host only traces and compiles; on a TPU VM this leaves its chips to whatever is training.
        jax.config.update("jax_platforms", "cpu")
    if args.memory_limit is not None and not args.memory_limit > 0:
        raise InputError(f"--memory-limit {args.memory_limit:g} must be a positive number of GiB")
    topology = parse_topology(args.topology)
    devices = tpu_devices(topology)
    config = apply_overrides(load_config(args.config), args.config_overrides)
    budget = int(args.memory_limit * GIB) if args.memory_limit else topology.chip.hbm_bytes_per_device
    if args.compare is not None:
        return _compare(config, devices, topology, budget, args.compare, args.json)
    if args.find_max_seq_len:
        return _find_max_seq_len(config, devices, topology, budget, args.json)
    rows = _plan_each(compiled_stages(config, devices), lambda c: stage_plan(c, topology), args.json,
                      lambda rows: markdown_table(rows, topology))
    for row in rows:
        check_fits(row, topology, budget)
    if not args.skip_eval:
        if not args.json:
            print("\nevaluation after the last stage (eval.batch_size windows or prompts, float32, the "
                  "eval.attention kernel or auto):", flush=True)
        programs = _plan_each(compiled_evaluation(config, devices), lambda p: program_plan(p, topology),
                              args.json, program_table)
        for row in programs:
            check_fits(row, topology, budget)
    return 0


def _plan_each(compiled, plan, as_json: bool, table) -> list[dict]:
    """Plan each compiled program as it comes; the table of those that compiled is printed even when a later
    one does not fit."""
    rows = []
    try:
        for program in compiled:
            rows.append(plan(program))
            if as_json:
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if rows and not as_json:
            print(table(rows), flush=True)
    return rows


def _find_max_seq_len(config, devices, topology, budget: int, as_json: bool) -> int:
    def log(row):
        print(json.dumps(row) if as_json else f"  {row['seq_len']:>9} tokens: "
              + (f"{gib(row['total_bytes'])} per device" if row["total_bytes"] is not None else "refused")
              + (" fits" if row["fits"] else " does not fit"), flush=True)

    if not as_json:
        print(f"{topology.name}: the longest seq_len of the last stage within {gib(budget)} per device")
    longest, rows = longest_context(config, devices, topology, budget, log=log)
    if not as_json:
        print(length_table(rows, budget))
    if not longest:
        first = rows[0]
        raise StepDoesNotFit(f"no seq_len fits in {gib(budget)} per device, down to {rows[0]['seq_len']} "
                             f"tokens ({first['reason'] or gib(first['total_bytes'])}); {FIT_HINT}")
    print(f"longest context that fits on {topology.name}: {longest} tokens")
    return 0


def _compare(config, devices, topology, budget: int, specs: list[str], as_json: bool) -> int:
    alternatives = parse_alternatives(specs) if specs else default_alternatives(config, len(devices))

    def log(name, row):
        print(json.dumps({"alternative": name, **row}) if as_json else f"  {name}: {row['seq_len']} tokens: "
              + (f"{gib(row['total_bytes'])}" if row["total_bytes"] is not None else "refused")
              + (" fits" if row["fits"] else " does not fit"), flush=True)

    if not as_json:
        print(f"{topology.name}: the longest seq_len of the last stage within {gib(budget)} per device, for "
              f"{len(alternatives)} plans")
    summaries = compare_plans(config, devices, topology, alternatives, budget, log=log)
    print(json.dumps({"comparison": summaries}) if as_json else comparison_table(summaries, budget))
    return 0
