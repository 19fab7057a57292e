"""`ctxjax eval WORKDIR | --hf DIR [--rope-type yarn --factor 4] --tasks ppl,passkey,needle --lengths
512,1024`: perplexity by length (non-overlapping, sliding, fixed target set; loss by position), passkey
retrieval (also with distractor keys: multikey) and needle in a haystack, written as results.json, summary.md
and PNG plots into --out.
`ctxjax eval --compare OUT1 OUT2 ... --out DIR` overlays earlier evaluations in one set of plots."""

from __future__ import annotations

import os

import flax.linen as nn
import jax

from ctxjax.checkpoint import Checkpointer
from ctxjax.commands.arguments import (add_model_arguments, floats, int_list, load_model_from_args,
                                       mesh_sizes, names)
from ctxjax.errors import InputError
from ctxjax.evaluate import as_eval_config, compare_runs, run_evaluation
from ctxjax.evaluate.baseline import load_baseline, parse_tolerance, verdict_lines
from ctxjax.evaluate.config import ENCODER_TASKS
from ctxjax.evaluate.progress import Progress
from ctxjax.evaluate.report import load_results, measured_anything, skipped_cells
from ctxjax.evaluate.runner import workdir_eval_dir
from ctxjax.hf import rereads_on_rope_switch
from ctxjax.sharding import LOGICAL_RULES, make_mesh
from ctxjax.train.state import param_shardings


def _evaluated_step(args) -> int | None:
    """The checkpoint step evaluated (the latest when --step is not given); None for an HF directory."""
    if args.step is not None or not args.workdir:
        return args.step
    with Checkpointer(args.workdir, read_only=True) as checkpointer:
        return checkpointer.latest_step()


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="perplexity by length, passkey and needle retrieval, plots",
                                   description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--out", help="output directory (default: WORKDIR/eval/latest, WORKDIR/eval/step_N "
                                      "with --step, or eval_<name> for --hf)")
    parser.add_argument("--name", help="run name in tables and plot legends (default: the directory's name)")
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="overlay these evaluation output directories")
    parser.add_argument("--mesh", type=mesh_sizes, default={"fsdp": -1},
                        help="device mesh for the parameters, e.g. fsdp=-1 (default) or fsdp=-1,tensor=2")
    parser.add_argument("--tasks", type=names,
                        help="comma-separated: ppl,passkey,multikey,needle, RULER's niah_single,"
                             "niah_multikey,niah_multivalue,niah_multiquery,vt,cwe,fwe,qa, or the sets "
                             "'ruler' (all of RULER's) and 'short' (ppl,passkey,multikey,needle at 1/4, 1/2 "
                             "and 1 x the original context: --baseline's, else the model's); an encoder's: "
                             "mlm,mlm_recall, the set 'encoder'; default: ppl,passkey (an encoder: encoder)")
    parser.add_argument("--mask-rate", type=float,
                        help="mlm: the share of the middle --target-tokens tokens masked (default 0.15)")
    parser.add_argument("--lengths", type=int_list,
                        help="comma-separated context lengths (default: 0.5, 1, 2 x context)")
    parser.add_argument("--source", default="stdlib:eval",
                        help="held-out documents (a ctxjax.data source spec)")
    parser.add_argument("--max-documents", type=int, default=64, help="read at most this many documents")
    parser.add_argument("--ppl-methods", type=names, help="subset of nonoverlapping,sliding,fixed_target")
    parser.add_argument("--stride", type=int,
                        help="sliding-window stride (default: a quarter of each length)")
    parser.add_argument("--target-tokens", type=int,
                        help="fixed target set: last K tokens of each document (default 128)")
    parser.add_argument("--fixed-target-context", type=int,
                        help="fixed target set: the documents that fit a window this long (default: the "
                             "longest length), to compare separate evaluations on the same targets")
    parser.add_argument("--max-windows", type=int, help="windows scored per length and method (default 256)")
    parser.add_argument("--batch-size", type=int, help="windows or prompts per forward pass (default 4)")
    parser.add_argument("--depths", type=floats,
                        help="where the passkey or needle sits, fractions in [0, 1], comma-separated")
    parser.add_argument("--trials", type=int, help="prompts per (length, depth) cell (default 5)")
    parser.add_argument("--distractors", type=int,
                        help="other named keys beside the asked one (multikey task; default 3)")
    parser.add_argument("--needle", help="needle sentence (needle task)")
    parser.add_argument("--question", help="question asked after the haystack (needle task)")
    parser.add_argument("--answer", help="text the reply must contain (needle task)")
    parser.add_argument("--haystack", help="haystack source spec (default: --source)")
    parser.add_argument("--seed", type=int, help="seed of keys and haystack offsets")
    parser.add_argument("--baseline", metavar="DIR",
                        help="an earlier evaluation's output directory (e.g. the model before extension): "
                             "summary.md opens with the short-context regression verdict against it")
    parser.add_argument("--tolerance", metavar="KIND=X,...",
                        help="how much worse counts as a regression with --baseline: ppl relative (default "
                             "0.02 = 2%%), acc absolute (default 0.05 = 5 points), e.g. ppl=0.05,acc=0.1")
    parser.set_defaults(run=run)


def _eval_config(args):
    return as_eval_config(
        tasks=args.tasks, lengths=args.lengths, source=args.source, max_documents=args.max_documents,
        ppl_methods=args.ppl_methods, stride=args.stride, target_tokens=args.target_tokens,
        mask_rate=args.mask_rate,
        fixed_target_context=args.fixed_target_context,
        max_windows=args.max_windows, batch_size=args.batch_size, attention=args.attention,
        depths=args.depths, trials=args.trials, distractors=args.distractors, needle=args.needle,
        question=args.question, answer=args.answer, haystack=args.haystack, seed=args.seed)


def _default_out(args) -> str:
    if args.workdir:
        return workdir_eval_dir(args.workdir, args.step)
    return f"eval_{os.path.basename(os.path.normpath(args.hf))}"


def run(args) -> int:
    if args.compare:
        if not args.out:
            raise InputError("--compare needs --out DIR for the overlaid plots")
        written = compare_runs(args.compare, args.out)
        print("wrote " + ", ".join(written))
        return 0
    eval_config = _eval_config(args)  # bad flags fail before the model loads
    if args.baseline:
        load_baseline(args.baseline)
    parse_tolerance(args.tolerance)
    cfg, params, tokenizer, architecture = load_model_from_args(args)
    if args.tasks is None and not cfg.causal:  # an encoder's default: its own tasks
        eval_config = eval_config.replace(tasks=ENCODER_TASKS)
    out = args.out or _default_out(args)
    name = args.name or os.path.basename(os.path.normpath(args.workdir or args.hf))
    # Parameters sharded over all devices as in training (FSDP by default), so what trains also evaluates.
    mesh = make_mesh(args.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        params = jax.device_put(params, param_shardings(cfg, mesh))
        metrics = run_evaluation(cfg, params, tokenizer, eval_config, out, step=_evaluated_step(args),
                                 run_name=name, log=lambda message: print(message, flush=True),
                                 reread_on_switch=rereads_on_rope_switch(architecture),
                                 progress=Progress.on_terminal(), baseline=args.baseline,
                                 tolerance=args.tolerance)
    results = load_results(out)
    for line in skipped_cells(results):
        print(line, flush=True)
    if not measured_anything(results):
        raise InputError("nothing was evaluated: every length was skipped "
                         f"({'; '.join(skipped_cells(results)[:2])}); choose other --lengths or a --source "
                         "with longer documents")
    for key, value in metrics.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if results.get("baseline"):
        print(verdict_lines(results["baseline"])[0].replace("**", ""))
    print(f"results, summary and plots in {os.path.abspath(out)} (summary.md, results.json, *.png)")
    return 0
