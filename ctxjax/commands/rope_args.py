"""Command-line flags that change a model's positional scheme, shared by every command that loads a model
(`extend-hf`, and later `import-hf` and `eval --hf`)."""

from __future__ import annotations

import argparse

from ctxjax import positions
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.positions import rope_scalings


def add_rope_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("context extension (RoPE models)")
    group.add_argument("--rope-type", choices=positions.ROPE_TYPES,
                       help="new RoPE scaling; the model's current context becomes "
                            "original_max_position_embeddings")
    group.add_argument("--factor", type=float, help="extension ratio, e.g. 4 for 4x the original context")
    group.add_argument("--theta", type=float, help="new RoPE base (base-frequency adjustment)")
    group.add_argument("--original-max-position-embeddings", type=int,
                       help="context the model was trained at (default: its max_position_embeddings)")
    _add_scaling_settings(group)
    group.add_argument("--max-position-embeddings", type=int,
                       help="new context length written to the config (default: factor x original)")
    group.add_argument("--sliding-window", type=int,
                       help="new attention window in tokens (Mistral-style; 0 removes it), "
                            "e.g. the new context")
    group = parser.add_argument_group("context extension (learned positions: GPT-2, BERT, RoBERTa)")
    group.add_argument("--positions", type=int, help="grow the learned position table to this many positions")
    group.add_argument("--method", choices=("interpolate", "copy"), default="interpolate",
                       help="how new rows of the position table are initialised (copy: the table "
                            "repeated, as Longformer)")


def _add_scaling_settings(group: argparse._ArgumentGroup) -> None:
    """One flag per setting a registered scaling type owns (--beta-fast for yarn, ...); a setting several
    types share is one flag whose help names them all."""
    owners: dict[str, list[str]] = {}
    settings: dict[str, rope_scalings.Setting] = {}
    for scaling in rope_scalings.registered():
        for setting in scaling.settings:
            owners.setdefault(setting.field, []).append(scaling.name)
            settings.setdefault(setting.field, setting)
    for field, setting in settings.items():
        default = "" if setting.default is None else f" (default {setting.default:g}, or the model's)"
        group.add_argument(setting.flag, type=setting.type,
                           help=f"{', '.join(owners[field])}: {setting.help}{default}")


def apply_rope_arguments(cfg: ModelConfig, params, args: argparse.Namespace):
    """(cfg, params) with the positional changes the flags ask for; unchanged when none is given."""
    if args.sliding_window is not None:
        if args.sliding_window < 0:
            raise InputError(f"--sliding-window {args.sliding_window} must be >= 0 "
                             "(0: attend to the whole context)")
        cfg = cfg.replace(sliding_window=args.sliding_window)
    rope_flags = any(getattr(args, f) is not None for f in ("rope_type", "factor", "theta"))
    if args.positions is not None:
        if cfg.position.max_positions(cfg) is None:
            raise InputError(f"--positions grows a position table, and {cfg.position.name} positions have "
                             "none; for RoPE models use --rope-type/--factor")
        params = cfg.position.extend(params, args.positions, method=args.method)
        cfg = cfg.position.fitted_to_params(cfg, params)
    if not rope_flags:
        return cfg, params
    if not isinstance(cfg.position, positions.Rope):  # these flags are the Rope scheme's own fields
        raise InputError(f"--rope-type/--factor/--theta apply to RoPE models, this one uses "
                         f"{cfg.position.name!r} positions (GPT-2: use --positions N)")
    current = cfg.position
    rope_type = args.rope_type or current.rope_type
    original = args.original_max_position_embeddings or current.original_context(cfg.max_seq_len)
    if current.scaling.scaled and args.original_max_position_embeddings is None:
        # An already scaled model keeps its scaling's type, L0 and settings; --factor counts from its L0.
        wanted = args.max_position_embeddings or (args.factor or current.factor or 1.0) * original
        current.stretched(rope_type, wanted, cfg.max_seq_len)  # refuses another type, in one line
    scaling = rope_scalings.get(rope_type)
    given = {setting.field: getattr(args, setting.field, None) for setting in scaling.settings}
    factor = current.factor if args.factor is None else args.factor
    changes = scaling.extension(current, factor, original, given)
    if not scaling.scaled:  # --rope-type default removes the scaling, and with it the original context
        changes["original_max_position_embeddings"] = None
    if args.theta is not None:
        changes["theta"] = args.theta
    rope = cfg.position.replace(**changes)
    new_len = args.max_position_embeddings or int(round((rope.factor or 1.0) * original))
    return cfg.replace(position=rope, max_seq_len=new_len), params
