"""Passkey retrieval in the Landmark Attention / Position Interpolation format (Mohtashami & Jaggi 2023):

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz
    you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. (repeated)
    The pass key is 68217. Remember it. 68217 is the pass key.
    The grass is green. ... (repeated)
    What is the pass key? The pass key is

The key is a random integer of `key_digits` digits (PI: 5). The reply is correct when its first integer is
exactly the key (the scoring of the Landmark and YaRN scripts).
"""

from __future__ import annotations

import re

import numpy as np

# The sentences are shared with the training documents of the `retrieval:` source
# (ctxjax/data/retrieval_text.py).
from ctxjax.data.retrieval_text import FILLER, PASSKEY_INTRO as INTRO, PASSKEY_QUESTION as QUESTION
from ctxjax.data.retrieval_text import PASSKEY_SENTENCE as KEY_SENTENCE, random_key
from ctxjax.evaluate.retrieval import Trial, build_prompt


class PasskeyTask:
    def __init__(self, tokenizer, key_digits: int = 5, add_bos: bool = True):
        self.tokenizer = tokenizer
        self.key_digits = key_digits
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.prefix = bos + tokenizer.encode(INTRO)
        # Each piece carries its own leading space, so the pieces join as the text would.
        self.filler = [tokenizer.encode(" " + s) for s in FILLER]
        self.question = tokenizer.encode(" " + QUESTION)

    def random_key(self, rng: np.random.RandomState) -> str:
        return random_key(rng, self.key_digits)

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState,
                   key: str | None = None) -> Trial:
        key = key or self.random_key(rng)
        needle = self.tokenizer.encode(" " + KEY_SENTENCE.format(key=key))
        return Trial(build_prompt(self.prefix, self.filler, needle, self.question, length, depth), key)

    def answer_tokens(self) -> int:
        return key_answer_tokens(self.tokenizer, self.key_digits)


def key_answer_tokens(tokenizer, digits: int) -> int:
    """Enough new tokens for a key and a little more (the Landmark and YaRN scripts generate 10)."""
    return max(10, len(tokenizer.encode(" " + "9" * digits)) + 4)


def passkey_correct(output: str, key: str) -> bool:
    """True exactly when the first integer in `output` is `key`."""
    found = re.search(r"\d+", output)
    return found is not None and found.group() == key
