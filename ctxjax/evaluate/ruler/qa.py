"""A question-answering task in the manner of RULER's qa (Hsieh et al. 2024, §3.4), without a dataset: the
context is a list of synthetic facts,

    Answer the question from the facts below. ... Vera Holm's home town is Lisbon. Ivo Brandt's pet is a
    heron. ... Question: What is Vera Holm's pet? Answer: Vera Holm's pet is

one of them (the asked one) at the requested depth and the rest distractors: other people with the same
attribute, the same person with other attributes, so neither the name nor the attribute alone finds it.
Correct when the reply contains the asked value (RULER's string_match_part).
"""

from __future__ import annotations

import numpy as np

from ctxjax.evaluate.retrieval import build_prompt, template_tokens
from ctxjax.evaluate.ruler.common import RulerTrial, bos, check_represented, too_short

INTRO = "Answer the question from the facts below."
FACT = "{person}'s {attribute} is {value}."
QUESTION = "Question: What is {person}'s {attribute}? Answer: {person}'s {attribute} is"
FIRST = ("Vera", "Ivo", "Mara", "Otto", "Lena", "Bruno", "Ines", "Karl", "Nora", "Felix", "Alma", "Hugo",
         "Edda", "Tomas", "Rita", "Pavel")
LAST = ("Holm", "Brandt", "Okafor", "Sato", "Varga", "Lindqvist", "Moreau", "Quinn", "Ferreira", "Novak",
        "Castillo", "Weber", "Adeyemi", "Kowalski", "Duarte", "Haas")
# Values of one attribute: none contains another, so substring scoring cannot credit a wrong one.
ATTRIBUTES = {
    "home town": ("Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Perth", "Bergen", "Cusco",
                  "Porto"),
    "pet": ("a heron", "a ferret", "a tortoise", "a parrot", "a goat", "an iguana", "a hamster", "a donkey",
            "a gecko", "a rabbit"),
    "favourite fruit": ("mango", "quince", "lychee", "papaya", "apricot", "guava", "kiwi", "plum", "fig",
                        "melon"),
    "job": ("baker", "pilot", "surgeon", "plumber", "violinist", "geologist", "tailor", "librarian",
            "welder", "jeweller"),
    "instrument": ("cello", "banjo", "oboe", "harp", "tuba", "sitar", "ukulele", "bassoon", "marimba",
                   "accordion"),
}


class FactQATask:
    def __init__(self, tokenizer, add_bos: bool = True):
        facts = [FACT.format(person=f"{first} {last}", attribute=a, value=v)
                 for first, last in zip(FIRST, LAST) for a, values in ATTRIBUTES.items() for v in values]
        check_represented(tokenizer, [INTRO, *facts, QUESTION.format(person="Vera Holm", attribute="pet")])
        self.tokenizer = tokenizer
        self.prefix = bos(tokenizer, add_bos) + tokenizer.encode(INTRO)

    def _fact(self, rng: np.random.RandomState) -> tuple[str, str, str]:
        person = f"{FIRST[rng.randint(len(FIRST))]} {LAST[rng.randint(len(LAST))]}"
        attribute = list(ATTRIBUTES)[rng.randint(len(ATTRIBUTES))]
        values = ATTRIBUTES[attribute]
        return person, attribute, values[rng.randint(len(values))]

    def _encode(self, fact: tuple[str, str, str]) -> list[int]:
        person, attribute, value = fact
        return self.tokenizer.encode(" " + FACT.format(person=person, attribute=attribute, value=value))

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> RulerTrial:
        asked = self._fact(rng)
        needle = self._encode(asked)
        question = self.tokenizer.encode(" " + QUESTION.format(person=asked[0], attribute=asked[1]))
        budget = length - template_tokens(self.prefix, needle, question)
        if budget < 0:
            raise too_short(length, length - budget, "the template and the asked fact")
        distractors: list[list[int]] = []
        while True:  # facts about anyone but the asked (person, attribute), while they fit
            fact = self._fact(rng)
            if fact[:2] == asked[:2]:
                continue
            unit = self._encode(fact)
            if len(unit) > budget:
                break
            distractors.append(unit)
            budget -= len(unit)
        if not distractors:
            raise too_short(length, length - budget + len(self._encode(asked)),
                            "the template and one distractor fact")
        prompt = build_prompt(self.prefix, distractors, needle, question, length, depth, cycle=False)
        return RulerTrial(prompt, [asked[2].split()[-1]])  # "heron" of "a heron"
