"""`ctxjax generate WORKDIR | --hf DIR --prompt TEXT [--prompt TEXT ...] --max-new-tokens 64`: continue
prompts with a KV cache (greedy by default; --temperature, --top-k, --top-p to sample), printing each
continuation. Accepts the same positional overrides as `ctxjax eval` (e.g. --rope-type yarn --factor 4)."""

from __future__ import annotations

import sys

from ctxjax.commands.arguments import add_model_arguments, load_model_from_args
from ctxjax.errors import InputError
from ctxjax.evaluate.progress import Progress
from ctxjax.execution import ExecutionConfig
from ctxjax.generate import Sampling, check_can_generate, generate
from ctxjax.hf import rereads_on_rope_switch


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="continue prompts with the model (KV-cache decoding)",
                                   description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", help="a file whose whole text is one more prompt ('-': stdin)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="tokens to generate per prompt (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: no cut)")
    parser.add_argument("--stop", action="append", default=[],
                        help="stop at this text's token (repeatable; the tokenizer's EOS and an imported "
                             "model's generation_config.json EOS ids always stop)")
    parser.add_argument("--no-bos", action="store_true", help="do not start prompts with the BOS token")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.set_defaults(run=run)


def _stop_tokens(tokenizer, texts) -> tuple[int, ...]:
    stops = list(tokenizer.stop_ids)
    for text in texts:
        ids = tokenizer.encode(text)
        if len(ids) != 1:
            raise InputError(f"--stop {text!r} is {len(ids)} tokens; a stop must be exactly one token")
        stops += ids
    return tuple(stops)


def read_prompt_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"--prompt-file {path} is not UTF-8 text (byte {e.start}); give a text "
                         "file") from None
    except OSError as e:
        raise InputError(f"--prompt-file {path}: {e.strerror}") from None


def run(args) -> int:
    sampling = Sampling(args.temperature, args.top_k, args.top_p)  # bad values fail before the model loads
    texts = list(args.prompt)
    if args.prompt_file:
        texts.append(sys.stdin.read() if args.prompt_file == "-" else read_prompt_file(args.prompt_file))
    if not texts:
        raise InputError("give at least one --prompt TEXT or --prompt-file FILE")
    cfg, params, tokenizer, architecture = load_model_from_args(args)
    check_can_generate(cfg)  # before the warnings about lengths, which an encoder does not have
    bos = [] if args.no_bos or tokenizer.bos_id is None else [tokenizer.bos_id]
    prompts = [bos + tokenizer.encode(t) for t in texts]
    stops = tuple(t for t in _stop_tokens(tokenizer, args.stop) if t < cfg.vocab_size)
    longest = max(map(len, prompts)) + args.max_new_tokens
    if longest > cfg.max_seq_len:
        print(f"warning: prompt + --max-new-tokens reach {longest} tokens, past the model's context of "
              f"{cfg.max_seq_len}: expect the text to degrade there (--rope-type yarn --factor F extends it)",
              file=sys.stderr)
    progress = Progress.on_terminal()  # a bar of tokens generated, with the rate and the time left
    bar = progress.bar(f"generate ({len(prompts)} prompts, <= {max(map(len, prompts))} tokens)",
                       total=args.max_new_tokens, unit="token")
    on_token = (lambda n: bar.update(int(n) - bar.n)) if progress.enabled else None
    try:
        out = generate(cfg, params, prompts, args.max_new_tokens, sampling=sampling, stop_tokens=stops,
                       seed=args.seed, execution=ExecutionConfig(attention=args.attention or "auto"),
                       reread_on_switch=rereads_on_rope_switch(architecture), on_token=on_token)
    finally:
        bar.close()
    for text, ids in zip(texts, out.sequences):
        if len(texts) > 1:
            print(f"=== {text!r}")
        print(text + tokenizer.decode(ids))
    return 0
