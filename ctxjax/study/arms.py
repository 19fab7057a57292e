"""The arms of the CPU-scale study (reference/papers.md §10): what each trains or evaluates, as overrides of
one base recipe, so that every arm sees the same data, tokenizer, model and seed unless it says otherwise.

    pretrain   three models at L: RoPE, ALiBi, NoPE
    zero-shot  the RoPE model evaluated at 2x-16x L without training: PI, NTK, dynamic NTK, YaRN (with and
               without its temperature), each at factor = length / L; direct extrapolation is the RoPE arm
               itself at those lengths
    fine-tune  the RoPE model fine-tuned to 4x L at equal token budgets: no scaling, PI, NTK, YaRN (also at
               40% of the steps), ABF (a larger RoPE base), PoSE (trained at L with positions spread to 4x L)
               and LongLoRA (LoRA + embeddings and norms + S²-Attn); PI and YaRN with a second seed
    staged     4x L from scratch against L -> 4x L switched at 20% and 40% of the same token budget
    warm-up    an aggressive learning rate with and without a sequence-length warm-up (SLW)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.train.defaults import default_config


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big the study is: `full` fits about 3 hours on 2 CPU cores, `quick` checks the pipeline in a
    minute."""

    base_len: int  # L: the pretraining context
    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int
    tokens_per_step: int
    pretrain_steps: int
    finetune_steps: int  # at 4x L, the budget of every fine-tune arm (PoSE: the same tokens at L)
    scratch_steps: int  # the staged-growth arms' budget
    slw_steps: int
    lr: float  # pretraining peak; fine-tuning uses a tenth (PI / YaRN's practice)
    eval_documents: int
    eval_windows: int
    trials: int  # prompts per (length, depth) cell of passkey and multikey
    doublings: int  # evaluated at L .. 2**doublings L

    @property
    def extended_len(self) -> int:
        return 4 * self.base_len

    @property
    def eval_lengths(self) -> tuple[int, ...]:
        return tuple(self.base_len * 2 ** k for k in range(self.doublings + 1))


SCALES = {
    "full": Scale(base_len=256, d_model=128, n_layers=4, n_heads=4, vocab_size=2048, tokens_per_step=4096,
                  pretrain_steps=2000, finetune_steps=200, scratch_steps=500, slw_steps=400, lr=6e-3,
                  eval_documents=160, eval_windows=32, trials=8, doublings=4),
    # Bytes: the retrieval prompts' template takes about 250 tokens, so only 4L holds a prompt.
    "quick": Scale(base_len=64, d_model=32, n_layers=2, n_heads=4, vocab_size=258, tokens_per_step=1024,
                   pretrain_steps=6, finetune_steps=2, scratch_steps=4, slw_steps=4, lr=3e-3,
                   eval_documents=4, eval_windows=2, trials=1, doublings=2),
}


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # its directory under the study's output
    group: str  # pretrain, zero-shot, fine-tune, staged, warm-up
    title: str
    overrides: tuple[tuple[str, Any], ...] = ()  # config fields (dotted) over the study's base recipe
    parent: str = ""  # fine-tuned from this arm's export, or (zero-shot) evaluated from its checkpoint
    rope: tuple[tuple[str, Any], ...] = ()  # zero-shot: RoPE fields at evaluation (factor = length / L)

    @property
    def trains(self) -> bool:
        return self.group != "zero-shot"


def base_config(scale: Scale):
    """The recipe every arm starts from: a small Llama-style model on the embedded corpus with retrieval
    documents mixed in (so that passkey measures something), checkpointed every 200 steps and at
    every stage end. Per-head q/k norms (Qwen3's): at this size they make the model learn to copy a key about
    3x sooner (docs/demo.md), and retrieval is the slowest thing it learns. One document per row (`crop`), so
    that no retrieval document is cut between its key and its question."""
    c = default_config()
    c.model.update(vocab_size=scale.vocab_size, d_model=scale.d_model, n_layers=scale.n_layers,
                   n_heads=scale.n_heads, max_seq_len=scale.base_len, qk_norm=True)
    c.execution.update(attention="auto", scan_unroll=scale.n_layers)
    c.data.update(source=data_mix(scale, scale.base_len), vocab_size=min(scale.vocab_size, 2048), mode="crop")
    c.tokens_per_step = scale.tokens_per_step
    c.log_every = 10
    c.checkpoint.update(every_steps=200, max_to_keep=2)
    if scale.vocab_size == 258:  # the quick scale: bytes, nothing to train
        c.data.update(tokenizer="bytes", max_documents=40, prefetch=0)
        c.peak_flops = 1e9
    return c


def data_mix(scale: Scale, *lengths: int) -> str:
    """Rows of the corpus (1 in 3) and of passkey documents (2 in 3) nearly as long as a row of each of
    `lengths` (about 3.6 characters a token with the study's tokenizer), so that the key-to-question distance
    covers the whole context being trained, as the evaluation's prompts do. Their filler is drawn at random:
    with the evaluation's periodic filler a small model finds the key by its offset, not its content. Passkey
    alone: with a share of multikey documents too, the 2000-step RoPE model answered no passkey prompt even
    at L (docs/results.md), so multikey is evaluated but not trained."""
    def chars(n):
        return f"{3 * n}-{int(3.4 * n)}" if scale.vocab_size != 258 else f"{n // 2}-{n}"

    weight = 2 / len(lengths)
    retrieval = ";".join(f"{weight:g}*retrieval:passkey:chars={chars(n)}:docs=10000:filler=random:seed={i}"
                         for i, n in enumerate(lengths))
    return f"mix:1*stdlib;{retrieval}"


def arms(scale: Scale) -> list[Arm]:
    L, X = scale.base_len, scale.extended_len
    pretrain = dict(stages=[dict(steps=scale.pretrain_steps, seq_len=L, lr=scale.lr,
                                 warmup_steps=_warmup(scale.pretrain_steps))])
    ft_lr = scale.lr / 10

    def finetune(steps=scale.finetune_steps, seq_len=X, position=None, **extra):
        stage = dict(steps=steps, seq_len=seq_len, lr=ft_lr, warmup_steps=_warmup(steps))
        if position:
            stage["position"] = position
        return dict(stages=[stage], **{"data.source": data_mix(scale, seq_len)}, **extra)

    yarn = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=L)
    pi = dict(rope_type="linear", factor=4.0)
    out = [
        # The fine-tune arms start from the RoPE model's Hugging Face export, as a user extending a
        # model would.
        Arm("rope", "pretrain", "RoPE (theta 1e4)", _items(pretrain, export_dir="hf")),
        Arm("alibi", "pretrain", "ALiBi", _items(pretrain, **{"model.position": {"name": "alibi"}})),
        Arm("nope", "pretrain", "NoPE", _items(pretrain, **{"model.position": {"name": "none"}})),
    ]
    # Direct extrapolation is the RoPE arm's own evaluation at the longer lengths.
    for name, title, rope in (("pi", "PI", {"rope_type": "linear"}),
                              ("ntk", "NTK-aware", {"rope_type": "ntk"}),
                              ("dynamic", "dynamic NTK", {"rope_type": "dynamic"}),
                              ("yarn", "YaRN", {"rope_type": "yarn"}),
                              ("yarn-notemp", "YaRN without temperature",
                               {"rope_type": "yarn", "attention_factor": 1.0})):
        out.append(Arm(f"zs-{name}", "zero-shot", title, parent="rope", rope=tuple(rope.items())))
    out += [
        Arm("ft-direct", "fine-tune", "no scaling", _items(finetune()), parent="rope"),
        Arm("ft-pi", "fine-tune", "PI", _items(finetune(position=pi)), parent="rope"),
        Arm("ft-ntk", "fine-tune", "NTK-aware", _items(finetune(position=dict(rope_type="ntk", factor=4.0))),
            parent="rope"),
        Arm("ft-yarn", "fine-tune", "YaRN", _items(finetune(position=yarn)), parent="rope"),
        Arm("ft-yarn-40", "fine-tune", "YaRN, 40% of the steps",
            _items(finetune(steps=max(1, round(0.4 * scale.finetune_steps)), position=yarn)), parent="rope"),
        Arm("ft-abf", "fine-tune", "ABF (theta 1e4 -> 1e5)", _items(finetune(position=dict(theta=1e5))),
            parent="rope"),
        # PoSE: rows of L tokens whose positions span 4x L; the same steps, so the same tokens (rows are
        # 4x as many).
        Arm("ft-pose", "fine-tune", "PoSE (rows of L, positions to 4x L) + PI",
            _items(finetune(seq_len=L, position=pi,
                            **{"data.pose_target_len": X})), parent="rope"),
        Arm("ft-longlora", "fine-tune", "LongLoRA (LoRA 8, embed+norm, S²-Attn) + PI",
            _items(finetune(position=pi, **{"adaptation.lora_rank": 8,
                                            "adaptation.shifted_sparse_group": X // 4,
                                            "optimizer.trainable": "embed,norm"})), parent="rope"),
        # A second seed (initialisation of anything new and the order of the data) where differences are
        # small.
        Arm("ft-pi-s1", "fine-tune", "PI, seed 1", _items(finetune(position=pi, seed=1, **{"data.seed": 1})),
            parent="rope"),
        Arm("ft-yarn-s1", "fine-tune", "YaRN, seed 1",
            _items(finetune(position=yarn, seed=1, **{"data.seed": 1})), parent="rope"),
    ]
    for share in (20, 40):
        short = round(share / 100 * scale.scratch_steps)
        out.append(Arm(f"staged-{share}", "staged", f"L -> 4x L at {share}% of the tokens", _items(
            dict(stages=[dict(steps=short, seq_len=L, lr=scale.lr, warmup_steps=_warmup(short)),
                         dict(steps=scale.scratch_steps - short, seq_len=X, lr=scale.lr,
                              warmup_steps=_warmup(scale.scratch_steps - short))],
                 **{"data.source": data_mix(scale, L, X)}))))
    out.append(Arm("scratch-4x", "staged", "4x L from scratch", _items(
        dict(stages=[dict(steps=scale.scratch_steps, seq_len=X, lr=scale.lr,
                          warmup_steps=_warmup(scale.scratch_steps))],
             **{"data.source": data_mix(scale, L, X)}))))
    # SLW: the same tokens per step and peak learning rate, the rows growing L/8 -> L/4 -> L/2 -> L over the
    # first 3/8 of the steps (a flat rate there, warmed up in the first stage), then the same decay.
    hot, warm_steps = 4 * scale.lr, _warmup(scale.slw_steps // 8)
    warm = [dict(steps=max(1, scale.slw_steps // 8), seq_len=max(8, L // 2 ** k), lr=hot, min_lr_ratio=1.0,
                 warmup_steps=warm_steps if k == 3 else 0) for k in (3, 2, 1)]
    out += [
        Arm("lr4x", "warm-up", "4x learning rate", _items(dict(
            stages=[dict(steps=scale.slw_steps, seq_len=L, lr=hot, warmup_steps=warm_steps)]))),
        Arm("lr4x-slw", "warm-up", "4x learning rate + sequence-length warm-up L/8 -> L", _items(dict(
            stages=warm + [dict(steps=scale.slw_steps - sum(s["steps"] for s in warm), seq_len=L, lr=hot)]))),
    ]
    return out


def _warmup(steps: int) -> int:
    """20 warm-up steps (PI / YaRN's practice), fewer in a short stage."""
    return min(20, steps // 2)


def _items(base: dict, **more) -> tuple[tuple[str, Any], ...]:
    return tuple({**base, **more}.items())
