"""Evaluation outputs on disk: results.json (everything), summary.md (tables) and the PNG plots, for one run
or a comparison of several; plus the flat metrics a training loop logs."""

from __future__ import annotations

import json
import os

from ctxjax.errors import InputError, read_json
from ctxjax.evaluate import plots
from ctxjax.evaluate.config import PPL_METHODS
from ctxjax.evaluate.progress import throughput_lines
from ctxjax.evaluate.ruler import report as ruler_report

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
RETRIEVAL_TITLES = {"passkey": "Passkey retrieval", "multikey": "Multi-key passkey (with distractors)",
                    "needle": "Needle in a haystack",
                    "mlm_recall": "Masked key-value recall (encoder): the value masked at a later mention"}


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """{"eval/ppl/sliding/1024": 7.1, "eval/passkey/acc/1024": 0.8, "eval/passkey/max_length_80": 1024,
    ...}."""
    out: dict[str, float] = {}
    for method in PPL_METHODS:
        for length, value in (results.get("ppl", {}).get(method) or {}).items():
            out[f"{prefix}/ppl/{method}/{length}"] = value["ppl"]
    for length, value in (results.get("mlm", {}).get("by_length") or {}).items():
        out[f"{prefix}/mlm/nll/{length}"] = value["nll"]
        out[f"{prefix}/mlm/acc/{length}"] = value["accuracy"]
    for task in RETRIEVAL_TITLES:
        if task not in results:
            continue
        by_length: dict[int, list[float]] = {}
        for c in results[task]["cells"]:
            by_length.setdefault(c["length"], []).append(c["accuracy"])
        for length, accs in sorted(by_length.items()):
            out[f"{prefix}/{task}/acc/{length}"] = sum(accs) / len(accs)
        for key in ("max_length_80", "max_length_20"):
            out[f"{prefix}/{task}/{key}"] = results[task][key] or 0
    if "ruler" in results:
        out.update(ruler_report.flat_metrics(results["ruler"], prefix))
    return out


def metrics_by_length(eval_config) -> tuple[str, ...]:
    """The names flat_metrics gives a value per length (without the prefix and the length) for the tasks of
    `eval_config`: "ppl/fixed_target", "passkey/acc", ... (what a training stage's gate may name)."""
    names = [f"ppl/{m}" for m in eval_config.ppl_methods] if "ppl" in eval_config.tasks else []
    names += ["mlm/nll", "mlm/acc"] if "mlm" in eval_config.tasks else []
    return tuple(names + [f"{task}/acc" for task in RETRIEVAL_TITLES if task in eval_config.tasks])


def skipped_cells(results: dict) -> list[str]:
    """'task: skipped length L: reason' for everything the evaluation could not measure."""
    return [f"{task}: {line[2:]}" for task in ("ppl", "mlm", *RETRIEVAL_TITLES) if task in results
            for line in _skips(results[task].get("skipped", []))] + (
        ruler_report.skipped_lines(results["ruler"]) if "ruler" in results else [])


def measured_anything(results: dict) -> bool:
    ppl = results.get("ppl", {})
    return (any(ppl.get(m) for m in PPL_METHODS) or bool(results.get("mlm", {}).get("by_length"))
            or any(results[t]["cells"] for t in RETRIEVAL_TITLES if t in results)
            or ("ruler" in results and ruler_report.measured_anything(results["ruler"])))


def _skips(skipped: list[dict]) -> list[str]:
    return [f"- skipped length {s['length']}"
            + (f" ({s['method']})" if s.get("method", "all") != "all" else "") + f": {s['reason']}"
            for s in skipped]


def _ppl_section(ppl: dict) -> list[str]:
    methods = [m for m in PPL_METHODS if m in ppl]
    lengths = sorted({int(n) for m in methods for n in ppl[m]}
                     | {int(n) for n in ppl.get("per_position", {})})
    titles = {"nonoverlapping": "non-overlapping", "sliding": "sliding window",
              "fixed_target": "fixed target set"}
    header = ["length"] + [titles[m] for m in methods]
    lines = ["## Perplexity by context length", "",
             "Cells: perplexity (scored tokens, documents).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in lengths:
        row = [str(n)]
        for m in methods:
            v = ppl[m].get(str(n))
            detail = {"sliding": f", stride {v.get('stride')}" if v else "",
                      "fixed_target": f", last {v.get('target_tokens')} tokens" if v else ""}.get(m, "")
            row.append(f"{v['ppl']:.3f} ({v['tokens']} tokens, {v['documents']} docs{detail})" if v
                       else "skipped")
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""] + _skips(ppl.get("skipped", [])) + [""]


def _mlm_section(mlm: dict) -> list[str]:
    lines = ["## Masked-token loss by context length (fixed masked targets)", "",
             f"The same {mlm.get('mask_rate', 0):.0%} of the middle {mlm.get('target_tokens', '?')} tokens "
             "of each document masked at every length; the window grows on both sides. Cells: mean NLL "
             "(nats), pseudo-perplexity exp(NLL), top-1 accuracy.", "",
             "| length | NLL | pseudo-perplexity | accuracy | masked tokens, docs |", "|---|---|---|---|---|"]
    for n, v in sorted(mlm.get("by_length", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | {v['nll']:.4f} | {v['ppl']:.3f} | {v['accuracy']:.1%} | {v['tokens']}, "
                     f"{v['documents']} |")
    return lines + [""] + _skips(mlm.get("skipped", [])) + [""]


def _distance_lines(cells: list[dict]) -> list[str]:
    """mlm_recall: how far the mention is from the fact in each cell."""
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    cell = {(c["length"], c["depth"]): c for c in cells}
    return ["Mean distance in tokens (filler between the fact and the masked mention); rows: depth, columns: "
            "length.", "", "| depth | " + " | ".join(map(str, lengths)) + " |",
            "|" + "---|" * (len(lengths) + 1),
            *(f"| {d:.0%} | " + " | ".join(f"{cell[(n, d)].get('distance', 0):.0f}" if (n, d) in cell else "-"
                                           for n in lengths) + " |" for d in depths), ""]


def _retrieval_section(task: str, results: dict) -> list[str]:
    cells = results["cells"]
    lines = [f"## {RETRIEVAL_TITLES[task]}", ""]
    if cells:
        lengths = sorted({c["length"] for c in cells})
        depths = sorted({c["depth"] for c in cells})
        acc = {(c["length"], c["depth"]): c for c in cells}
        where = "the masked mention" if task == "mlm_recall" else "the needle"
        lines += [f"Accuracy per cell ({cells[0]['trials']} trials each); rows: depth of {where}, "
                  "columns: prompt length in tokens.", "",
                  "| depth | " + " | ".join(map(str, lengths)) + " |", "|" + "---|" * (len(lengths) + 1)]
        for d in depths:
            lines.append(f"| {d:.0%} | " + " | ".join(f"{acc[(n, d)]['accuracy']:.0%}" for n in lengths)
                         + " |")
        lines.append("")
        if task == "mlm_recall":
            lines += _distance_lines(cells)
    for key, label in (("max_length_80", "80%"), ("max_length_20", "20%")):
        value = results[key]
        lines.append(f"- largest length with >= {label} accuracy at every depth: "
                     + (str(value) if value is not None else "none"))
    return lines + _skips(results.get("skipped", [])) + [""]


def summary_markdown(results: dict, opening: list[str] = ()) -> str:
    """The tables of summary.md; `opening`: lines right under the title (the short-context verdict)."""
    title = results.get("run") or "evaluation"
    step = f" at step {results['step']}" if results.get("step") is not None else ""
    model = results.get("model", {})
    lines = [f"# {title}{step}", "", *opening]
    if model:
        lines += [f"model: {model.get('params', '?')} parameters, positions {model.get('position')}, "
                  f"max_seq_len {model.get('max_seq_len')}, attention kernel {model.get('attention')}"
                  + (f", sliding window {model['sliding_window']}" if model.get("sliding_window") else ""),
                  ""]
    if "ppl" in results:
        lines += _ppl_section(results["ppl"])
    if "mlm" in results:
        lines += _mlm_section(results["mlm"])
    for task in RETRIEVAL_TITLES:
        if task in results:
            lines += _retrieval_section(task, results[task])
    if "ruler" in results:
        lines += ruler_report.section(results["ruler"])
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"- [{p}]({p})" for p in results["plots"]] + [""]
    lines += throughput_lines(results.get("throughput"))  # last: what the evaluation cost
    return "\n".join(lines)


def write_plots(runs: dict[str, dict], out_dir: str) -> list[str]:
    """The figures for `runs` (one or several); returns the file names written."""
    written = [plots.plot_perplexity(runs, os.path.join(out_dir, "ppl_vs_length.png")),
               plots.plot_masked(runs, os.path.join(out_dir, "mlm_vs_length.png"))]
    if len(runs) == 1:
        (results,) = runs.values()
        curves = {f"window {n}": b for n, b in sorted(results.get("ppl", {}).get("per_position", {}).items(),
                                                      key=lambda kv: int(kv[0]))}
        written.append(plots.plot_per_position(curves, os.path.join(out_dir, "per_position_loss.png"),
                                               "loss by position, one window of each length"))
        for task, title in RETRIEVAL_TITLES.items():
            if task in results:
                written.append(plots.plot_retrieval_heatmap(
                    results[task], os.path.join(out_dir, f"{task}_heatmap.png"), title,
                    ylabel="depth of the masked mention" if task == "mlm_recall" else "needle depth"))
        if "mlm_recall" in results:
            written.append(plots.plot_recall_by_distance(results["mlm_recall"],
                                                         os.path.join(out_dir, "mlm_recall_by_distance.png")))
    else:
        common = set.intersection(*(set(r.get("ppl", {}).get("per_position", {})) for r in runs.values()))
        if common:
            longest = max(common, key=int)
            curves = {label: r["ppl"]["per_position"][longest] for label, r in runs.items()}
            written.append(plots.plot_per_position(curves, os.path.join(out_dir, "per_position_loss.png"),
                                                   f"loss by position, window of {longest}"))
        for task in RETRIEVAL_TITLES:
            written.append(plots.plot_retrieval_vs_length(runs, task,
                                                          os.path.join(out_dir, f"{task}_vs_length.png")))
    if any(r.get("ruler") for r in runs.values()):
        written += ruler_report.write_plots(runs, out_dir)
    return [os.path.basename(p) for p in written if p]


def write_report(results: dict, out_dir: str, opening: list[str] = ()) -> dict:
    """Write plots, results.json and summary.md (`opening` under its title) for one run; returns `results`
    with the plot names added."""
    os.makedirs(out_dir, exist_ok=True)
    results = {**results, "plots": write_plots({results.get("run") or "run": results}, out_dir)}
    with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, SUMMARY_FILE), "w") as f:
        f.write(summary_markdown(results, opening))
    return results


def load_results(run: str) -> dict:
    """results.json of an evaluation output directory (or the file itself)."""
    path = run if run.endswith(".json") else os.path.join(run, RESULTS_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{run} holds no {RESULTS_FILE}; pass output directories of `ctxjax eval`")
    return read_json(path, "the results of `ctxjax eval`")


def compare_runs(runs: list[str], out_dir: str) -> list[str]:
    """Overlay several evaluations (their output directories) in one set of plots plus a comparison table
    (compare.md); returns the paths written."""
    if len(runs) < 2:
        raise InputError("--compare needs at least two evaluation output directories")
    loaded: dict[str, dict] = {}
    for run in runs:
        results = load_results(run)
        label = results.get("run") or os.path.basename(os.path.normpath(run))
        if label in loaded:  # two runs with one name: tell them apart by directory
            label = f"{label} ({os.path.normpath(run)})"
        loaded[label] = results
    os.makedirs(out_dir, exist_ok=True)
    names = write_plots(loaded, out_dir)
    lines = ["# Comparison", "", "| metric | " + " | ".join(loaded) + " |", "|" + "---|" * (len(loaded) + 1)]
    metrics = [flat_metrics(r) for r in loaded.values()]
    for key in sorted(set().union(*metrics), key=_metric_order):
        lines.append(f"| {key} | " + " | ".join(_fmt(m.get(key)) for m in metrics) + " |")
    lines += ["", "## Plots", ""] + [f"- [{n}]({n})" for n in names]
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return [os.path.join(out_dir, n) for n in names + ["compare.md"]]


def _metric_order(key: str):
    head, _, last = key.rpartition("/")
    return (head, int(last)) if last.isdigit() else (head, -1)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
