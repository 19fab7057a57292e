"""One evaluation of one model: perplexity by length, passkey, needle, as asked by an EvalConfig.

`run_evaluation` is the entry point for a training loop (at a stage boundary) and for the CLI: it measures,
writes results.json, summary.md and the plots into `out_dir`, and returns flat metrics to log.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ctxjax.compile_cache import enable_compilation_cache
from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.data import Tokenizer, check_vocab_fits, load_tokenizer
from ctxjax.data.tokenizer import check_mask_token
from ctxjax.evaluate import report
from ctxjax.evaluate.baseline import (baseline_context, check_compatible, compare, load_baseline,
                                      parse_tolerance, tokenizer_signature, verdict_lines)
from ctxjax.evaluate.config import EvalConfig, as_eval_config, check_tasks_fit_model
from ctxjax.evaluate.documents import load_documents
from ctxjax.evaluate.loading import load_model
from ctxjax.evaluate.masked import RecallTask, encoder_completer, masked_by_length, recall_correct
from ctxjax.evaluate.multikey import MultiKeyTask
from ctxjax.evaluate.needle import NeedleTask, needle_found
from ctxjax.evaluate.passkey import PasskeyTask, passkey_correct
from ctxjax.evaluate.perplexity import perplexity_by_length
from ctxjax.evaluate.progress import Meter, Progress
from ctxjax.evaluate.retrieval import Completer, run_grid
from ctxjax.evaluate.ruler import RULER_TASKS, run_ruler, task_specs
from ctxjax.evaluate.scoring import evaluation_execution, masked_scorer, model_scorer
from ctxjax.generate import generate

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def beyond_position_table(cfg: ModelConfig, lengths, extra: int = 0) -> dict[int, str]:
    """Lengths the positional scheme cannot represent (with `extra` generated tokens), with the reason."""
    limit = cfg.position.max_positions(cfg)
    if limit is None:
        return {}
    return {n: f"beyond {cfg.position.limit_description(cfg)}; extend the model with `ctxjax extend-hf`"
            for n in lengths if n + extra > limit}


def model_completer(cfg: ModelConfig, run: ExecutionConfig, params, tokenizer: Tokenizer, batch_size: int,
                    reread_on_switch: bool = False, meter: Meter | None = None) -> Completer:
    """Greedy continuations decoded to text. Batches are filled up to `batch_size` with copies of the first
    prompt, so every batch of one length has one shape (one compilation). `meter` counts the prompt tokens
    read and the tokens generated (a stop token included)."""
    stops = tuple(t for t in tokenizer.stop_ids if t < cfg.vocab_size)
    meter = meter or Meter()

    def complete(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        padded = prompts + [prompts[0]] * (-len(prompts) % batch_size)
        out = generate(cfg, params, padded, max_new_tokens, stop_tokens=stops, execution=run,
                       reread_on_switch=reread_on_switch)
        real = range(len(prompts))
        meter.add(scored=sum(map(len, prompts)),
                  generated=sum(len(out.sequences[i]) + out.stopped[i] for i in real))
        return [tokenizer.decode(out.sequences[i]) for i in real]

    return complete


def _on_device(params):
    """Host arrays (e.g. from ctxjax.hf.load_pretrained) moved once; arrays already placed stay as they
    are."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params)


def _counted(scorer, meter: Meter):
    def score(windows):
        meter.add(scored=windows.shape[0] * (windows.shape[1] - 1))
        return scorer(windows)

    return score


def model_record(cfg: ModelConfig, params, run: ExecutionConfig, tokenizer: Tokenizer) -> dict:
    """What results.json says about the model: enough to tell whether two evaluations are comparable."""
    return {"position": str(cfg.position), "max_seq_len": cfg.max_seq_len,
            "params": int(sum(np.size(x) for x in jax.tree.leaves(params))), "attention": run.attention,
            "family": cfg.family, "sliding_window": cfg.sliding_window, "vocab_size": cfg.vocab_size,
            "tokenizer": tokenizer_signature(tokenizer), "tokenizer_vocab": tokenizer.vocab_size}


def evaluate_model(cfg: ModelConfig, params, tokenizer: Tokenizer | str, eval_config=None, *,
                   log: Log = _quiet, reread_on_switch: bool = False, progress: Progress | None = None,
                   baseline: dict | None = None) -> dict:
    """The results dict (as in results.json, without plot names) for the tasks of `eval_config`.
    `reread_on_switch`: generation as `ctxjax.generate` documents it (transformers' Phi-3 behaviour).
    `progress`: bars per task and length (default: none). `baseline`: an earlier evaluation's results, checked
    for comparability before anything is measured; its context is the original context of `--tasks short`."""
    enable_compilation_cache()
    eval_config = as_eval_config(eval_config)
    check_tasks_fit_model(cfg.causal, eval_config.tasks)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    check_vocab_fits(tokenizer, cfg.vocab_size)
    mask_id = check_mask_token(tokenizer, "the model's tokenizer") if not cfg.causal else None
    params = _on_device(params)
    run = evaluation_execution(eval_config.attention)
    lengths = eval_config.resolved_lengths(cfg.max_seq_len, baseline and baseline_context(baseline))
    results: dict = {"model": model_record(cfg, params, run, tokenizer),
                     "eval_config": dataclasses.asdict(eval_config), "lengths": list(lengths)}
    if baseline is not None:
        check_compatible(baseline, results["model"], results["eval_config"], lengths)
    progress, meter = progress or Progress.off(), Meter()
    if "ppl" in eval_config.tasks:
        log(f"perplexity at lengths {list(lengths)} on {eval_config.source}")
        docs = load_documents(eval_config.source, tokenizer, eval_config.max_documents, eval_config.add_bos)
        scorer = _counted(model_scorer(cfg, run, params, eval_config.batch_size), meter)
        with meter.task("ppl"):
            results["ppl"] = perplexity_by_length(
                docs, lengths, lambda n: scorer, methods=eval_config.ppl_methods, stride=eval_config.stride,
                target_tokens=eval_config.target_tokens, bucket_size=eval_config.bucket_size,
                max_windows=eval_config.max_windows, too_long=beyond_position_table(cfg, lengths),
                fixed_context=eval_config.fixed_target_context, chunk=eval_config.batch_size,
                progress=progress)
    if not cfg.causal:
        _evaluate_encoder(cfg, run, params, tokenizer, mask_id, eval_config, lengths, results, meter,
                          progress, log)
        results["throughput"] = meter.summary()
        return results
    complete = model_completer(cfg, run, params, tokenizer, eval_config.batch_size, reread_on_switch, meter)
    tasks = {}
    if "passkey" in eval_config.tasks:
        tasks["passkey"] = (PasskeyTask(tokenizer, eval_config.key_digits, eval_config.add_bos),
                            passkey_correct)
    if "multikey" in eval_config.tasks:
        tasks["multikey"] = (MultiKeyTask(tokenizer, eval_config.key_digits, eval_config.distractors,
                                          eval_config.add_bos), passkey_correct)
    if "needle" in eval_config.tasks:
        task = NeedleTask(tokenizer, eval_config.needle, eval_config.question, eval_config.answer,
                          eval_config.haystack or eval_config.source, eval_config.max_documents, max(lengths),
                          eval_config.add_bos)
        tasks["needle"] = (task, needle_found)
    for name, (task, score) in tasks.items():
        answer_tokens = eval_config.answer_tokens or task.answer_tokens()
        log(f"{name}: lengths {list(lengths)} x depths {list(eval_config.depths)}, {eval_config.trials} "
            "trials each")
        with meter.task(name):
            results[name] = run_grid(
                task.make_trial, score, complete, lengths=lengths, depths=eval_config.depths,
                trials=eval_config.trials, answer_tokens=answer_tokens, batch_size=eval_config.batch_size,
                seed=eval_config.seed, skip=beyond_position_table(cfg, lengths, answer_tokens),
                progress=progress, name=name)
    ruler_tasks = [t for t in eval_config.tasks if t in RULER_TASKS]
    if ruler_tasks:  # RULER's tasks: one batch per (task, length), scored as RULER scores
        with meter.task("ruler"):
            results["ruler"] = run_ruler(
                task_specs(ruler_tasks, tokenizer, eval_config), complete, tokenizer, lengths=lengths,
                depths=eval_config.depths, trials=eval_config.trials, seed=eval_config.seed,
                answer_tokens=eval_config.answer_tokens,
                too_long=lambda n, new_tokens: beyond_position_table(cfg, [n], new_tokens).get(n), log=log,
                progress=progress)
    results["throughput"] = meter.summary()
    return results


def _evaluate_encoder(cfg, run, params, tokenizer, mask_id, eval_config, lengths, results, meter, progress,
                      log) -> None:
    """The encoder tasks of `eval_config` (ctxjax.evaluate.masked), into `results`."""
    score = masked_scorer(cfg, run, params, eval_config.batch_size)

    def scorer(tokens, segment_ids, targets):  # counts the tokens read, as the decoder tasks' meter does
        meter.add(scored=int((segment_ids > 0).sum()))
        return score(tokens, segment_ids, targets)

    if "mlm" in eval_config.tasks:
        log(f"masked-token loss at lengths {list(lengths)} on {eval_config.source}")
        docs = load_documents(eval_config.source, tokenizer, eval_config.max_documents, eval_config.add_bos)
        with meter.task("mlm"):
            results["mlm"] = masked_by_length(
                docs, lengths, scorer, mask_id=mask_id, special_ids=tokenizer.special_ids,
                mask_rate=eval_config.mask_rate, target_tokens=eval_config.target_tokens,
                max_windows=eval_config.max_windows, seed=eval_config.seed,
                too_long=beyond_position_table(cfg, lengths), progress=progress)
    if "mlm_recall" in eval_config.tasks:
        task = RecallTask(tokenizer, mask_id, eval_config.key_digits, eval_config.add_bos)
        log(f"mlm_recall: lengths {list(lengths)} x depths {list(eval_config.depths)}, {eval_config.trials} "
            "trials each")
        with meter.task("mlm_recall"):
            results["mlm_recall"] = task.with_distances(run_grid(
                task.make_trial, recall_correct, encoder_completer(scorer, tokenizer, mask_id, lengths),
                lengths=lengths, depths=eval_config.depths, trials=eval_config.trials, answer_tokens=0,
                batch_size=eval_config.batch_size, seed=eval_config.seed,
                skip=beyond_position_table(cfg, lengths), progress=progress, name="mlm_recall"))


def run_evaluation(cfg: ModelConfig, params, tokenizer: Tokenizer | str,
                   eval_config: EvalConfig | dict | None, out_dir: str, step: int | None = None,
                   run_name: str | None = None, log: Log = _quiet,
                   reread_on_switch: bool = False, progress: Progress | None = None,
                   baseline: str | None = None, tolerance=None) -> dict[str, float]:
    """Evaluate, write results.json / summary.md / PNG plots into `out_dir`, and return flat metrics
    ({"eval/ppl/sliding/1024": ..., "eval/passkey/acc/1024": ..., ...}) for the training log.

    `baseline`: an earlier evaluation's output directory; the short-context verdict against it (see
    ctxjax.evaluate.baseline, `tolerance` e.g. "ppl=0.02,acc=0.05") opens summary.md and is recorded in
    results.json under "baseline". `progress`: bars per task and length (default: none).

    `tokenizer`: a ctxjax.data Tokenizer or a path for `load_tokenizer` ("bytes", a directory, a file).
    Call it under the training mesh to evaluate with the training sharding; params may be sharded arrays.
    """
    tolerance = parse_tolerance(tolerance)  # bad values fail before anything is measured
    before = load_baseline(baseline) if baseline else None
    results = evaluate_model(cfg, params, tokenizer, eval_config, log=log, reread_on_switch=reread_on_switch,
                             progress=progress, baseline=before)
    results = {"run": run_name, "step": step, **results}
    if before is not None:
        results["baseline"] = compare(results, before, baseline, tolerance)
    report.write_report(results, out_dir, opening=verdict_lines(results.get("baseline")))
    metrics = report.flat_metrics(results)
    if before is not None:  # for a training log or a gate: 0 is "no short-context regression"
        metrics["eval/baseline/regressed"] = len(results["baseline"]["regressed"])
    return metrics


def workdir_eval_dir(workdir: str, step: int | None = None) -> str:
    """Where a run's evaluation goes by default: WORKDIR/eval/step_N, or WORKDIR/eval/latest."""
    return os.path.join(workdir, "eval", f"step_{step}" if step is not None else "latest")


def evaluate_workdir(workdir: str, eval_config=None, out_dir: str | None = None, step: int | None = None,
                     tokenizer: str | None = None, log: Log = print) -> tuple[dict[str, float], str]:
    """Evaluate a training run's checkpoint (the end of `make demo`): (metrics, output directory), the
    output defaulting to WORKDIR/eval/step_N (or latest)."""
    cfg, params, tok, _ = load_model(workdir=workdir, step=step, tokenizer=tokenizer)
    out_dir = out_dir or workdir_eval_dir(workdir, step)
    metrics = run_evaluation(cfg, params, tok, eval_config, out_dir, step=step,
                             run_name=os.path.basename(os.path.normpath(workdir)), log=log,
                             progress=Progress.on_terminal() if log is print else None)
    log(f"results, summary and plots in {os.path.abspath(out_dir)} (summary.md, results.json, *.png)")
    return metrics, out_dir
