"""What the RULER tasks share: the trial they make, pseudo-words, and the check that a tokenizer can write the
task's text at all."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ctxjax.errors import InputError
from ctxjax.evaluate.retrieval import Prompt

_CONSONANTS = "bdfghklmnprstvz"
_VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in _CONSONANTS for v in _VOWELS)  # 75 syllables -> 421,875 words of three


@dataclasses.dataclass
class RulerTrial:
    prompt: Prompt  # needle_start / filler counts describe the asked needle where the task has one
    answers: list[str]  # what the scorer looks for in the reply


@dataclasses.dataclass
class TaskSpec:
    """How the grid runs one task: its trials, its score, and whether prompts vary by depth."""

    make_trial: Callable[[int, float | None, np.random.RandomState], RulerTrial]
    score: Callable[[str, list[str]], float]
    uses_depth: bool


def pseudo_word(rng: np.random.RandomState) -> str:
    """Three random syllables ("kamidu"): every word has six letters, so no word is a substring of another
    and substring scoring cannot credit the wrong one."""
    return "".join(SYLLABLES[i] for i in rng.randint(len(SYLLABLES), size=3))


def distinct_words(rng: np.random.RandomState, n: int, taken: set[str] | None = None) -> list[str]:
    taken = set() if taken is None else taken
    words: list[str] = []
    while len(words) < n:
        word = pseudo_word(rng)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def check_represented(tokenizer, texts: Sequence[str]) -> None:
    """Refuse (InputError) a tokenizer that cannot write `texts`: one whose decode(encode(text)) loses
    characters (an unknown-token id, a byte-less vocabulary), so the model could never answer."""
    for text in texts:
        back = tokenizer.decode(tokenizer.encode(" " + text))
        if back.strip() != text.strip():
            raise InputError(f"the tokenizer cannot represent {text!r} (it decodes as {back.strip()!r}); "
                             "this task needs a tokenizer that writes its text exactly")


def bos(tokenizer, add_bos: bool) -> list[int]:
    return [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []


def fit_units(prefix: Sequence[int], units: Sequence[Sequence[int]], question: Sequence[int]) -> Prompt:
    """prefix + units + question, the units already chosen to fit (no needle: aggregation tasks)."""
    tokens = [int(t) for t in (*prefix, *(t for u in units for t in u), *question)]
    used = sum(map(len, units))
    return Prompt(tokens, len(prefix), 0, used)


def too_short(length: int, needed: int, what: str) -> InputError:
    return InputError(f"a prompt of {length} tokens cannot hold {what} ({needed} tokens); use lengths >= "
                      f"{needed}")
