"""PNG figures of evaluation results. Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so
nothing depends on a display or on global backend state.

Every function takes `runs`: {run label: results dict as written to results.json}, so one run and a
comparison of several are the same code (one curve per run)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctxjax.evaluate.config import PPL_METHODS

METHOD_TITLES = {"nonoverlapping": "non-overlapping windows", "sliding": "sliding window",
                 "fixed_target": "fixed target set (last K tokens)"}


def save_figure(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _lengths_and(values: dict, key: str):
    pairs = sorted((int(n), v[key]) for n, v in values.items())
    return [n for n, _ in pairs], [v for _, v in pairs]


def _length_axis(ax, lengths) -> None:
    """Log-2 length axis labelled with the evaluated lengths themselves."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")


def plot_perplexity(runs: dict[str, dict], path: str) -> str | None:
    """Perplexity vs context length: one panel per method, one curve per run."""
    methods = [m for m in PPL_METHODS if any(r.get("ppl", {}).get(m) for r in runs.values())]
    if not methods:
        return None
    fig = Figure(figsize=(5 * len(methods), 4), layout="constrained")
    for i, method in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        for label, results in runs.items():
            values = results.get("ppl", {}).get(method) or {}
            if values:
                ax.plot(*_lengths_and(values, "ppl"), marker="o", label=label)
        _length_axis(ax, [int(n) for r in runs.values() for n in (r.get("ppl", {}).get(method) or {})])
        values = [v["ppl"] for r in runs.values() for v in (r.get("ppl", {}).get(method) or {}).values()]
        # A blow-up past the trained length: show it on a log scale.
        if values and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set_ylabel("perplexity")
        ax.set_title(METHOD_TITLES[method])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_per_position(curves: dict[str, dict], path: str, title: str) -> str | None:
    """Mean loss by target position bucket: `curves` maps a label to {"starts": [...], "nll": [...]}."""
    if not curves:
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, buckets in curves.items():
        ax.plot(buckets["starts"], buckets["nll"], marker=".", label=label)
    ax.set_xlabel("target position in the window (bucket start)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_retrieval_heatmap(task: dict, path: str, title: str, ylabel: str = "needle depth") -> str | None:
    """Accuracy per (depth, length) cell, annotated, for one run's passkey or needle results."""
    cells = task.get("cells") or []
    if not cells:
        return None
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for c in cells:
        grid[depths.index(c["depth"])][lengths.index(c["length"])] = c["accuracy"]
    fig = Figure(figsize=(1.2 * len(lengths) + 3, 0.6 * len(depths) + 2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
    for i, row in enumerate(grid):
        for j, acc in enumerate(row):
            ax.text(j, i, f"{acc:.0%}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel(ylabel)
    trials = max(c["trials"] for c in cells)
    ax.set_title(f"{title} ({trials} trials per cell)")
    fig.colorbar(image, ax=ax, label="accuracy")
    return save_figure(fig, path)


def plot_retrieval_vs_length(runs: dict[str, dict], task: str, path: str) -> str | None:
    """Accuracy averaged over depths vs length, one curve per run (the comparison view of the heatmaps)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for label, results in runs.items():
        by_length: dict[int, list[float]] = {}
        for c in (results.get(task) or {}).get("cells", []):
            by_length.setdefault(c["length"], []).append(c["accuracy"])
        if by_length:
            lengths = sorted(by_length)
            ax.plot(lengths, [sum(by_length[n]) / len(by_length[n]) for n in lengths], marker="o",
                    label=label)
            drawn = True
    if not drawn:
        return None
    _length_axis(ax, [c["length"] for r in runs.values() for c in (r.get(task) or {}).get("cells", [])])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("accuracy (mean over depths)")
    ax.set_title(task)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_masked(runs: dict[str, dict], path: str) -> str | None:
    """An encoder's masked-token loss and accuracy on fixed targets vs context length, one curve per run."""
    curves = {label: r["mlm"]["by_length"] for label, r in runs.items()
              if (r.get("mlm") or {}).get("by_length")}
    if not curves:
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    for i, (key, name) in enumerate((("nll", "mean NLL of the masked tokens (nats)"),
                                     ("accuracy", "top-1 accuracy of the masked tokens"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for label, values in curves.items():
            ax.plot(*_lengths_and(values, key), marker="o", label=label)
        _length_axis(ax, [int(n) for values in curves.values() for n in values])
        ax.set_ylabel(name)
        if key == "accuracy":
            ax.set_ylim(-0.05, 1.05)
        ax.set_title("fixed masked targets, growing context on both sides" if i == 0 else "")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_recall_by_distance(task: dict, path: str) -> str | None:
    """mlm_recall: accuracy vs the distance (tokens) between the fact and its masked mention, a curve per
    length."""
    cells = [c for c in task.get("cells") or [] if "distance" in c]
    if not cells:
        return None
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for length in sorted({c["length"] for c in cells}):
        row = sorted((c["distance"], c["accuracy"]) for c in cells if c["length"] == length)
        ax.plot([d for d, _ in row], [a for _, a in row], marker="o", label=f"length {length}")
    ax.set_xlabel("distance from the fact to its masked mention (tokens)")
    ax.set_ylabel("accuracy (all masked tokens right)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"masked key-value recall ({max(c['trials'] for c in cells)} trials per point)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
