"""Short-context regression: did extending a model cost it quality at the lengths it already handled?

`ctxjax eval --baseline DIR` compares this evaluation with an earlier one (DIR holds its results.json, e.g.
the model before extension). Every metric measured by both at a length <= the baseline model's context
(its results.json `model.max_seq_len`) is checked:

- perplexity (each method): regressed when after > before x (1 + tolerance["ppl"]), a relative tolerance;
- accuracies (passkey, multikey, needle, any task whose flat metric is `<task>/acc/<L>`, and RULER's scores
  `ruler/<task>/<L>`, averages included): regressed when
  after < before - tolerance["acc"], in absolute points (0.05 = 5 points).

A baseline of another model family, vocabulary or tokenizer, one measured on other held-out documents, or
one that shares no task or length at or below its context with this evaluation is refused with a one-line
error before anything is measured.
"""

from __future__ import annotations

import hashlib
import json
import os

from ctxjax.errors import InputError
from ctxjax.evaluate.report import flat_metrics, load_results

DEFAULT_TOLERANCE = {"ppl": 0.02, "acc": 0.05}
NO_REGRESSION = "no short-context regression"
NOTHING_COMPARED = "not compared: no metric was measured by both at a length <= the baseline's context"
# What must match for numbers to be comparable: (results.json model field, what it is).
SAME_MODEL = (("family", "model family"), ("vocab_size", "vocabulary size"), ("tokenizer", "tokenizer"))


# Text whose ids tell tokenizers apart (words, digits, code, whitespace, accents, CJK, emoji).
PROBE = ("The passkey is 68021. Remember it.\n\tdef f(x):\n        return x ** 2  # café, naïve, 東京, 🙂\n"
         "What is the best thing to do in San Francisco? Answer:")


def tokenizer_signature(tokenizer) -> str:
    """A short hash of how `tokenizer` encodes PROBE and of its vocabulary size: equal for the same tokenizer
    however its file was written (re-saved, copied by an export), different for another vocabulary."""
    ids = [tokenizer.vocab_size, *tokenizer.encode(PROBE)]
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def parse_tolerance(spec) -> dict[str, float]:
    """"ppl=0.05,acc=0.1" (or a dict; kinds not named keep their default) -> {"ppl": 0.05, "acc": 0.1}."""
    given = spec or {}
    if isinstance(spec, str):
        try:
            items = (item.split("=") for item in spec.split(",") if item.strip())
            given = {k.strip(): float(v) for k, v in items}
        except ValueError:
            raise InputError(f"--tolerance {spec!r} must look like ppl=0.02,acc=0.05") from None
    unknown = sorted(set(given) - set(DEFAULT_TOLERANCE))
    if unknown:
        raise InputError(f"--tolerance names unknown metric kinds {unknown}; use ppl (relative) and acc "
                         "(absolute points as a fraction)")
    tolerance = {**DEFAULT_TOLERANCE, **{k: float(v) for k, v in given.items()}}
    if tolerance["ppl"] < 0 or not 0 <= tolerance["acc"] <= 1:
        raise InputError(f"--tolerance {tolerance}: ppl must be >= 0 (relative) and acc in [0, 1] (0.05 = 5 "
                         "points)")
    return tolerance


def load_baseline(path: str) -> dict:
    results = load_results(path)
    if not isinstance(results.get("model"), dict) or not results["model"].get("max_seq_len"):
        raise InputError(f"--baseline {path}: its results.json records no model.max_seq_len; pass the output "
                         "directory of a `ctxjax eval` run")
    return results


def baseline_context(baseline: dict) -> int:
    return int(baseline["model"]["max_seq_len"])


def _tasks(results: dict) -> set[str]:
    return {k for k, v in results.items() if isinstance(v, dict) and ("cells" in v or k == "ppl")}


def check_compatible(baseline: dict, model: dict, eval_config: dict, lengths,
                     where: str = "--baseline") -> None:
    """One-line InputError when `baseline` cannot be compared with an evaluation of `model` (results.json's
    model record) with `eval_config` at `lengths`."""
    for field, what in SAME_MODEL:
        before, after = baseline["model"].get(field), model.get(field)
        if before is not None and after is not None and before != after:
            raise InputError(f"{where} was evaluated with another {what} ({before} vs {after} here): "
                             "compare a model only with an earlier version of itself")
    tasks = set(eval_config.get("tasks", ())) & _tasks(baseline)
    if not tasks:
        raise InputError(f"{where} measured none of the tasks asked for here "
                         f"({', '.join(eval_config['tasks'])}; it has "
                         f"{', '.join(sorted(_tasks(baseline))) or 'none'})")
    before_source = baseline.get("eval_config", {}).get("source")
    if "ppl" in tasks and before_source and before_source != eval_config.get("source"):
        raise InputError(f"{where} measured perplexity on {before_source}, this evaluation on "
                         f"{eval_config.get('source')}: pass --source {before_source}")
    context = baseline_context(baseline)
    shared = sorted(n for n in set(lengths) & set(baseline.get("lengths", ())) if n <= context)
    if not shared:
        raise InputError(f"{where} shares no length at or below its context ({context}) with this "
                         f"evaluation (baseline {list(baseline.get('lengths', []))}, here {list(lengths)}): "
                         "use --lengths from the baseline's or --tasks short")


def _by_kind(results: dict) -> dict[tuple[str, int], tuple[str, float]]:
    """{(metric, length): (kind, value)} for every length-resolved metric: ppl/<method>, <task>/acc and
    ruler/<task>."""
    out = {}
    for key, value in flat_metrics(results).items():
        parts = key.split("/")[1:]  # drop the "eval" prefix
        if not parts[-1].isdigit() or value is None:
            continue
        metric, length = "/".join(parts[:-1]), int(parts[-1])
        if parts[0] == "ppl":
            out[(metric, length)] = ("ppl", float(value))
        elif parts[-2] == "acc" or parts[0] == "ruler":  # RULER's scores are fractions like accuracies
            out[(metric, length)] = ("acc", float(value))
    return out


def compare(results: dict, baseline: dict, baseline_dir: str, tolerance=None) -> dict:
    """The verdict results.json records under "baseline"."""
    tolerance = parse_tolerance(tolerance)
    context = baseline_context(baseline)
    before, after = _by_kind(baseline), _by_kind(results)
    compared, regressed = [], []
    for (metric, length), (kind, old) in sorted(before.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if length > context or (metric, length) not in after:
            continue
        new = after[(metric, length)][1]
        compared.append(f"{metric}/{length}")
        worse = new > old * (1 + tolerance["ppl"]) if kind == "ppl" else new < old - tolerance["acc"]
        if worse:
            regressed.append({"metric": metric, "length": length, "kind": kind, "before": old, "after": new})
    if not compared:  # e.g. every shared cell was skipped in one of the two: say so, never "no regression"
        verdict = NOTHING_COMPARED
    else:
        verdict = (NO_REGRESSION if not regressed
                   else f"short-context regression in {len(regressed)} of {len(compared)} metrics")
    return {"dir": os.path.abspath(baseline_dir), "run": baseline.get("run"), "context": context,
            "tolerance": tolerance, "compared": compared, "regressed": regressed, "verdict": verdict}


def _change(r: dict) -> str:
    if r["kind"] == "ppl":
        return f"{r['before']:.4g} -> {r['after']:.4g} ({r['after'] / r['before'] - 1:+.1%})"
    return f"{r['before']:.0%} -> {r['after']:.0%} ({100 * (r['after'] - r['before']):+.0f} points)"


def verdict_lines(verdict: dict | None) -> list[str]:
    """The opening of summary.md when a baseline was given ([] otherwise)."""
    if not verdict:
        return []
    tol = verdict["tolerance"]
    against = (f"against {verdict.get('run') or verdict['dir']} at lengths <= {verdict['context']} "
               f"({len(verdict['compared'])} metrics; tolerance: perplexity +{tol['ppl']:.0%}, accuracy "
               f"-{100 * tol['acc']:.0f} points)")
    if not verdict["regressed"]:
        return [f"**Verdict: {verdict['verdict']}** {against}.", ""]
    return ([f"**Verdict: {verdict['verdict']}** {against}:", ""]
            + [f"- {r['metric']} at {r['length']}: {_change(r)}" for r in verdict["regressed"]] + [""])
