"""Subcommands of the `ctxjax` CLI, one module each (see ctxjax/cli.py)."""
