"""`ctxjax extension-table WORKDIR`: the before/after table of a staged context-extension run — its first
stage's end against its last stage's, at every length they were evaluated at (passkey, multikey, fixed-target
perplexity) — printed and written to WORKDIR/summary.md. It reads the stage-end evaluations
(`--config.eval_at_stage_end=True` writes them; see ctxjax/evaluate/extension_table.py)."""

from __future__ import annotations

from ctxjax.evaluate.extension_table import write_extension_summary


def register(subparsers) -> None:
    parser = subparsers.add_parser("extension-table",
                                   help="before/after-extension table of a staged training run",
                                   description=__doc__)
    parser.add_argument("workdir",
                        help="training work directory with stage-end evaluations (WORKDIR/eval/step_N)")
    parser.add_argument("--out", help="markdown file to write (default: WORKDIR/summary.md)")
    parser.set_defaults(run=run)


def run(args) -> int:
    text, path = write_extension_summary(args.workdir, args.out)
    print(text)
    print(f"written to {path}")
    return 0
