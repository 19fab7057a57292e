"""`ctxjax extend-hf HF_DIR --out DIR --rope-type yarn --factor 4`: a Hugging Face model with a longer
context, zero-shot: RoPE scaling written into its config (ModernBERT: its global layers'), or a learned
position table (GPT-2, BERT, RoBERTa) grown by interpolation or by copying (--method copy, as Longformer).
The result loads in `transformers` and is the starting point for fine-tuning at the new length."""

from __future__ import annotations

import os

from ctxjax import hf
from ctxjax.commands.rope_args import add_rope_arguments, apply_rope_arguments
from ctxjax.hf.io import check_output_dir
from ctxjax.hf.tokenizer import TOKENIZER_FILES


def register(subparsers) -> None:
    parser = subparsers.add_parser("extend-hf",
                                   help="rescale a Hugging Face model's positions for a longer context",
                                   description=__doc__)
    parser.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="output directory (a new Hugging Face model directory)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier, unchanged ctxjax export there (never anything else)")
    add_rope_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    hf.read_hf_config(args.hf_dir)  # a model directory at all?
    check_output_dir(os.path.abspath(args.out), args.overwrite, [args.hf_dir])  # before reading the weights
    cfg, params = hf.load_pretrained(args.hf_dir)
    before = cfg
    cfg, params = apply_rope_arguments(cfg, params, args)
    has_tokenizer = any(os.path.exists(os.path.join(args.hf_dir, n)) for n in TOKENIZER_FILES)
    out = hf.save_pretrained(cfg, params, args.out, tokenizer=args.hf_dir if has_tokenizer else None,
                             overwrite=args.overwrite, protected=[args.hf_dir],
                             source=os.path.abspath(args.hf_dir))
    print(f"positions: {before.position} -> {cfg.position}")
    print(f"context:   {before.max_seq_len} -> {cfg.max_seq_len} tokens")
    print(f"wrote {out}")
    return 0
