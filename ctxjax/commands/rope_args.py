"""Command-line flags that change a model's positional scheme, shared by every command that loads a model
(`extend-hf`, and later `import-hf` and `eval --hf`)."""

from __future__ import annotations

import argparse

from ctxjax.errors import InputError
from ctxjax import positions
from ctxjax.config import ModelConfig


def add_rope_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("context extension (RoPE models)")
    group.add_argument("--rope-type", choices=positions.ROPE_TYPES,
                       help="new RoPE scaling; the model's current context becomes original_max_position_embeddings")
    group.add_argument("--factor", type=float, help="extension ratio, e.g. 4 for 4x the original context")
    group.add_argument("--theta", type=float, help="new RoPE base (base-frequency adjustment)")
    group.add_argument("--original-max-position-embeddings", type=int,
                       help="context the model was trained at (default: its max_position_embeddings)")
    group.add_argument("--beta-fast", type=float, help="yarn: high-frequency boundary in rotations (default 32)")
    group.add_argument("--beta-slow", type=float, help="yarn: low-frequency boundary in rotations (default 1)")
    group.add_argument("--low-freq-factor", type=float, help="llama3 (default 1, or the model's)")
    group.add_argument("--high-freq-factor", type=float, help="llama3 (default 4, or the model's)")
    group.add_argument("--max-position-embeddings", type=int,
                       help="new context length written to the config (default: factor x original)")
    group.add_argument("--sliding-window", type=int,
                       help="new attention window in tokens (Mistral-style; 0 removes it), e.g. the new context")
    group = parser.add_argument_group("context extension (learned positions, GPT-2)")
    group.add_argument("--positions", type=int, help="grow the learned position table to this many rows")
    group.add_argument("--method", choices=("interpolate", "copy"), default="interpolate",
                       help="how new rows of the position table are initialised")


def apply_rope_arguments(cfg: ModelConfig, params, args: argparse.Namespace):
    """(cfg, params) with the positional changes the flags ask for; unchanged when none is given."""
    if args.sliding_window is not None:
        if args.sliding_window < 0:
            raise InputError(f"--sliding-window {args.sliding_window} must be >= 0 (0: attend to the whole context)")
        cfg = cfg.replace(sliding_window=args.sliding_window)
    rope_flags = any(getattr(args, f) is not None for f in ("rope_type", "factor", "theta"))
    if args.positions is not None:
        if cfg.position.name != "learned":
            raise InputError("--positions grows a learned position table; for RoPE models use --rope-type/--factor")
        params = positions.extend(params, args.positions, method=args.method)
        cfg = cfg.replace(max_seq_len=args.positions)
    if not rope_flags:
        return cfg, params
    if cfg.position.name != "rope":
        raise InputError(f"--rope-type/--factor/--theta apply to RoPE models, this one uses {cfg.position.name!r} "
                         "positions (GPT-2: use --positions N)")
    current = cfg.position
    rope_type = args.rope_type or current.rope_type
    original = args.original_max_position_embeddings or current.original_context(cfg.max_seq_len)
    if current.rope_type != "default" and args.original_max_position_embeddings is None:
        # An already scaled model keeps its scaling's type, L0 and settings; --factor counts from its L0.
        wanted = args.max_position_embeddings or (args.factor or current.factor or 1.0) * original
        current.stretched(rope_type, wanted, cfg.max_seq_len)  # refuses another type, in one line
    changes = dict(rope_type=rope_type, original_max_position_embeddings=original)
    if args.theta is not None:
        changes["theta"] = args.theta
    if args.factor is not None:
        changes["factor"] = args.factor
    if rope_type == "llama3":
        changes.update(low_freq_factor=args.low_freq_factor or current.low_freq_factor or 1.0,
                       high_freq_factor=args.high_freq_factor or current.high_freq_factor or 4.0)
    for name in ("beta_fast", "beta_slow"):
        if rope_type == "yarn" and getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if rope_type in ("default", "linear", "ntk"):
        changes["original_max_position_embeddings"] = None
    rope = cfg.position.replace(**changes)
    factor = rope.factor or 1.0
    new_len = args.max_position_embeddings or int(round(factor * original))
    return cfg.replace(position=rope, max_seq_len=new_len), params
