"""ctxjax.evaluate: does the longer context help? Perplexity by length (three ways, plus loss by position),
passkey retrieval, needle in a haystack; results.json, summary.md and PNG plots. See docs/evaluation.md.

    from ctxjax.evaluate import EvalConfig, run_evaluation
    metrics = run_evaluation(cfg, params, tokenizer, EvalConfig(lengths=(256, 512, 1024)), "out/eval",
                             step=1000)
"""

from ctxjax.evaluate.config import PPL_METHODS, TASKS, EvalConfig, as_eval_config
from ctxjax.evaluate.loading import load_model
from ctxjax.evaluate.report import compare_runs, flat_metrics, load_results, summary_markdown, write_report
from ctxjax.evaluate.runner import evaluate_model, evaluate_workdir, run_evaluation

__all__ = ["EvalConfig", "PPL_METHODS", "TASKS", "as_eval_config", "compare_runs", "evaluate_model",
           "evaluate_workdir", "flat_metrics", "load_model", "load_results", "run_evaluation",
           "summary_markdown", "write_report"]
