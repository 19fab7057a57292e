"""Command-line arguments that several commands share: number lists, where a model comes from (a work
directory or a Hugging Face directory, with positional overrides), and the tolerances of a logit check."""

from __future__ import annotations

import argparse

from ctxjax.commands.rope_args import add_rope_arguments, apply_rope_arguments
from ctxjax.evaluate.loading import load_model
from ctxjax.evaluate.logit_report import DEFAULT_ATOL, DEFAULT_MIN_TOP1


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def mesh_sizes(text: str) -> dict[str, int]:
    """'fsdp=-1,tensor=2' -> {'fsdp': -1, 'tensor': 2}."""
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh {text!r} must look like fsdp=-1,tensor=2") from None


def lengths_argument(text: str) -> tuple[int, ...]:
    lengths = int_list(text)
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError("expected positive comma-separated token counts, e.g. 128,4096; "
                                         f"got {text!r}")
    return lengths


def fraction_or_positive(upper: float | None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > 0 and (upper is None or value <= upper)):
            bound = f" and <= {upper}" if upper else ""
            raise argparse.ArgumentTypeError(f"expected a number > 0{bound}, got {text!r}")
        return value

    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model comes from; shared with `ctxjax generate`."""
    parser.add_argument("workdir", nargs="?",
                        help="training work directory (its latest checkpoint, or --step)")
    parser.add_argument("--hf", metavar="DIR",
                        help="a Hugging Face model directory instead of a work directory")
    parser.add_argument("--step", type=int, help="checkpoint step of WORKDIR (default: the latest)")
    parser.add_argument("--tokenizer", help="tokenizer path or 'bytes' (default: the model's own)")
    parser.add_argument("--attention", help="attention kernel (default: the model's; 'auto' replaces 'xla')")
    add_rope_arguments(parser)


def load_model_from_args(args):
    """The model (a LoadedModel: cfg, params, tokenizer, hf_architecture) as the model arguments ask, with the
    positional overrides applied."""
    model = load_model(args.workdir, args.hf, args.step, args.tokenizer)
    cfg, params = apply_rope_arguments(model.cfg, model.params, args)
    return model._replace(cfg=cfg, params=params)


def add_tolerance_arguments(parser) -> None:
    """--atol and --min-top1; shared with `ctxjax export --check`."""
    parser.add_argument("--atol", type=fraction_or_positive(None), default=DEFAULT_ATOL,
                        help=f"largest logit difference accepted (default {DEFAULT_ATOL}, for real "
                             "checkpoints; exact float32 gives about 1e-6 on small models, so check those "
                             "with 1e-4)")
    parser.add_argument("--min-top1", type=fraction_or_positive(1.0), default=DEFAULT_MIN_TOP1,
                        help="smallest share of positions whose top token agrees (default "
                             f"{DEFAULT_MIN_TOP1})")
