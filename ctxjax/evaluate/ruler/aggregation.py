"""RULER's aggregation tasks (Hsieh et al. 2024, §3.3): count words over the whole context.

- cwe, common words extraction: a shuffled list where `common` words (10) appear `freq_common` times (30) each
  and the rest `freq_rare` times (3) each; as the length grows only the number of rare words grows. At lengths
  where 30 copies would not leave half of the list to rare words, common words appear as often as half the
  list allows (at least `freq_rare + 1` times), as RULER lowers its frequencies for short contexts.
- fwe, frequent words extraction: "coded words" with Zipf counts (exponent `alpha`, RULER's 2.0): the word of
  rank r appears floor(C / r**alpha) times, C as large as the length allows, then words seen once fill the
  rest; the three most frequent words are asked for.

Words are six-letter pseudo-words ("kamidu"; no downloads, and none is a substring of another). Scored by
recall over the asked words. The tasks have no depth.
"""

from __future__ import annotations

import numpy as np

from ctxjax.errors import InputError
from ctxjax.evaluate.ruler.common import (RulerTrial, bos, check_represented, distinct_words, fit_units,
                                          too_short)

CWE_INTRO = "Below is a list of words. Some of them appear many times."
CWE_QUESTION = ("Question: What are the {n} most common words in the list above? Answer: The {n} most common "
                "words in the list are")
FWE_INTRO = "Read the coded text below and keep track of how often each coded word appears."
FWE_QUESTION = ("Question: What are the {n} most frequent coded words in the text above? Answer: The {n} "
                "most frequent coded words are")


class _WordList:
    def __init__(self, tokenizer, intro: str, question: str, add_bos: bool):
        check_represented(tokenizer, [intro, question, "kamidu zorebe"])
        self.tokenizer = tokenizer
        self.prefix = bos(tokenizer, add_bos) + tokenizer.encode(intro)
        self.question = tokenizer.encode(" " + question)

    def unit(self, word: str) -> list[int]:
        return self.tokenizer.encode(" " + word)

    def prompt(self, entries: list[list[int]], rng: np.random.RandomState):
        return fit_units(self.prefix, [entries[i] for i in rng.permutation(len(entries))], self.question)


class CommonWordsTask(_WordList):
    def __init__(self, tokenizer, common: int = 10, freq_common: int = 30, freq_rare: int = 3,
                 add_bos: bool = True):
        if not (common >= 1 and freq_common > freq_rare >= 1):
            raise InputError(f"cwe needs common >= 1 and freq_common > freq_rare >= 1 (got {common}, "
                             f"{freq_common}, {freq_rare})")
        super().__init__(tokenizer, CWE_INTRO, CWE_QUESTION.format(n=common), add_bos)
        self.common, self.freq_common, self.freq_rare = common, freq_common, freq_rare

    def make_trial(self, length: int, depth, rng: np.random.RandomState) -> RulerTrial:
        taken: set[str] = set()
        words = distinct_words(rng, self.common, taken)
        units = [self.unit(w) for w in words]
        budget = length - len(self.prefix) - len(self.question)
        per_copy = sum(map(len, units))
        freq = min(self.freq_common, budget // (2 * per_copy))  # common words fill at most half the list
        if freq <= self.freq_rare:
            needed = length - budget + 2 * (self.freq_rare + 1) * per_copy
            raise too_short(length, needed, f"{self.common} common words appearing {self.freq_rare + 1} "
                                            "times beside as many rare ones")
        entries = [u for u in units for _ in range(freq)]
        budget -= freq * per_copy
        while True:
            (rare,) = distinct_words(rng, 1, taken)
            unit = self.unit(rare)
            if self.freq_rare * len(unit) > budget:
                break
            entries += [unit] * self.freq_rare
            budget -= self.freq_rare * len(unit)
        return RulerTrial(self.prompt(entries, rng), words)


class FrequentWordsTask(_WordList):
    def __init__(self, tokenizer, top: int = 3, alpha: float = 2.0, add_bos: bool = True):
        if top < 1 or alpha <= 0:
            raise InputError(f"fwe needs top >= 1 and alpha > 0 (got {top}, {alpha})")
        super().__init__(tokenizer, FWE_INTRO, FWE_QUESTION.format(n=top), add_bos)
        self.top, self.alpha = top, alpha

    def counts(self, scale: int, ranks: int) -> np.ndarray:
        return np.floor(scale / np.arange(1, ranks + 1) ** self.alpha).astype(int)

    def separates(self, counts: np.ndarray) -> bool:
        return counts[self.top - 1] > max(counts[self.top], 1)

    def make_trial(self, length: int, depth, rng: np.random.RandomState) -> RulerTrial:
        budget = length - len(self.prefix) - len(self.question)
        least = 1  # the smallest scale whose top words are more frequent than the next one, and than once
        while not self.separates(self.counts(least, self.top + 1)):
            least += 1
        taken: set[str] = set()
        words: list[str] = []
        units: list[list[int]] = []

        def tokens(scale: int) -> int:
            counts = self.counts(scale, max(self.top + 1, int(scale ** (1 / self.alpha)) + 1))
            while len(words) < len(counts):
                words.extend(distinct_words(rng, 1, taken))
                units.append(self.unit(words[-1]))
            return int(sum(c * len(u) for c, u in zip(counts, units)))

        if tokens(least) > budget:
            raise too_short(length, length - budget + tokens(least),
                            f"the template and a Zipf list whose top {self.top} words are distinct")
        low, high = least, max(least, budget)  # the largest scale that fits: tokens() grows with the scale
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if tokens(mid) <= budget else (low, mid - 1)
        counts = self.counts(low, len(units))
        entries = [u for c, u in zip(counts, units) for _ in range(c)]
        budget -= tokens(low)
        while True:  # the tail of the distribution: words seen once, while they fit
            (word,) = distinct_words(rng, 1, taken)
            unit = self.unit(word)
            if len(unit) > budget:
                break
            entries.append(unit)
            budget -= len(unit)
        return RulerTrial(self.prompt(entries, rng), words[:self.top])
