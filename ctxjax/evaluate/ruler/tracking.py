"""RULER's variable tracking (Hsieh et al. 2024, §3.2, multi-hop tracing): chains of assignments in passkey's
filler,

    VAR QXKZB = 40213. ... VAR MHTRA = VAR QXKZB. ... VAR PLDWE = VAR MHTRA. ...
    Question: Which variables are assigned the value 40213 in the text above? Answer: The variables assigned
    the value 40213 are

and the reply must name every variable of the asked chain (`hops` copies after the first assignment: RULER's
num_hops=4 gives 5 names). `chains - 1` further chains with other values are distractors (RULER's default is
one chain). Statements keep their chain's order and are spread over the filler at random places; the task has
no depth. Scored by recall over the asked chain's names.
"""

from __future__ import annotations

import string

import numpy as np

from ctxjax.data.retrieval_text import FILLER
from ctxjax.errors import InputError
from ctxjax.evaluate.retrieval import Prompt
from ctxjax.evaluate.ruler.common import RulerTrial, bos, check_represented, too_short
from ctxjax.evaluate.ruler.needles import distinct_keys

INTRO = "Memorize every variable assignment in the text below: some variables copy the value of another."
VALUE = "VAR {name} = {value}."
COPY = "VAR {name} = VAR {source}."
QUESTION = ("Question: Which variables are assigned the value {value} in the text above? Answer: The "
            "variables assigned the value {value} are")


class VariableTrackingTask:
    def __init__(self, tokenizer, chains: int = 1, hops: int = 4, key_digits: int = 5, add_bos: bool = True):
        if chains < 1 or hops < 0:
            raise InputError(f"variable tracking needs chains >= 1 and hops >= 0 (got {chains}, {hops})")
        check_represented(tokenizer, [INTRO, COPY.format(name="ABCDE", source=string.ascii_uppercase[5:10]),
                                      QUESTION.format(value="1234567890")])
        self.tokenizer, self.chains, self.hops, self.key_digits = tokenizer, chains, hops, key_digits
        self.prefix = bos(tokenizer, add_bos) + tokenizer.encode(INTRO)
        self.filler = [tokenizer.encode(" " + s) for s in FILLER]

    def _names(self, rng: np.random.RandomState) -> list[str]:
        names: list[str] = []
        while len(names) < self.chains * (self.hops + 1):
            name = "".join(rng.choice(list(string.ascii_uppercase), 5))
            names += [name] if name not in names else []
        return names

    def make_trial(self, length: int, depth, rng: np.random.RandomState) -> RulerTrial:
        values = distinct_keys(rng, self.chains, self.key_digits)
        names = self._names(rng)
        chains = [names[c * (self.hops + 1):(c + 1) * (self.hops + 1)] for c in range(self.chains)]
        statements = []  # the chains interleaved at random, each in its own order
        position = [0] * self.chains
        for c in rng.permutation(np.repeat(np.arange(self.chains), self.hops + 1)):
            i, chain = position[c], chains[c]
            text = VALUE.format(name=chain[0], value=values[c]) if i == 0 else COPY.format(name=chain[i],
                                                                                        source=chain[i - 1])
            statements.append(self.tokenizer.encode(" " + text))
            position[c] += 1
        question = self.tokenizer.encode(" " + QUESTION.format(value=values[0]))
        fixed = len(self.prefix) + sum(map(len, statements)) + len(question)
        if fixed > length:
            raise too_short(length, fixed, f"the template and {self.chains} chain(s) of {self.hops + 1} "
                                           "variables")
        units: list[list[int]] = []
        budget = length - fixed
        while len(self.filler[len(units) % len(self.filler)]) <= budget:
            units.append(self.filler[len(units) % len(self.filler)])
            budget -= len(units[-1])
        slots = np.sort(rng.randint(len(units) + 1, size=len(statements)))
        for k, (slot, statement) in enumerate(zip(slots, statements)):
            units.insert(int(slot) + k, statement)  # after the k statements already placed before it
        tokens = [int(t) for t in (*self.prefix, *(t for u in units for t in u), *question)]
        first = int(slots[0])
        filler_before = sum(len(u) for u in units[:first])
        prompt = Prompt(tokens, len(self.prefix) + filler_before, filler_before, length - fixed - budget)
        return RulerTrial(prompt, chains[0])
