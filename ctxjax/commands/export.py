"""`ctxjax export --workdir W [--step N] --out DIR [--peft-adapter ADAPTER_DIR]`: a checkpoint of a work
directory (latest, or step N; a training checkpoint or an imported params-only one) as a Hugging Face model
directory that `transformers` loads, with the work directory's tokenizer when it has a Hugging Face form. LoRA
adapters are merged into the weights, or with --peft-adapter written apart as a PEFT adapter for the model in
DIR (which then holds everything else the run trained, e.g. embeddings and norms). With --check, the written
model is then run in transformers beside the checkpoint (`ctxjax check-logits`); a difference makes the
command exit 1."""

from __future__ import annotations

import os

from ctxjax.errors import InputError
from ctxjax import hf
from ctxjax.checkpoint import adaptation_of, load_params, model_config_of, workdir_protected_paths
from ctxjax.checkpoint import tokenizer_dir as tokenizer_dir_of
from ctxjax.commands.arguments import add_tolerance_arguments, lengths_argument
from ctxjax.evaluate.logit_check import require_torch
from ctxjax.evaluate.logit_report import check, check_lengths, describe_checkpoint, find_tokenizer
from ctxjax.fs import is_within
from ctxjax.hf.io import check_output_dir
from ctxjax.hf.peft import save_peft_adapter
from ctxjax.hf.tokenizer import exportable_tokenizer
from ctxjax.lora import merge_adapters, split_adapters


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a checkpoint as a Hugging Face model directory",
                                   description=__doc__)
    parser.add_argument("--workdir", required=True, help="work directory of a training run or of import-hf")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="output directory (a new Hugging Face model directory)")
    parser.add_argument("--peft-adapter", metavar="ADAPTER_DIR",
                        help="keep LoRA adapters apart: write them here as a PEFT adapter of the model in "
                             "--out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier, unchanged ctxjax export there (never anything else)")
    parser.add_argument("--check", nargs="?", const=(128,), type=lengths_argument, metavar="LENGTHS",
                        help="then compare the export's logits in transformers with the checkpoint's, one "
                             "row per length (default 128; e.g. --check 128,4096); needs torch and "
                             "transformers")
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
        require_torch()  # before the export, not after it
    meta, params = load_params(args.workdir, args.step)
    cfg, adaptation, own_class = model_config_of(meta), adaptation_of(meta), meta.get("hf_architecture", "")
    if args.check:
        check_lengths(cfg, args.check, "--check")  # before writing anything
    tokenizer_dir = tokenizer_dir_of(args.workdir)
    tokenizer = exportable_tokenizer(tokenizer_dir)
    # Also the check that a Hugging Face class computes the model: if it fails, neither output is written.
    architecture = hf.hf_config_from_model(cfg, own_class)["architectures"][0]
    written = dict(overwrite=args.overwrite, architecture=own_class, protected=protected,
                   source=os.path.abspath(args.workdir))
    if adapter:
        save_peft_adapter(cfg, params, adaptation, adapter, base_model=out, **written)
        params = split_adapters(params)[0]
    else:
        params = merge_adapters(params, adaptation)
    hf.save_pretrained(cfg, params, out, tokenizer=tokenizer, **written)
    print(f"model:     {architecture}, {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.position}")
    print(f"tokenizer: {tokenizer or 'none (the work directory has no Hugging Face tokenizer)'}")
    print(f"wrote {out}" + (f" and the PEFT adapter {adapter}" if adapter else ""))
    if args.check:
        print()
        return check(cfg, params, out, lengths=args.check, tokenizer=find_tokenizer(None, out, tokenizer_dir),
                     atol=args.atol, min_top1=args.min_top1,
                     ours=describe_checkpoint(args.workdir, args.step))
    return 0
