"""Passkey retrieval with distractors: several named keys in the filler, one asked for (the multi-key needle
task of RULER, Hsieh et al. 2024).

    Several secret numbers are hidden in the text below, each with a name. Remember them all.
    The grass is green. ... The secret number of brisk-comet is 40213. ... The secret number of amber-falcon
    is 68217. ... The secret number of calm-meadow is 90125. ...
    What is the secret number of amber-falcon? The secret number of amber-falcon is

Plain passkey retrieval can be passed by copying the only number in the prompt, and models that pass it still
fail harder retrieval (PoSE's issue 5; RULER: near-perfect passkey scores, falling multi-key scores). Here the
model has to match a name to pick one of `distractors + 1` numbers: copying any number scores about
1 / (distractors + 1). The asked key sits at the requested depth, the distractors at random places in the
filler; scoring is passkey's (the reply's first integer is exactly the key).
"""

from __future__ import annotations

import numpy as np

from ctxjax.errors import InputError
# The sentences are shared with the training documents of the `retrieval:` source
# (ctxjax/data/retrieval_text.py).
from ctxjax.data.retrieval_text import FILLER, MULTIKEY_INTRO as INTRO, MULTIKEY_QUESTION as QUESTION
from ctxjax.data.retrieval_text import MULTIKEY_SENTENCE as KEY_SENTENCE, NAMES, random_key
from ctxjax.evaluate.passkey import key_answer_tokens
from ctxjax.evaluate.retrieval import Trial, build_prompt_with_others


class MultiKeyTask:
    def __init__(self, tokenizer, key_digits: int = 5, distractors: int = 3, add_bos: bool = True):
        if not 0 <= distractors < len(NAMES):
            raise InputError(f"distractors={distractors} must be between 0 and {len(NAMES) - 1}")
        self.tokenizer = tokenizer
        self.key_digits = key_digits
        self.distractors = distractors
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.prefix = bos + tokenizer.encode(INTRO)
        self.filler = [tokenizer.encode(" " + s) for s in FILLER]  # passkey's, each with its leading space

    def _sentence(self, name: str, key: str) -> list[int]:
        return self.tokenizer.encode(" " + KEY_SENTENCE.format(name=name, key=key))

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> Trial:
        names = [NAMES[i] for i in rng.choice(len(NAMES), self.distractors + 1, replace=False)]
        keys: list[str] = []
        while len(keys) < len(names):  # distinct keys, so that only the asked one is correct
            key = random_key(rng, self.key_digits)
            keys += [key] if key not in keys else []
        needle = self._sentence(names[0], keys[0])
        question = self.tokenizer.encode(" " + QUESTION.format(name=names[0]))
        others = [self._sentence(n, k) for n, k in zip(names[1:], keys[1:])]
        prompt = build_prompt_with_others(self.prefix, self.filler, needle, others, question, length, depth,
                                          rng, f"the template and {self.distractors} distractors")
        return Trial(prompt, keys[0])

    def answer_tokens(self) -> int:
        return key_answer_tokens(self.tokenizer, self.key_digits)
