"""The `ctxjax` command line. Each subcommand lives in its own module under ctxjax/commands/ and exposes
`register(subparsers)`; adding a command is one module and one line in COMMANDS."""

from __future__ import annotations

import argparse
import sys

from ctxjax.commands import (check_logits, eval as evaluate, export, extend_hf, extension_table, generate,
                             import_hf, info, plan, study, train)
from ctxjax.compile_cache import enable_compilation_cache
from ctxjax.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, InputError, TrainingDiverged
from ctxjax.fs import refuse_url
from ctxjax.tpu_plugin import skip_tpu_plugin_without_a_chip

COMMANDS = [train, import_hf, export, info, extend_hf, evaluate, extension_table, generate, check_logits,
            study, plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxjax", description="Extend the context window of decoder language models in JAX/Flax.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    # `--config.FIELD=VALUE` overrides of a training recipe; anything else unknown is an error.
    overrides = [a[len("--config."):] for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "accepts_config_overrides", False)):
        build_parser().error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    args.config_overrides = overrides
    skip_tpu_plugin_without_a_chip()
    enable_compilation_cache()
    # Bad input is one line naming the fix; anything else is a bug and keeps its traceback (exit 1).
    try:
        for flag in ("workdir", "out"):  # every command's output directories
            if isinstance(getattr(args, flag, None), str):
                refuse_url(getattr(args, flag), f"--{flag}")
        return args.run(args) or 0
    except InputError as error:
        print(f"ctxjax {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as error:
        print(f"ctxjax {args.command}: diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(f"ctxjax {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
