"""`ctxjax import-hf HF_DIR --workdir W [--rope-type yarn --factor 4 | --positions N]`: start a work directory
from a Hugging Face model. Writes a step-0 params-only checkpoint (float32 master weights by default) and the
model's tokenizer files into W/tokenizer; `ctxjax train --config configs/llama_extend.py --workdir W`
then fine-tunes it at the new length."""

from __future__ import annotations

import os

from ctxjax import hf
from ctxjax.checkpoint import ensure_no_checkpoints, tokenizer_dir, write_params_checkpoint
from ctxjax.commands.rope_args import add_rope_arguments, apply_rope_arguments
from ctxjax.config import DTYPES
from ctxjax.data.tokenizer import HF_FILE, SENTENCEPIECE_FILE

KEEP_DTYPE = "checkpoint"


def register(subparsers) -> None:
    parser = subparsers.add_parser("import-hf", help="start a work directory from a Hugging Face model",
                                   description=__doc__)
    parser.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--workdir", required=True, help="new work directory (must hold no checkpoints)")
    parser.add_argument("--param-dtype", choices=(*DTYPES, KEEP_DTYPE), default="float32",
                        help="dtype of the stored params (default float32: training keeps float32 master "
                             f"weights; '{KEEP_DTYPE}' keeps the Hugging Face checkpoint's)")
    add_rope_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    ensure_no_checkpoints(args.workdir)  # before reading a possibly large model
    overrides = {} if args.param_dtype == KEEP_DTYPE else {"param_dtype": args.param_dtype}
    cfg, params = hf.load_pretrained(args.hf_dir, **overrides)
    before = cfg
    cfg, params = apply_rope_arguments(cfg, params, args)
    # Only a file with the vocabulary makes a usable tokenizer; tokenizer_config.json etc. travel with it.
    has_tokenizer = any(os.path.exists(os.path.join(args.hf_dir, n)) for n in (HF_FILE, SENTENCEPIECE_FILE))
    path = write_params_checkpoint(args.workdir, cfg, params,
                                   tokenizer=args.hf_dir if has_tokenizer else None,
                                   hf_architecture=hf.architecture_of(args.hf_dir),
                                   imported_from=os.path.abspath(args.hf_dir))
    print(f"positions: {before.position} -> {cfg.position}")
    print(f"context:   {before.max_seq_len} -> {cfg.max_seq_len} tokens")
    print(f"params:    {cfg.param_dtype}")
    if has_tokenizer:
        print(f"tokenizer: {tokenizer_dir(args.workdir)}")
    else:
        print(f"tokenizer: none in {args.hf_dir} (no {HF_FILE} or {SENTENCEPIECE_FILE}); set data.tokenizer "
              "when training")
    print(f"wrote {path}")
    return 0
