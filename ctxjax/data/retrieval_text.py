"""The sentences of the synthetic retrieval tasks, in one place for the two users that must agree on them:
`ctxjax eval`'s passkey and multikey prompts (ctxjax.evaluate.passkey / multikey, which build them from token
ids) and the training documents of the `retrieval:` source (ctxjax.data.retrieval_source, which writes them as
text). A model trained on those documents is asked exactly the questions it learned to answer.

Passkey (Landmark Attention / Position Interpolation, Mohtashami & Jaggi 2023):

    There is an important info hidden inside a lot of irrelevant text. ... I will quiz you about the important
    information there. The grass is green. The sky is blue. ... The pass key is 68217. Remember it. 68217 is
    the pass key. The sun is yellow. ... What is the pass key? The pass key is 68217.

Multi-key (RULER's multi-key needle, Hsieh et al. 2024): named keys in the same filler, one of them asked for.

    Several secret numbers are hidden in the text below, each with a name. Remember them all. The grass is
    green. The secret number of brisk-comet is 40213. ... What is the secret number of amber-falcon? The
    secret number of amber-falcon is 68217.

Pieces after the intro are joined with one space; the filler cycles through FILLER from its first sentence.
"""

from __future__ import annotations

import numpy as np

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.")

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                 "them. I will quiz you about the important information there.")
PASSKEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"

MULTIKEY_INTRO = "Several secret numbers are hidden in the text below, each with a name. Remember them all."
MULTIKEY_SENTENCE = "The secret number of {name} is {key}."
MULTIKEY_QUESTION = "What is the secret number of {name}? The secret number of {name} is"
_ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "ivory", "jolly",
               "keen", "lunar")
_NOUNS = ("falcon", "harbor", "meadow", "lantern", "river", "orchard", "pebble", "comet", "willow", "canyon",
          "beacon", "thistle")
NAMES = tuple(f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS)


def random_key(rng: np.random.RandomState | np.random.Generator, digits: int) -> str:
    """A random integer of exactly `digits` digits (no leading zero), as text."""
    low, high = 10 ** (digits - 1), 10 ** digits
    value = rng.randint(low, high) if isinstance(rng, np.random.RandomState) else rng.integers(low, high)
    return str(value)


def answer(key: str) -> str:
    """What follows the question in a training document: the key, then the sentence's full stop."""
    return f" {key}."
