"""The one table a context-extension run ends with: the model before extension (the end of its last stage at
the first stage's length, used directly at longer lengths) beside the model after it (the end of its last
stage), at each evaluated length — passkey and multikey accuracy, fixed-target perplexity. Built from the
results.json files that the stage-end evaluations wrote (`eval_at_stage_end`: WORKDIR/eval/step_N), so nothing
is measured twice.

    ctxjax extension-table runs/demo      # prints it and writes runs/demo/summary.md
"""

from __future__ import annotations

import os

from ctxjax.checkpoint import Checkpointer
from ctxjax.errors import InputError
from ctxjax.evaluate.report import flat_metrics, load_results
from ctxjax.evaluate.runner import workdir_eval_dir
from ctxjax.schedule import build_stages

# (column title, flat_metrics key before the length, how a value is written)
COLUMNS = (("passkey", "eval/passkey/acc", "{:.0%}"), ("multikey", "eval/multikey/acc", "{:.0%}"),
           ("fixed-target ppl", "eval/ppl/fixed_target", "{:.1f}"))
SUMMARY_FILE = "summary.md"


def stage_ends(workdir: str) -> list[tuple[int, int]]:
    """(last step, seq_len) of every stage, from the training config and gate extensions stored with the run's
    latest checkpoint."""
    with Checkpointer(workdir, read_only=True) as checkpointer:
        meta = checkpointer.restore_meta()
    train_config = meta.get("train_config") or {}
    if not train_config.get("stages"):
        raise InputError(f"the checkpoints of {workdir} hold no training config with stages (imported, not "
                         "trained?); an extension table needs a staged training run")
    # Stages a failed gate extended end later (ctxjax/train/gates.py).
    stages = build_stages(train_config["stages"], int(train_config["tokens_per_step"]),
                          float(train_config.get("min_lr_ratio", 0.1)), meta.get("stage_extensions"))
    return [(s.end, s.seq_len) for s in stages]


def before_and_after(ends: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (step, seq_len) ends of the model before extension, the last of the stages at the first stage's
    length (a run may train at its base length in several stages, e.g. on other data), and after it, the last
    stage."""
    base = ends[0][1]
    at_base = next((i for i, (_, n) in enumerate(ends) if n != base), len(ends))
    if at_base == len(ends):
        raise InputError(f"every stage of the run trains at {base} tokens; the table compares the model "
                         "before its context was extended with the model after")
    return ends[at_base - 1], ends[-1]


def _row(label: str, results: dict, lengths: list[int]) -> list[str]:
    metrics = flat_metrics(results)
    cells = [label]
    for _, key, fmt in COLUMNS:
        for n in lengths:
            value = metrics.get(f"{key}/{n}")
            cells.append(fmt.format(value) if value is not None else "–")
    return cells


def extension_table(before: dict, after: dict, base_length: int, before_label: str, after_label: str) -> str:
    """Markdown: rows before / after, columns passkey, multikey, fixed-target perplexity at each length both
    evaluations measured, titled by their multiple of `base_length`."""
    lengths = sorted(set(before.get("lengths", [])) & set(after.get("lengths", [])))
    if not lengths:
        raise InputError("the two evaluations share no length; evaluate both at the same --lengths")
    heads = [f"{title} {n} ({n / base_length:g}×)" for title, _, _ in COLUMNS for n in lengths]
    rows = [["", *heads], ["---"] * (len(heads) + 1), _row(before_label, before, lengths),
            _row(after_label, after, lengths)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def workdir_extension_summary(workdir: str) -> str:
    """The markdown of summary.md for a staged run whose stage-end evaluations exist."""
    (first, base), (last, final_len) = before_and_after(stage_ends(workdir))
    loaded = []
    for step in (first, last):
        directory = workdir_eval_dir(workdir, step)
        if not os.path.isfile(os.path.join(directory, "results.json")):
            raise InputError(f"no evaluation of step {step} in {directory}; train with "
                             f"--config.eval_at_stage_end=True, or run `ctxjax eval {workdir} --step {step}`")
        loaded.append(load_results(directory))
    before, after = loaded
    table = extension_table(before, after, base, f"before extension (step {first}, trained at {base})",
                            f"after extension (step {last}, trained to {final_len})")
    lines = [f"# {os.path.basename(os.path.normpath(workdir))}: before vs after context extension", "",
             f"The model at the end of its last stage at {base} tokens (used directly at longer "
             f"lengths) and at the end of its last stage (extended to {final_len}; positions "
             f"{after['model']['position']}). Passkey and multikey: share of prompts whose reply starts with "
             "the key (multikey: among 3 named keys by default, so copying any number is not enough); "
             "fixed-target perplexity: the same final tokens of held-out documents scored with "
             "more and more context, lower is better. `–`: not measured (e.g. the prompt template does not "
             "fit that length; the evaluation's summary.md says why).", "", table, "",
             f"Full evaluations: eval/step_{first}/summary.md, eval/step_{last}/summary.md.", ""]
    return "\n".join(lines)


def write_extension_summary(workdir: str, out: str | None = None) -> tuple[str, str]:
    """(markdown, path): the summary written to `out` (default WORKDIR/summary.md)."""
    text = workdir_extension_summary(workdir)
    path = out or os.path.join(workdir, SUMMARY_FILE)
    with open(path, "w") as f:
        f.write(text)
    return text, path
