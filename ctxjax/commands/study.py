"""`ctxjax study --out DIR [--quick] [--only ARM,...] [--report FILE]`: the CPU-scale reproduction of
reference/papers.md §10 — pretraining with RoPE, ALiBi and NoPE, zero-shot and fine-tuned extension with
every scaling, staged growth, sequence-length warm-up — evaluated and judged against the fourteen predicted
outcomes, into one markdown report with figures. Each arm checkpoints in DIR/ARM: a rerun resumes an
interrupted arm, skips finished ones and renders the report again. The arms: ctxjax/study/arms.py."""

from __future__ import annotations

import os
import shlex

import jax

from ctxjax.errors import InputError
from ctxjax.study.arms import SCALES
from ctxjax.study.report import check_report_target, write_report
from ctxjax.study.runner import run_study


def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="train, evaluate and judge the reproduction study",
                                   description=__doc__)
    parser.add_argument("--out", required=True, help="study directory: one work directory per arm")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model and a few steps per arm: checks the pipeline in about two "
                             "minutes, not the verdicts")
    parser.add_argument("--only", type=lambda s: tuple(a for a in s.split(",") if a), default=(),
                        help="comma-separated arms to run (with the arms they start from); default: all")
    parser.add_argument("--report", help="markdown report to write (default: OUT/results.md)")
    parser.add_argument("--notes", help="markdown commentary on the verdicts to put in the report after them")
    parser.set_defaults(run=run)


def run(args) -> int:
    name = "quick" if args.quick else "full"
    marker = os.path.join(args.out, "scale.txt")
    held = open(marker).read().strip() if os.path.exists(marker) else name
    if held != name:
        raise InputError(f"{args.out} holds a {held} study; this is a {name} one: choose another --out")
    report = args.report or os.path.join(args.out, "results.md")
    check_report_target(report, args.notes)
    os.makedirs(args.out, exist_ok=True)
    with open(marker, "w") as f:
        f.write(name + "\n")
    done = run_study(args.out, SCALES[name], only=args.only, devices=jax.devices())
    command = " ".join(["ctxjax study --out", shlex.quote(args.out), *(["--quick"] if args.quick else []),
                        *(["--only", ",".join(args.only)] if args.only else []),
                        *(["--report", shlex.quote(args.report)] if args.report else []),
                        *(["--notes", shlex.quote(args.notes)] if args.notes else [])])
    write_report(done, SCALES[name], args.out, report, command, args.notes)
    print(f"study: {len(done)} arms; report written to {report}")
    return 0
