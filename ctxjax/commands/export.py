"""`ctxjax export --workdir W [--step N] --out DIR [--peft-adapter ADAPTER_DIR]`: a checkpoint of a work directory
(latest, or step N; a training checkpoint or an imported params-only one) as a Hugging Face model directory that
`transformers` loads, with the work directory's tokenizer when it has a Hugging Face form. LoRA adapters are
merged into the weights, or with --peft-adapter written apart as a PEFT adapter for the model in DIR (which then
holds everything else the run trained, e.g. embeddings and norms). With --check, the written model is then run in
transformers beside the checkpoint (`ctxjax check-logits`); a difference makes the command exit 1."""

from __future__ import annotations

import os

from ctxjax.errors import InputError
from ctxjax import hf
from ctxjax.checkpoint import load_for_inference, workdir_protected_paths
from ctxjax.commands.check_logits import (describe_checkpoint, add_tolerance_arguments, check, check_lengths,
                                          find_tokenizer, lengths_argument)
from ctxjax.fs import is_within
from ctxjax.hf.io import check_output_dir
from ctxjax.hf.peft import save_peft_adapter
from ctxjax.hf.tokenizer import exportable_tokenizer
from ctxjax.lora import split_adapters


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a checkpoint as a Hugging Face model directory",
                                   description=__doc__)
    parser.add_argument("--workdir", required=True, help="work directory of a training run or of import-hf")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory (a new Hugging Face model directory)")
    parser.add_argument("--peft-adapter", metavar="ADAPTER_DIR",
                        help="keep LoRA adapters apart: write them here as a PEFT adapter of the model in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier, unchanged ctxjax export there (never anything else)")
    parser.add_argument("--check", nargs="?", const=(128,), type=lengths_argument, metavar="LENGTHS",
                        help="then compare the export's logits in transformers with the checkpoint's, one row per "
                             "length (default 128; e.g. --check 128,4096); needs torch and transformers")
    add_tolerance_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    out = os.path.abspath(args.out)
    adapter = os.path.abspath(args.peft_adapter) if args.peft_adapter else None
    protected = workdir_protected_paths(args.workdir)
    # The writers check this too, but only after the (possibly large) checkpoint was read.
    for directory, flag in ((out, "--out"), (adapter, "--peft-adapter")):
        if directory:
            try:
                check_output_dir(directory, args.overwrite, protected)
            except InputError as error:
                raise InputError(f"{flag}: {error}") from None
    if adapter and (is_within(adapter, out) or is_within(out, adapter)):
        raise InputError(f"--out {out} and --peft-adapter {adapter} must be two separate directories")
    if args.check and adapter:
        raise InputError("--check compares a whole model, and --peft-adapter keeps the adapters apart; "
                         "export without --peft-adapter to check, or load the adapter with peft yourself")
    if args.check:
        from ctxjax.hf.logit_check import require_torch

        require_torch()  # before the export, not after it
    cfg, params, tokenizer_dir = load_for_inference(args.workdir, args.step, merge_lora=adapter is None)
    if args.check:
        check_lengths(cfg, args.check, "--check")  # before writing anything
    tokenizer = exportable_tokenizer(tokenizer_dir)
    # Also the check that a Hugging Face class computes the model: if it fails, neither output is written.
    architecture = hf.hf_config_from_model(cfg)["architectures"][0]
    if adapter:
        save_peft_adapter(cfg, params, adapter, base_model=out, overwrite=args.overwrite, protected=protected,
                          source=os.path.abspath(args.workdir))
        cfg, params = cfg.replace(lora_rank=0), split_adapters(params)[0]
    hf.save_pretrained(cfg, params, out, tokenizer=tokenizer, overwrite=args.overwrite, protected=protected,
                       source=os.path.abspath(args.workdir))
    print(f"model:     {architecture}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.position}")
    print(f"tokenizer: {tokenizer or 'none (the work directory has no Hugging Face tokenizer)'}")
    print(f"wrote {out}" + (f" and the PEFT adapter {adapter}" if adapter else ""))
    if args.check:
        print()
        return check(cfg, params, out, lengths=args.check, tokenizer=find_tokenizer(None, out, tokenizer_dir),
                     atol=args.atol, min_top1=args.min_top1, ours=describe_checkpoint(args.workdir, args.step))
    return 0
