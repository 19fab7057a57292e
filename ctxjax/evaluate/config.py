"""EvalConfig: what `ctxjax eval` (and the evaluation at a training stage boundary) measures, one field
each."""

from __future__ import annotations

import dataclasses
from typing import Any

from ctxjax.errors import InputError
from ctxjax.dataclass_config import dataclass_from

# RULER's core synthetic tasks (ctxjax.evaluate.ruler); `ruler` in a task list names them all.
RULER_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa")
# An encoder's tasks (ctxjax.evaluate.masked): masked-token loss by length, and the long-range masked recall
# probe; `encoder` in a task list names both. Every other task is a decoder's (next tokens, generation).
ENCODER_TASKS = ("mlm", "mlm_recall")
TASKS = ("ppl", "passkey", "multikey", "needle", *RULER_TASKS, *ENCODER_TASKS)
PPL_METHODS = ("nonoverlapping", "sliding", "fixed_target")
# `--tasks short`: the quick check for short-context regression (see ctxjax.evaluate.baseline): these tasks at
# a quarter, half and all of the original context (the baseline's max_seq_len, else the model's).
SHORT = "short"
SHORT_TASKS = ("ppl", "passkey", "multikey", "needle")
TASK_ALIASES = {"ruler": RULER_TASKS, SHORT: SHORT_TASKS, "encoder": ENCODER_TASKS}

# gkamradt's needle-in-a-haystack defaults; the answer is checked as a substring of the reply (RULER's
# recall).
DEFAULT_NEEDLE = ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a "
                  "sunny day.")
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_ANSWER = "Dolores Park"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = ("ppl", "passkey")
    # Context lengths in tokens; None: half, one and two times the model's max_seq_len.
    lengths: tuple[int, ...] | None = None
    # Held-out documents for perplexity (a ctxjax.data source spec, e.g. "stdlib:eval", "text:GLOB").
    source: str = "stdlib:eval"
    max_documents: int | None = 64  # read at most this many documents (None: all)
    add_bos: bool = True  # start each document with the tokenizer's BOS, as the training pipeline does
    # Perplexity.
    ppl_methods: tuple[str, ...] = PPL_METHODS
    stride: int | None = None  # sliding window stride; None: a quarter of each length (PI/YaRN use 256)
    target_tokens: int = 128  # fixed target set: the last K tokens of each document (mlm: the middle K)
    mask_rate: float = 0.15  # mlm: the share of the middle K tokens masked and scored
    # The fixed target set is the documents that fit a window of this many tokens (None: the longest length
    # evaluated); set it to compare separate evaluations at different lengths on the same targets.
    fixed_target_context: int | None = None
    bucket_size: int | None = None  # per-position loss bucket width; None: the smallest length / 8
    max_windows: int = 256  # per length and method: cap on windows scored (keeps CPU runs short)
    batch_size: int = 4  # windows or prompts per forward pass
    # Attention kernel for evaluation; None: the model's own unless that is "xla", then "auto" (xla for
    # short lengths, a linear-memory kernel for long ones) when registered.
    attention: str | None = None
    # Passkey retrieval (Landmark / PI format).
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the key sits in the filler (0 = start)
    trials: int = 5  # prompts per (length, depth) cell
    key_digits: int = 5
    answer_tokens: int | None = None  # tokens generated per prompt; None: enough for the key plus a few
    # Multi-key passkey: other named keys hidden in the filler beside the one asked for (RULER uses 3).
    distractors: int = 3
    # Needle in a haystack: the needle is a sentence inserted at `depths` into text from `haystack`.
    needle: str = DEFAULT_NEEDLE
    question: str = DEFAULT_QUESTION
    answer: str = DEFAULT_ANSWER
    haystack: str | None = None  # a source spec; None: the perplexity source
    seed: int = 0
    short: bool = False  # tasks included "short": default lengths are short_lengths(), not 0.5/1/2 x context

    def __post_init__(self):
        # Lists from the CLI, JSON or ml_collections become tuples, so the config stays hashable; a single
        # value or a comma-separated string ("ppl,passkey", "512,1024") is a list too.
        for name, kind in (("tasks", str), ("lengths", int), ("ppl_methods", str), ("depths", float)):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [kind(v.strip()) for v in value.split(",") if v.strip()]
            elif isinstance(value, (int, float)):
                value = [value]
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        # Aliases ("ruler", "short") become their tasks, in place, without repeats; "short" also shortens the
        # default lengths.
        if SHORT in self.tasks:
            object.__setattr__(self, "short", True)
        tasks = [t for name in self.tasks for t in TASK_ALIASES.get(name, (name,))]
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(tasks)))
        self.validate()

    def validate(self) -> None:
        def fail(msg):
            raise InputError(f"eval config: {msg}")

        for name, allowed in (("tasks", TASKS), ("ppl_methods", PPL_METHODS)):
            unknown = [t for t in getattr(self, name) if t not in allowed]
            if unknown or not getattr(self, name):
                aliases = (" or the sets ruler (all of RULER's), short and encoder (mlm, mlm_recall)"
                           if name == "tasks" else "")
                fail(f"{name}={list(getattr(self, name))} must be a non-empty subset of {list(allowed)}"
                     + aliases)
        if self.lengths is not None and (not self.lengths or any(int(n) < 2 for n in self.lengths)):
            fail(f"lengths={list(self.lengths)} must be integers >= 2 (e.g. --lengths 512,1024,2048)")
        if any(not 0 <= d <= 1 for d in self.depths) or not self.depths:
            fail(f"depths={list(self.depths)} must be fractions in [0, 1] (0 = key at the start of the "
                 "filler)")
        for name in ("target_tokens", "max_windows", "batch_size", "trials", "key_digits"):
            if int(getattr(self, name)) < 1:
                fail(f"{name}={getattr(self, name)} must be at least 1")
        if not isinstance(self.distractors, int) or not 0 <= self.distractors <= 100:
            fail(f"distractors={self.distractors} must be an int from 0 to 100")
        if not 0 < self.mask_rate < 1:
            fail(f"mask_rate={self.mask_rate} must be a fraction in (0, 1), e.g. 0.15")
        if self.max_documents is not None and self.max_documents < 1:
            fail(f"max_documents={self.max_documents} must be at least 1 (or None for all)")
        if self.fixed_target_context is not None and self.fixed_target_context < self.target_tokens:
            fail(f"fixed_target_context={self.fixed_target_context} must be at least target_tokens="
                 f"{self.target_tokens} (a window holds the targets)")
        if self.stride is not None and self.stride < 1:
            fail(f"stride={self.stride} must be at least 1")
        if "needle" in self.tasks and not (self.needle.strip() and self.question.strip()
                                           and self.answer.strip()):
            fail("the needle task needs a non-empty needle, question and answer")

    def replace(self, **changes: Any) -> "EvalConfig":
        return dataclasses.replace(self, **changes)

    def resolved_lengths(self, max_seq_len: int, original_context: int | None = None) -> tuple[int, ...]:
        """The lengths given, else 0.5, 1 and 2 x `max_seq_len`, or with `short`: 0.25, 0.5 and 1 x
        `original_context` (the baseline's context; default `max_seq_len`)."""
        if self.lengths is not None:
            return tuple(sorted({int(n) for n in self.lengths}))
        if self.short:
            context = original_context or max_seq_len
            return tuple(sorted({max(2, context // 4), max(2, context // 2), context}))
        return (max(2, max_seq_len // 2), max_seq_len, 2 * max_seq_len)




def check_tasks_fit_model(causal: bool, tasks) -> None:
    """An encoder (causal=False) predicts masked tokens, a decoder next ones: each is evaluated on its own
    tasks."""
    if not causal:
        wrong = [t for t in tasks if t not in ENCODER_TASKS]
        if wrong:
            raise InputError(f"the model is an encoder (causal=False): eval tasks {wrong} score or generate "
                             "next tokens, which it does not predict; use --tasks encoder (mlm, mlm_recall)")
    else:
        wrong = [t for t in tasks if t in ENCODER_TASKS]
        if wrong:
            raise InputError(f"eval tasks {wrong} fill masked tokens, which needs an encoder (causal=False), "
                             "but the model is a decoder; use --tasks ppl,passkey (or short, ruler)")


def as_eval_config(config_like: Any = None, **overrides) -> EvalConfig:
    """An EvalConfig from an EvalConfig, dict or ml_collections.ConfigDict (None: defaults), plus the
    overrides that are set (the CLI passes None for flags not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclass_from(EvalConfig, config_like, given, what="eval")
