"""The study's report (docs/results.md): how it was run, the fourteen verdicts with their numbers, one table
per group of arms, and figures beside it (<report>-figures/). Written only over a file it wrote itself."""

from __future__ import annotations

import datetime
import math
import os
import platform

from matplotlib.figure import Figure

from ctxjax.errors import InputError
from ctxjax.evaluate.plots import (plot_per_position, plot_perplexity, plot_retrieval_vs_length,
                                   save_figure)
from ctxjax.fs import write_atomically
from ctxjax.study.arms import Scale
from ctxjax.study.verdicts import Numbers, fmt, pct, si, verdicts

MARKER = "<!-- written by `ctxjax study`: rerunning the study rewrites this file -->"


def write_report(done: dict, scale: Scale, out: str, path: str, command: str,
                 notes: str | None = None) -> str:
    """Render the report of `done` (run_study's result, `out` its directory) to `path`; returns the text.
    `notes`: a markdown file of commentary (why a prediction did or did not reproduce), put after the
    verdicts."""
    commentary = check_report_target(path, notes)
    figures = os.path.splitext(path)[0] + "-figures"
    os.makedirs(figures, exist_ok=True)
    numbers = Numbers(done, scale.base_len, out)
    text = "\n".join([MARKER, *_header(numbers, scale, command), *_verdicts(numbers), *commentary,
                      *_pretrain(numbers, scale), *_zero_shot(numbers, scale), *_fine_tune(numbers, scale),
                      *_staged(numbers, scale), *_warm_up(numbers),
                      *_figures(numbers, scale, figures, os.path.dirname(os.path.abspath(path)))])
    write_atomically(path, text.encode())
    return text


def check_report_target(path: str, notes: str | None = None) -> list[str]:
    """Refuse, before anything runs, a report path holding a file the study did not write, and notes it cannot
    read; returns the notes' lines."""
    if os.path.exists(path) and MARKER not in open(path, encoding="utf-8", errors="replace").read():
        raise InputError(f"{path} exists and was not written by `ctxjax study`; choose another --report "
                         "(nothing was overwritten)")
    if not notes:
        return []
    try:
        with open(notes, encoding="utf-8") as f:
            return [f.read().rstrip(), ""]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--notes {notes}: cannot read it ({error}); give a markdown file") from None


def _x(n: int, L: int) -> str:
    return f"{n // L}x ({n})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _minutes(seconds: float) -> str:
    return fmt(seconds / 60)


def _header(n: Numbers, scale: Scale, command: str) -> list[str]:
    costs = [a["cost"] for a in n.done.values()]
    train_s = sum(c.get("wall_s", 0.0) for c in costs)
    eval_s = sum(c.get("eval_s", 0.0) for c in costs)
    params = next((r["results"]["all"]["model"]["params"] for r in n.done.values() if "all" in r["results"]),
                  0)
    L = scale.base_len
    return [
        "# Results: context extension reproduced at CPU scale", "",
        "The protocol of `shared/reference/papers.md` §10, run end to end by one command. Every number below "
        "is read from the study's own output; rerunning the command skips the arms already done and rewrites "
        "this file.", "",
        f"- command: `{command}`",
        f"- rendered {datetime.date.today().isoformat()} on {_hardware()}",
        f"- time taken: training {_minutes(train_s)} min, evaluation {_minutes(eval_s)} min "
        f"({_minutes(train_s + eval_s)} min in all, summed over the {len(n.done)} arms run)",
        f"- model: Llama-style (RMSNorm, SwiGLU, RoPE unless the arm says otherwise), d_model "
        f"{scale.d_model}, {scale.n_layers} layers, {scale.n_heads} heads, vocabulary {scale.vocab_size}, "
        f"{si(params)} parameters",
        "- data: the embedded corpus (Python standard library source), 1 row in 3, and passkey documents "
        "about a row long with a randomly drawn filler, 2 rows in 3 (multi-key is evaluated, not trained: "
        f"`ctxjax.study.arms.data_mix`); evaluation on held-out files, {scale.eval_documents} "
        f"documents, up to {scale.eval_windows} windows per length and method, {scale.trials} prompts per "
        "(length, depth) retrieval cell",
        f"- L = {L} (pretraining), extension to 4L = {4 * L}; pretraining {scale.pretrain_steps} steps, "
        f"fine-tuning {scale.finetune_steps} steps, staged arms {scale.scratch_steps} steps, all at "
        f"{scale.tokens_per_step} tokens per step",
        "- scaled down from the papers: 7B models trained at 2048-4096 on billions of tokens become a "
        f"{si(params)}-parameter model at {L} on {si(scale.pretrain_steps * scale.tokens_per_step)} tokens; "
        "compare orderings and ratios, not absolute values (§10.5)",
        "",
        "Perplexity is measured three ways (docs/evaluation.md); only the **fixed target set** (the last "
        f"{min(128, L)} tokens of every held-out document long enough for {max(scale.eval_lengths)} tokens, "
        "scored with a growing context) shows whether more context is used, so it is the one the tables show "
        "unless they say otherwise.", ""]


def _hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                         model)
    except OSError:
        pass
    import jax

    device = jax.devices()[0]
    where = f"{os.cpu_count()} CPU cores ({model})" if device.platform == "cpu" else device.device_kind
    return f"{where}, jax {jax.__version__}"


def _verdicts(n: Numbers) -> list[str]:
    judged = verdicts(n)
    counts = {v: sum(j.verdict == v for j in judged)
              for v in ("reproduced", "partly", "not reproduced", "not measured")}
    summary = ", ".join(f"{c} {v}" for v, c in counts.items() if c)
    rows = [[str(v.number), v.claim, f"**{v.verdict}**", v.evidence] for v in judged]
    return ["## The fourteen predictions", "",
            f"{summary}. Each verdict applies the rule in `ctxjax/study/verdicts.py` to the numbers shown: "
            "*reproduced* when every condition of the prediction holds, *partly* when some do. Differences "
            "within 5% count as equal.", "",
            *_table(["#", "prediction (§10.5)", "verdict", "numbers"], rows)]


def _ppl_row(n: Numbers, arm: str, lengths, **kw) -> list[str]:
    return [fmt(n.ppl(arm, m, **kw)) for m in lengths]


def _pretrain(n: Numbers, scale: Scale) -> list[str]:
    L, lengths = scale.base_len, scale.eval_lengths
    retrieval = [m for m in lengths if m <= 4 * L]
    rows = [[n.done[a]["arm"].title, fmt(n.cost(a, "final_loss"), 3), *_ppl_row(n, a, lengths),
             *[pct(n.passkey(a, m)) for m in retrieval], pct(n.passkey(a, L, "multikey")), *_cost(n, a)]
            for a in ("rope", "alibi", "nope") if n.has(a)]
    return ["## Pretraining at L", "",
            "Same data, tokens and seed; the RoPE model is the base of every extension below. Beyond L the "
            "RoPE column is direct extrapolation.", "",
            *_table(["arm", "final train loss", *[f"ppl {_x(m, L)}" for m in lengths],
                     *[f"passkey {_x(m, L)}" for m in retrieval], f"multikey {_x(L, L)}", *COST_HEADER],
                    rows)]


COST_HEADER = ["tokens", "FLOPs", "train min"]


def _cost(n: Numbers, arm: str) -> list[str]:
    return [si(n.cost(arm, "tokens")), si(n.cost(arm, "flops")),
            _minutes(n.cost(arm, "wall_s"))]


ZERO_SHOT = (("rope", "direct extrapolation"), ("zs-pi", "PI"), ("zs-ntk", "NTK-aware"),
             ("zs-dynamic", "dynamic NTK"), ("zs-yarn", "YaRN"),
             ("zs-yarn-notemp", "YaRN without temperature"))


def _zero_shot(n: Numbers, scale: Scale) -> list[str]:
    L, lengths = scale.base_len, scale.eval_lengths[1:]
    arms = [(a, title) for a, title in ZERO_SHOT if n.has(a)]
    ppl = [[title, *_ppl_row(n, a, lengths)] for a, title in arms]
    keys = [[title, *[pct(n.passkey(a, m)) for m in lengths]] for a, title in arms]
    return ["## Zero-shot extension of the RoPE model", "",
            "No training: the rotation scaled by s = length / L at each length. At L every method is the "
            f"base model (fixed-target ppl {fmt(n.ppl('rope', L)) if n.has('rope') else 'n/a'}).", "",
            "Fixed-target perplexity:", "", *_table(["method", *[_x(m, L) for m in lengths]], ppl),
            "Passkey accuracy (mean over depths):", "",
            *_table(["method", *[_x(m, L) for m in lengths]], keys)]


FINE_TUNE = ("ft-direct", "ft-pi", "ft-ntk", "ft-yarn", "ft-yarn-40", "ft-abf", "ft-pose", "ft-longlora",
             "ft-pi-s1", "ft-yarn-s1")
SEEDS = (("PI", "ft-pi", "ft-pi-s1"), ("YaRN", "ft-yarn", "ft-yarn-s1"))


def _fine_tune(n: Numbers, scale: Scale) -> list[str]:
    L, X, lengths = scale.base_len, scale.extended_len, scale.eval_lengths
    retrieval = [m for m in lengths if m <= 8 * L]
    base = n.ppl("rope", L) if n.has("rope") else math.nan

    def regression(arm):
        return f"{fmt(n.ppl(arm, L))} ({100 * (n.ppl(arm, L) / base - 1):+.1f}%)" if not math.isnan(base) \
            else fmt(n.ppl(arm, L))

    rows = [[n.done[a]["arm"].title, regression(a), *_ppl_row(n, a, lengths[1:]), fmt(n.ppl(a, X, "sliding")),
             *[pct(n.passkey(a, m)) for m in retrieval], pct(n.passkey(a, X, "multikey")), *_cost(n, a)]
            for a in FINE_TUNE if n.has(a)]
    seeds = []
    for title, a, b in SEEDS:
        if n.has(a, b):
            for what, get in ((f"fixed-target ppl at {_x(X, L)}", lambda arm: n.ppl(arm, X)),
                              (f"passkey at {_x(X, L)}", lambda arm: n.passkey(arm, X))):
                x, y = get(a), get(b)
                show = pct if what.startswith("passkey") else fmt
                seeds.append([title, what, show(x), show(y), show(abs(x - y))])
    return ["## Fine-tuned extension to 4L", "",
            f"From the RoPE model's Hugging Face export, {scale.finetune_steps} steps at {X} tokens and a "
            "tenth of the pretraining learning rate (PoSE: the same tokens in rows of L). The first column "
            f"is the short-context regression: perplexity at L against the base model's {fmt(base)}.", "",
            *_table(["arm", f"ppl {_x(L, L)} (vs base)", *[f"ppl {_x(m, L)}" for m in lengths[1:]],
                     f"sliding ppl {_x(X, L)}", *[f"passkey {_x(m, L)}" for m in retrieval],
                     f"multikey {_x(X, L)}", *COST_HEADER], rows),
            *(["Seed spread (initialisation of anything new and data order):", "",
               *_table(["method", "metric", "seed 0", "seed 1", "difference"], seeds)] if seeds else [])]


def _staged(n: Numbers, scale: Scale) -> list[str]:
    L, X = scale.base_len, scale.extended_len
    names = [a for a in ("scratch-4x", "staged-20", "staged-40") if n.has(a)]
    rows = [[n.done[a]["arm"].title, fmt(n.ppl(a, L)), fmt(n.ppl(a, X)), pct(n.passkey(a, X)),
             fmt(n.cost(a, "final_loss"), 3), *_cost(n, a)] for a in names]
    return ["## Staged growth against training at 4L from scratch", "",
            f"{scale.scratch_steps} steps at {scale.tokens_per_step} tokens per step each; the staged arms "
            f"train at L for the first 20% or 40% of the steps, then at 4L.", "",
            *_table(["arm", f"ppl {_x(L, L)}", f"ppl {_x(X, L)}", f"passkey {_x(X, L)}", "final train loss",
                     *COST_HEADER], rows)]


def _warm_up(n: Numbers) -> list[str]:
    rows = [[n.done[a]["arm"].title, str(n.spikes(a)), fmt(max((r["loss"] for r in n.training_log(a)),
                                                               default=math.nan), 3),
             fmt(n.cost(a, "final_loss"), 3), fmt(n.ppl(a, n.L))] for a in ("lr4x", "lr4x-slw") if n.has(a)]
    return ["## Sequence-length warm-up at an aggressive learning rate", "",
            "Four times the pretraining learning rate, with and without rows growing L/8 -> L over the first "
            "3/8 of the steps (same tokens per step). A spike is a logged interval whose loss rose by more "
            "than 0.1 nats over the previous one.", "",
            *_table(["arm", "loss spikes", "highest logged loss", "final train loss", f"ppl {_x(n.L, n.L)}"],
                    rows)]


def _combined(n: Numbers, arm: str) -> dict:
    """One results dict for an arm: a zero-shot arm's per-length evaluations merged (each at its own s)."""
    results = n.done[arm]["results"]
    if "all" in results:
        return results["all"]
    merged: dict = {"ppl": {}, "passkey": {"cells": []}}
    for length, r in results.items():
        for method, values in r["ppl"].items():
            if method in ("fixed_target", "sliding", "nonoverlapping"):
                merged["ppl"].setdefault(method, {}).update(values)
        merged["passkey"]["cells"] += r.get("passkey", {}).get("cells", [])
    return merged


def _figures(n: Numbers, scale: Scale, figures: str, report_dir: str) -> list[str]:
    X = scale.extended_len
    title = {a: n.done[a]["arm"].title for a in n.done}

    def runs(arms, rename=None):
        return {(rename or {}).get(a, title[a]): _combined(n, a) for a in arms if n.has(a)}

    direct, base = {"rope": "direct extrapolation"}, {"rope": "base (not fine-tuned)"}

    drawn = [
        ("Perplexity by context: pretraining and zero-shot extension",
         plot_perplexity(runs(("rope", "alibi", "nope")), os.path.join(figures, "pretrain_ppl.png"))),
        ("Zero-shot extension of the RoPE model (each length at its own scale factor)",
         plot_perplexity(runs(ZERO_SHOT_ARMS, direct), os.path.join(figures, "zero_shot_ppl.png"))),
        ("Fine-tuned extension: perplexity by context",
         plot_perplexity(runs(("rope",) + FINE_TUNE[:8], base), os.path.join(figures, "fine_tune_ppl.png"))),
        ("Passkey accuracy by length: zero-shot",
         plot_retrieval_vs_length(runs(ZERO_SHOT_ARMS, direct), "passkey",
                                  os.path.join(figures, "zero_shot_passkey.png"))),
        ("Passkey accuracy by length: fine-tuned",
         plot_retrieval_vs_length(runs(("rope",) + FINE_TUNE[:8], base), "passkey",
                                  os.path.join(figures, "fine_tune_passkey.png"))),
        (f"Loss by position in one window of {X} tokens",
         plot_per_position({title[a]: _combined(n, a)["ppl"]["per_position"][str(X)]
                            for a in ("rope", "alibi", "nope") + FINE_TUNE[:8]
                            if n.has(a) and str(X) in _combined(n, a)["ppl"].get("per_position", {})},
                           os.path.join(figures, "loss_by_position.png"),
                           f"held-out loss by position, window {X}")),
        ("Training loss: staged growth and from scratch, by tokens seen",
         _plot_training(n, ("scratch-4x", "staged-20", "staged-40"),
                        os.path.join(figures, "staged_loss.png"))),
        ("Training loss: aggressive learning rate with and without sequence-length warm-up",
         _plot_training(n, ("lr4x", "lr4x-slw"), os.path.join(figures, "warm_up_loss.png"))),
    ]
    lines = ["## Figures", ""]
    for caption, path in drawn:
        if path:
            lines += [f"**{caption}**", "", f"![{caption}]({os.path.relpath(path, report_dir)})", ""]
    return lines


ZERO_SHOT_ARMS = tuple(a for a, _ in ZERO_SHOT)


def _plot_training(n: Numbers, arms, path: str) -> str | None:
    logs = {n.done[a]["arm"].title: n.training_log(a) for a in arms if n.has(a)}
    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, rows in logs.items():
        tokens, seen, last = [], 0, 0
        for r in rows:  # tokens per step are constant within a run; the rows' lengths may change
            seen += (r["step"] - last) * r["seq_len"] * r["batch_size"]
            last = r["step"]
            tokens.append(seen / 1e6)
        ax.plot(tokens, [r["loss"] for r in rows], label=label)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("training loss (nats)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
