"""The `ctxjax` command line. Each subcommand lives in its own module under ctxjax/commands/ and exposes
`register(subparsers)`; adding a command is one module and one line in COMMANDS."""

from __future__ import annotations

import argparse
import sys

from ctxjax.commands import extend_hf, info

COMMANDS = [info, extend_hf]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxjax", description="Extend the context window of decoder language models in JAX/Flax.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as error:  # bad input: one line naming the fix, no traceback
        print(f"ctxjax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
