"""RULER's needle variants (Hsieh et al. 2024, §3.1), in passkey's filler with named secret numbers
(`The secret number of amber-falcon is 68217.`, the sentence of `multikey`):

- niah_single: one named number, asked for (RULER's niah_single_1: word key, number value, repeated
  filler). It is `multikey` without distractors; passkey is the same test without the name.
- niah_multikey: the asked number among `distractors` other named numbers (niah_multikey_1): `multikey`'s
  prompt, scored RULER's way.
- niah_multivalue: one name holds `values` numbers, all asked for: "What are all the secret numbers of X?"
- niah_multiquery: `queries` names, each with its number, all asked for at once.

The first (asked) number sits at the requested depth, the others between random filler sentences. Every reply
is scored by recall: the fraction of the asked numbers it contains.
"""

from __future__ import annotations

import numpy as np

from ctxjax.data.retrieval_text import FILLER, MULTIKEY_INTRO, MULTIKEY_SENTENCE, NAMES, random_key
from ctxjax.errors import InputError
from ctxjax.evaluate.multikey import MultiKeyTask
from ctxjax.evaluate.retrieval import build_prompt_with_others
from ctxjax.evaluate.ruler.common import RulerTrial, bos, check_represented

MULTIVALUE_QUESTION = "What are all the secret numbers of {name}? The secret numbers of {name} are"
KEYED_TEXT = (MULTIKEY_INTRO, MULTIKEY_SENTENCE.format(name=NAMES[0], key="1234567890"))
MULTIQUERY_QUESTION = "What are the secret numbers of {names}? The secret numbers of {names} are"


def distinct_keys(rng: np.random.RandomState, n: int, digits: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < n:  # distinct, so that recall counts each asked number once
        key = random_key(rng, digits)
        keys += [key] if key not in keys else []
    return keys


class KeyedNeedles:
    """Named numbers in passkey's filler; `make_trial` decides which names and numbers, and what is asked."""

    def __init__(self, tokenizer, key_digits: int = 5, add_bos: bool = True):
        check_represented(tokenizer, KEYED_TEXT)
        self.tokenizer = tokenizer
        self.key_digits = key_digits
        self.prefix = bos(tokenizer, add_bos) + tokenizer.encode(MULTIKEY_INTRO)
        self.filler = [tokenizer.encode(" " + s) for s in FILLER]

    def sentence(self, name: str, key: str) -> list[int]:
        return self.tokenizer.encode(" " + MULTIKEY_SENTENCE.format(name=name, key=key))

    def prompt(self, pairs: list[tuple[str, str]], question: str, length: int, depth: float,
               rng: np.random.RandomState, what: str):
        """pairs[0] at `depth`, the other (name, key) pairs at random places."""
        others = [self.sentence(n, k) for n, k in pairs[1:]]
        return build_prompt_with_others(self.prefix, self.filler, self.sentence(*pairs[0]), others,
                                        self.tokenizer.encode(" " + question), length, depth, rng, what)


class MultiValueTask(KeyedNeedles):
    def __init__(self, tokenizer, key_digits: int = 5, values: int = 4, add_bos: bool = True):
        super().__init__(tokenizer, key_digits, add_bos)
        if values < 1:
            raise InputError(f"values={values} must be at least 1")
        self.values = values

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> RulerTrial:
        name = NAMES[rng.randint(len(NAMES))]
        keys = distinct_keys(rng, self.values, self.key_digits)
        prompt = self.prompt([(name, k) for k in keys], MULTIVALUE_QUESTION.format(name=name), length, depth,
                             rng, f"the template and {self.values} values")
        return RulerTrial(prompt, keys)


class MultiQueryTask(KeyedNeedles):
    def __init__(self, tokenizer, key_digits: int = 5, queries: int = 4, add_bos: bool = True):
        super().__init__(tokenizer, key_digits, add_bos)
        if not 1 <= queries <= len(NAMES):
            raise InputError(f"queries={queries} must be between 1 and {len(NAMES)}")
        self.queries = queries

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> RulerTrial:
        names = [NAMES[i] for i in rng.choice(len(NAMES), self.queries, replace=False)]
        keys = distinct_keys(rng, self.queries, self.key_digits)
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        prompt = self.prompt(list(zip(names, keys)), MULTIQUERY_QUESTION.format(names=listed), length, depth,
                             rng, f"the template and {self.queries} queried numbers")
        return RulerTrial(prompt, keys)


class SingleAnswer:
    """`multikey`'s prompts with RULER's scoring (a list holding the one key)."""

    def __init__(self, tokenizer, key_digits: int = 5, distractors: int = 0, add_bos: bool = True):
        check_represented(tokenizer, KEYED_TEXT)
        self.task = MultiKeyTask(tokenizer, key_digits, distractors, add_bos)

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> RulerTrial:
        trial = self.task.make_trial(length, depth, rng)
        return RulerTrial(trial.prompt, [trial.expected])
