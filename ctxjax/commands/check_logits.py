"""`ctxjax check-logits HF_DIR [--workdir W [--step N]] [--lengths 128,4096]`: run the same tokens through
ctxjax and through transformers (PyTorch, float32) and say whether they give the same answers: per length the
largest logit difference and where it is, the mean KL divergence of the next-token distributions and how often
the top token agrees. Without --workdir ctxjax reads HF_DIR itself (is the import exact for this checkpoint?);
with it, the run's checkpoint is compared with HF_DIR, its export (will the deployed model compute what was
trained?). Exits 1 when a difference exceeds --atol or the top tokens agree at fewer than --min-top1 of the
positions. Needs torch and transformers."""

from __future__ import annotations

from ctxjax.checkpoint import load_for_inference
from ctxjax.commands.arguments import add_tolerance_arguments, lengths_argument
from ctxjax.errors import InputError
from ctxjax.evaluate.loading import load_hf_model
from ctxjax.evaluate.logit_check import check_hf_directory, load_reference, require_torch
from ctxjax.evaluate.logit_report import (DEFAULT_SOURCE, check, check_lengths, describe_checkpoint,
                                          find_tokenizer)


def register(subparsers) -> None:
    parser = subparsers.add_parser("check-logits",
                                   help="compare ctxjax's logits with transformers' on a checkpoint",
                                   description=__doc__)
    parser.add_argument("hf_dir", help="a Hugging Face model directory (e.g. written by ctxjax export)")
    parser.add_argument("--workdir",
                        help="compare this run's checkpoint (default: ctxjax's import of HF_DIR)")
    parser.add_argument("--step", type=int, help="checkpoint step of --workdir (default: the latest)")
    parser.add_argument("--lengths", type=lengths_argument, default=(128,),
                        help="comma-separated token counts, one row each; add one past the original context "
                             "to check RoPE scaling (default: 128)")
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="text the rows are cut from, a ctxjax.data source spec (default: "
                             f"{DEFAULT_SOURCE})")
    parser.add_argument("--tokenizer", help="tokenizer path or 'bytes' (default: HF_DIR's, else the run's)")
    parser.add_argument("--random-tokens", action="store_true",
                        help="uniformly random token ids instead of text (also used when there is no "
                             "tokenizer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    add_tolerance_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    check_hf_directory(args.hf_dir)
    require_torch()  # before loading anything
    if args.step is not None and not args.workdir:
        raise InputError("--step needs --workdir (the run whose checkpoint to compare)")
    if args.random_tokens and (args.tokenizer or args.source != DEFAULT_SOURCE):
        raise InputError("--random-tokens uses no text: drop --tokenizer / --source, or --random-tokens")
    if args.workdir:
        cfg, params, tokenizer_dir, _ = load_for_inference(args.workdir, args.step)
        ours = describe_checkpoint(args.workdir, args.step)
    else:
        (cfg, params), tokenizer_dir = load_hf_model(args.hf_dir), None
        ours = f"ctxjax's import of {args.hf_dir}"
    check_lengths(cfg, args.lengths)
    reference = load_reference(args.hf_dir, expected_vocab_size=cfg.vocab_size)
    tokenizer = None if args.random_tokens else find_tokenizer(args.tokenizer, args.hf_dir, tokenizer_dir)
    return check(cfg, params, reference, lengths=args.lengths, tokenizer=tokenizer, source=args.source,
                 seed=args.seed, atol=args.atol, min_top1=args.min_top1, ours=ours)
