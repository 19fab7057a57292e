"""`ctxjax export --workdir W [--step N] --out DIR`: a checkpoint of a work directory (latest, or step N; a
training checkpoint or an imported params-only one) as a Hugging Face model directory that `transformers`
loads, with the work directory's tokenizer when it has a Hugging Face form."""

from __future__ import annotations

import os

from ctxjax import hf
from ctxjax.checkpoint import load_for_inference
from ctxjax.data.tokenizer import SENTENCEPIECE_FILE
from ctxjax.hf.tokenizer import TOKENIZER_FILES


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a checkpoint as a Hugging Face model directory",
                                   description=__doc__)
    parser.add_argument("--workdir", required=True, help="work directory of a training run or of import-hf")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory (a new Hugging Face model directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.set_defaults(run=run)


def run(args) -> int:
    out = os.path.abspath(args.out)
    # save_pretrained refuses this too, but only after the (possibly large) checkpoint was read.
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise ValueError(f"{out} is not empty; pass --overwrite or choose a new --out")
    cfg, params, tokenizer_dir = load_for_inference(args.workdir, args.step)
    tokenizer = hf_tokenizer(tokenizer_dir)
    hf.save_pretrained(cfg, params, out, tokenizer=tokenizer, overwrite=args.overwrite)
    print(f"model:     {cfg.family}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.position}")
    print(f"tokenizer: {tokenizer or 'none (the work directory has no Hugging Face tokenizer)'}")
    print(f"wrote {out}")
    return 0


def hf_tokenizer(tokenizer_dir: str | None) -> str | None:
    """What save_pretrained should copy: a directory of HF tokenizer files as it is; a SentencePiece model
    trained by ctxjax as its file (so a tokenizer_config.json naming its class is written); nothing for the byte
    tokenizer, which has no Hugging Face form."""
    if tokenizer_dir is None:
        return None
    present = {n for n in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, n))}
    if present - {SENTENCEPIECE_FILE}:
        return tokenizer_dir
    if SENTENCEPIECE_FILE in present:
        return os.path.join(tokenizer_dir, SENTENCEPIECE_FILE)
    return None
