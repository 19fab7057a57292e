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

from ctxjax.config import ModelConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.data import Tokenizer, check_vocab_fits, load_tokenizer
from ctxjax.evaluate import report
from ctxjax.evaluate.config import EvalConfig, as_eval_config
from ctxjax.evaluate.documents import load_documents
from ctxjax.evaluate.loading import load_model
from ctxjax.evaluate.multikey import MultiKeyTask
from ctxjax.evaluate.needle import NeedleTask, needle_found
from ctxjax.evaluate.passkey import PasskeyTask, passkey_correct
from ctxjax.evaluate.perplexity import perplexity_by_length
from ctxjax.evaluate.retrieval import Completer, run_grid
from ctxjax.evaluate.ruler import RULER_TASKS, run_ruler, task_specs
from ctxjax.evaluate.scoring import evaluation_execution, model_scorer
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
                    reread_on_switch: bool = False) -> Completer:
    """Greedy continuations decoded to text. Batches are filled up to `batch_size` with copies of the first
    prompt, so every batch of one length has one shape (one compilation)."""
    stops = tuple(t for t in tokenizer.stop_ids if t < cfg.vocab_size)

    def complete(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        padded = prompts + [prompts[0]] * (-len(prompts) % batch_size)
        out = generate(cfg, params, padded, max_new_tokens, stop_tokens=stops, execution=run,
                       reread_on_switch=reread_on_switch)
        return [tokenizer.decode(ids) for ids in out.sequences[:len(prompts)]]

    return complete


def _on_device(params):
    """Host arrays (e.g. from ctxjax.hf.load_pretrained) moved once; arrays already placed stay as they
    are."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params)


def evaluate_model(cfg: ModelConfig, params, tokenizer: Tokenizer | str, eval_config=None, *,
                   log: Log = _quiet, reread_on_switch: bool = False) -> dict:
    """The results dict (as in results.json, without plot names) for the tasks of `eval_config`.
    `reread_on_switch`: generation as `ctxjax.generate` documents it (transformers' Phi-3 behaviour)."""
    eval_config = as_eval_config(eval_config)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    check_vocab_fits(tokenizer, cfg.vocab_size)
    params = _on_device(params)
    run = evaluation_execution(eval_config.attention)
    lengths = eval_config.resolved_lengths(cfg.max_seq_len)
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    results: dict = {"model": {"position": str(cfg.position), "max_seq_len": cfg.max_seq_len,
                               "params": n_params, "attention": run.attention, "family": cfg.family,
                               "sliding_window": cfg.sliding_window},
                     "eval_config": dataclasses.asdict(eval_config), "lengths": list(lengths)}
    if "ppl" in eval_config.tasks:
        log(f"perplexity at lengths {list(lengths)} on {eval_config.source}")
        docs = load_documents(eval_config.source, tokenizer, eval_config.max_documents, eval_config.add_bos)
        scorer = model_scorer(cfg, run, params, eval_config.batch_size)
        results["ppl"] = perplexity_by_length(
            docs, lengths, lambda n: scorer, methods=eval_config.ppl_methods, stride=eval_config.stride,
            target_tokens=eval_config.target_tokens, bucket_size=eval_config.bucket_size,
            max_windows=eval_config.max_windows, too_long=beyond_position_table(cfg, lengths),
            fixed_context=eval_config.fixed_target_context)
    complete = model_completer(cfg, run, params, tokenizer, eval_config.batch_size, reread_on_switch)
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
        results[name] = run_grid(
            task.make_trial, score, complete, lengths=lengths, depths=eval_config.depths,
            trials=eval_config.trials, answer_tokens=answer_tokens, batch_size=eval_config.batch_size,
            seed=eval_config.seed, skip=beyond_position_table(cfg, lengths, answer_tokens))
    ruler_tasks = [t for t in eval_config.tasks if t in RULER_TASKS]
    if ruler_tasks:  # RULER's tasks: one batch per (task, length), scored as RULER scores
        results["ruler"] = run_ruler(
            task_specs(ruler_tasks, tokenizer, eval_config), complete, tokenizer, lengths=lengths,
            depths=eval_config.depths, trials=eval_config.trials, seed=eval_config.seed,
            answer_tokens=eval_config.answer_tokens,
            too_long=lambda n, new_tokens: beyond_position_table(cfg, [n], new_tokens).get(n), log=log)
    return results


def run_evaluation(cfg: ModelConfig, params, tokenizer: Tokenizer | str,
                   eval_config: EvalConfig | dict | None, out_dir: str, step: int | None = None,
                   run_name: str | None = None, log: Log = _quiet,
                   reread_on_switch: bool = False) -> dict[str, float]:
    """Evaluate, write results.json / summary.md / PNG plots into `out_dir`, and return flat metrics
    ({"eval/ppl/sliding/1024": ..., "eval/passkey/acc/1024": ..., ...}) for the training log.

    `tokenizer`: a ctxjax.data Tokenizer or a path for `load_tokenizer` ("bytes", a directory, a file).
    Call it under the training mesh to evaluate with the training sharding; params may be sharded arrays.
    """
    results = evaluate_model(cfg, params, tokenizer, eval_config, log=log, reread_on_switch=reread_on_switch)
    results = {"run": run_name, "step": step, **results}
    report.write_report(results, out_dir)
    return report.flat_metrics(results)


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
                             run_name=os.path.basename(os.path.normpath(workdir)), log=log)
    log(f"results, summary and plots in {os.path.abspath(out_dir)} (summary.md, results.json, *.png)")
    return metrics, out_dir
