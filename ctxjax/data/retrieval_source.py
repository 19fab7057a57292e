"""`retrieval:` — synthetic retrieval documents to mix into training, so that a model learns to answer the
passkey and multikey questions that `ctxjax eval` asks (a small LM does not follow those prompts zero-shot;
the CPU-scale protocol mixes 5-10% of passkey-format samples into pretraining, reference/papers.md §10.2).

    retrieval[:TASKS][:OPTION=VALUE...]      e.g. retrieval:passkey,multikey:chars=150-600:docs=20000
    TASKS          passkey, multikey or both comma-separated (default passkey); documents alternate between
                   them
    chars=MIN-MAX  document length in characters, uniform in [MIN, MAX] (default 200-2000); the filler fills
                   what the template leaves, and the key sits at a uniform place in it, so the key-to-question
                   distance covers every length up to MAX
    docs=N         documents per epoch (default 10000)
    digits=D[-E]   digits of a key, or a uniform range of them (default 5, as `ctxjax eval`); longer keys give
                   more tokens to copy per document, which a small model learns from sooner
    distractors=K  other named keys in a multikey document (default 3, as `ctxjax eval --distractors`)
    filler=F       `cycle` (default): the filler sentences in order from the first, as the evaluation's
                   prompts; `random`: each sentence drawn at random. A periodic filler puts key and question
                   at a few fixed offsets, and a small model learns to find the key by those offsets instead
                   of by its content: it then fails at the evaluation's other offsets, all prompts of a
                   (length, depth) cell alike (docs/demo.md)
    seed=S         which documents (default 0); document i is a function of (seed, i) alone

A document is the evaluation prompt followed by its answer (retrieval_text.py), e.g. `... What is the pass
key? The pass key is 68217.`, so next-token training on it is training to retrieve. Mixed with natural text:
`mix:1*stdlib;0.5*retrieval:passkey,multikey` (weights count documents). The documents are synthetic, so a
mixture's held-out split leaves them out: their skill is measured by `ctxjax eval --tasks passkey,multikey`.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ctxjax.data.config import DataError
from ctxjax.data.retrieval_text import (FILLER, MULTIKEY_INTRO, MULTIKEY_QUESTION, MULTIKEY_SENTENCE, NAMES,
                                        PASSKEY_INTRO, PASSKEY_QUESTION, PASSKEY_SENTENCE, answer, random_key)
from ctxjax.data.document_source import DocumentSource

TASKS = ("passkey", "multikey")
FILLERS = ("cycle", "random")
_FORMAT = 1  # part of the fingerprint: bump when the text of a document (seed, i) changes
_EXAMPLE = "retrieval:passkey,multikey:chars=200-2000:docs=10000"


@dataclasses.dataclass(frozen=True)
class RetrievalSpec:
    tasks: tuple[str, ...] = ("passkey",)
    min_chars: int = 200
    max_chars: int = 2000
    docs: int = 10000
    min_digits: int = 5
    max_digits: int = 5
    distractors: int = 3
    filler: str = "cycle"
    seed: int = 0

    def canonical(self) -> str:
        return (f"retrieval:{','.join(self.tasks)}:chars={self.min_chars}-{self.max_chars}:docs={self.docs}"
                f":digits={self.min_digits}-{self.max_digits}:distractors={self.distractors}"
                f"{'' if self.filler == 'cycle' else ':filler=' + self.filler}:seed={self.seed}")


def parse_spec(arg: str, spec: str) -> RetrievalSpec:
    """The part after 'retrieval:' -> RetrievalSpec; a one-line DataError naming the fix otherwise."""
    def fail(problem: str):
        raise DataError(f"data.source={spec!r}: {problem}; write e.g. {_EXAMPLE}")

    fields: dict = {}
    parts = [p.strip() for p in arg.split(":")] if arg.strip() else []
    if parts and "=" not in parts[0]:
        tasks = tuple(t.strip() for t in parts.pop(0).split(",") if t.strip())
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks or len(set(tasks)) < len(tasks):
            fail(f"tasks {','.join(tasks) or '(none)'} must be one or both of {', '.join(TASKS)}")
        fields["tasks"] = tasks
    for part in parts:
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or name not in ("chars", "docs", "digits", "distractors", "filler", "seed"):
            fail(f"unknown option {part!r} (options: chars=MIN-MAX, docs=N, digits=D, distractors=K, "
                 f"filler={'|'.join(FILLERS)}, seed=S)")
        if name == "filler":
            if value not in FILLERS:
                fail(f"filler={value} must be one of {', '.join(FILLERS)}")
            fields[name] = value
            continue
        try:
            numbers = [int(x) for x in value.split("-", 1)] if name in ("chars", "digits") else [int(value)]
        except ValueError:
            fail(f"{part!r} does not give {'MIN-MAX' if name in ('chars', 'digits') else 'an integer'}")
        if name in ("chars", "digits"):
            fields[f"min_{name}"], fields[f"max_{name}"] = numbers[0], numbers[-1]
        else:
            fields[name] = numbers[0]
    parsed = RetrievalSpec(**fields)
    if not 1 <= parsed.min_chars <= parsed.max_chars:
        fail(f"chars={parsed.min_chars}-{parsed.max_chars} needs 1 <= MIN <= MAX")
    if parsed.docs < 1 or not 1 <= parsed.min_digits <= parsed.max_digits <= 18 or parsed.seed < 0:
        fail("docs must be >= 1, digits from 1 to 18 (MIN <= MAX), seed >= 0")
    if not 0 <= parsed.distractors < len(NAMES) or ("multikey" in parsed.tasks and 10 ** parsed.min_digits -
                                                    10 ** (parsed.min_digits - 1) <= parsed.distractors):
        fail(f"distractors={parsed.distractors} must be from 0 to {len(NAMES) - 1}, with as many distinct "
             "keys")
    return parsed


def _filler(budget: int, rng: np.random.Generator | None = None) -> list[str]:
    """FILLER's sentences, as many as fit in `budget` characters with their spaces: from the first, cycling
    (what the evaluation prompts do in tokens), or each drawn at random when `rng` is given."""
    sentences: list[str] = []
    while True:
        sentence = FILLER[int(rng.integers(len(FILLER))) if rng else len(sentences) % len(FILLER)]
        if len(sentence) + 1 > budget:
            return sentences
        sentences.append(sentence)
        budget -= len(sentence) + 1


def _document(intro: str, needles: list[str], question: str, key: str, chars: int,
              rng: np.random.Generator, random_filler: bool) -> str:
    """intro, filler with each needle at a uniform place in it, question, answer: `chars` long when it
    fits."""
    tail = " " + question + answer(key)
    budget = chars - len(intro) - sum(len(n) + 1 for n in needles) - len(tail)
    pieces = _filler(budget, rng if random_filler else None)
    for needle in needles:
        pieces.insert(int(rng.integers(len(pieces) + 1)), needle)
    return intro + "".join(" " + p for p in pieces) + tail


class RetrievalSource(DocumentSource):
    """Document i of a RetrievalSpec, generated on demand: random access and a fingerprint like any source."""

    def __init__(self, parsed: RetrievalSpec, spec: str):
        self.parsed, self.spec = parsed, spec
        self.local_files = True  # generating is cheap: tokenize every document up front and cache the tokens

    def __len__(self):
        return self.parsed.docs

    def text(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        p = self.parsed
        rng = np.random.default_rng([p.seed, i, _FORMAT])
        chars = int(rng.integers(p.min_chars, p.max_chars + 1))
        digits = int(rng.integers(p.min_digits, p.max_digits + 1))
        if p.tasks[i % len(p.tasks)] == "passkey":
            key = random_key(rng, digits)
            return _document(PASSKEY_INTRO, [PASSKEY_SENTENCE.format(key=key)], PASSKEY_QUESTION, key, chars,
                             rng, p.filler == "random")
        names = [NAMES[j] for j in rng.choice(len(NAMES), p.distractors + 1, replace=False)]
        keys: list[str] = []
        while len(keys) < len(names):  # distinct keys, so that only the asked one answers the question
            key = random_key(rng, digits)
            keys += [key] if key not in keys else []
        needles = [MULTIKEY_SENTENCE.format(name=n, key=k) for n, k in zip(names, keys)]
        return _document(MULTIKEY_INTRO, needles, MULTIKEY_QUESTION.format(name=names[0]), keys[0], chars,
                         rng, p.filler == "random")

    def fingerprint(self):
        return hashlib.sha1(f"{self.parsed.canonical()}:format={_FORMAT}".encode()).hexdigest()


def open_retrieval(arg: str, config=None) -> RetrievalSource:
    spec = f"retrieval:{arg}" if arg else "retrieval"
    return RetrievalSource(parse_spec(arg, spec), spec)
