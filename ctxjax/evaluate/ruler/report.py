"""RULER's part of the evaluation outputs: the summary.md section, flat metrics, skipped cells and figures,
for `results["ruler"]` as `run_ruler` writes it. ctxjax.evaluate.report calls these."""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from ctxjax.evaluate.plots import save_figure

TITLES = {"niah_single": "single needle", "niah_multikey": "multi-key needle",
          "niah_multivalue": "multi-value needle", "niah_multiquery": "multi-query needle",
          "vt": "variable tracking", "cwe": "common words", "fwe": "frequent words", "qa": "QA over facts"}


def _lengths(ruler: dict) -> list[int]:
    return sorted({int(n) for t in ruler["tasks"].values() for n in t["by_length"]}
                  | {int(s["length"]) for t in ruler["tasks"].values() for s in t["skipped"]})


def flat_metrics(ruler: dict, prefix: str) -> dict[str, float]:
    out = {f"{prefix}/ruler/{task}/{n}": v for task, t in ruler["tasks"].items()
           for n, v in t["by_length"].items()}
    out.update({f"{prefix}/ruler/average/{n}": v["score"] for n, v in ruler["average"].items()})
    if ruler.get("mean") is not None:
        out[f"{prefix}/ruler/mean"] = ruler["mean"]
    return out


def skipped_lines(ruler: dict) -> list[str]:
    return [f"ruler {task}: skipped length {s['length']}: {s['reason']}" for task, t in ruler["tasks"].items()
            for s in t["skipped"]]


def measured_anything(ruler: dict) -> bool:
    return any(t["cells"] for t in ruler["tasks"].values())


def section(ruler: dict) -> list[str]:
    lengths = _lengths(ruler)
    trials = {c["trials"] for t in ruler["tasks"].values() for c in t["cells"]}
    lines = ["## RULER", "",
             "Score per task and prompt length (tokens): the mean over trials (and depths, for the needle "
             "and QA tasks) of recall (the fraction of the asked items in the reply) or, for QA, of answer "
             f"contained; {max(trials) if trials else 0} trials per cell. '-': skipped (reasons below).", "",
             "| task | " + " | ".join(map(str, lengths)) + " |", "|" + "---|" * (len(lengths) + 1)]
    for task, t in ruler["tasks"].items():
        row = [f"{t['by_length'][str(n)]:.0%}" if str(n) in t["by_length"] else "-" for n in lengths]
        lines.append(f"| {task} ({TITLES.get(task, task)}) | " + " | ".join(row) + " |")
    average = ruler["average"]
    lines.append("| **average** | " + " | ".join(
        (f"**{average[str(n)]['score']:.0%}**" + ("" if average[str(n)]["tasks"] == len(ruler["tasks"])
                                                 else f" ({average[str(n)]['tasks']} tasks)"))
        if str(n) in average else "-" for n in lengths) + " |")
    lines += ["", "- RULER average over lengths with every task measured: "
              + (f"{ruler['mean']:.1%}" if ruler.get("mean") is not None else "none")]
    lines += [f"- {line}" for line in skipped_lines(ruler)]
    return lines + [""]


def plot_heatmap(ruler: dict, path: str, title: str = "RULER") -> str | None:
    """Score per (task, length) and RULER's average per length (the last row), annotated; blank where
    skipped."""
    tasks = [name for name, t in ruler["tasks"].items() if t["by_length"]]
    if not tasks:
        return None
    lengths = _lengths(ruler)
    grid = [[ruler["tasks"][name]["by_length"].get(str(n), float("nan")) for n in lengths] for name in tasks]
    grid.append([ruler["average"][str(n)]["score"] if str(n) in ruler["average"] else float("nan")
                 for n in lengths])
    tasks = [*tasks, "average"]
    fig = Figure(figsize=(1.2 * len(lengths) + 4, 0.5 * len(tasks) + 2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i, row in enumerate(grid):
        for j, score in enumerate(row):
            ax.text(j, i, "-" if score != score else f"{score:.0%}", ha="center", va="center",
                    fontsize="small")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score")
    return save_figure(fig, path)


def plot_vs_length(runs: dict[str, dict], path: str) -> str | None:
    """Score vs length: one curve per task and RULER's average (thick) for one run; the average of each run
    for several."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    drawn = []
    for label, results in runs.items():
        ruler = results.get("ruler")
        if not ruler:
            continue
        curves = {} if len(runs) > 1 else {name: t["by_length"] for name, t in ruler["tasks"].items()}
        curves[f"{label}: average" if len(runs) > 1 else "average"] = {
            n: v["score"] for n, v in ruler["average"].items()}
        for name, values in curves.items():
            if values:
                pairs = sorted((int(n), v) for n, v in values.items())
                average = name.endswith("average")
                ax.plot(*zip(*pairs), marker="o", label=name, linewidth=3 if average else 1.2,
                        color="black" if average and len(runs) == 1 else None)
                drawn += [n for n, _ in pairs]
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    ticks = sorted(set(drawn))
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("score")
    ax.set_title("RULER by length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)


def write_plots(runs: dict[str, dict], out_dir: str) -> list[str]:
    """ruler_heatmap.png (one run) and ruler_vs_length.png; the paths written."""
    written = []
    if len(runs) == 1:
        (results,) = runs.values()
        if results.get("ruler"):
            written.append(plot_heatmap(results["ruler"], os.path.join(out_dir, "ruler_heatmap.png")))
    written.append(plot_vs_length(runs, os.path.join(out_dir, "ruler_vs_length.png")))
    return [p for p in written if p]
