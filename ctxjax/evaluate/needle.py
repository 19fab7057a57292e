"""Needle in a haystack (gkamradt 2023) with a user-given needle, question and haystack source.

The haystack is the source's documents cut into lines (a line boundary is the sentence boundary of code and
of most text files), taken in order and repeated when the source is shorter than the prompt. The needle is
inserted as its own line at the requested depth; the prompt ends with the question and "Answer:". A reply is
correct when it contains the expected answer, ignoring case (RULER's recall-based scoring, since there is no
LLM judge here).
"""

from __future__ import annotations

import numpy as np

from ctxjax.errors import InputError
from ctxjax.evaluate.documents import load_texts
from ctxjax.evaluate.retrieval import Trial, build_prompt


class NeedleTask:
    def __init__(self, tokenizer, needle: str, question: str, answer: str, haystack: str,
                 max_documents: int | None, max_tokens: int, add_bos: bool = True):
        """`haystack`: a ctxjax.data source spec; lines are read until about `max_tokens` tokens are held."""
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.prefix = bos
        self.needle = tokenizer.encode("\n" + needle.strip() + "\n")
        self.question = tokenizer.encode("\n" + question.strip() + "\nAnswer:")
        self.answer = answer
        self.filler = self._haystack_lines(tokenizer, haystack, max_documents, max_tokens)
        self._answer_tokens = len(tokenizer.encode(" " + needle.strip())) + 4

    @staticmethod
    def _haystack_lines(tokenizer, spec, max_documents, max_tokens) -> list[list[int]]:
        lines: list[str] = []
        for text in load_texts(spec, max_documents):
            lines += [line + "\n" for line in text.split("\n") if line.strip()]
            if sum(map(len, lines)) >= 4 * max_tokens:  # a token is rarely under a quarter of a character
                break
        units = [ids for ids in tokenizer.encode_batch(lines) if ids]
        if not units:
            raise InputError(f"the haystack source {spec!r} has no text; point --haystack at text documents")
        return units

    def make_trial(self, length: int, depth: float, rng: np.random.RandomState) -> Trial:
        # Each trial reads the haystack from a random line, so trials of one cell differ.
        first = rng.randint(len(self.filler))
        return Trial(build_prompt(self.prefix, self.filler, self.needle, self.question, length, depth, first),
                     self.answer)

    def answer_tokens(self) -> int:
        return self._answer_tokens


def needle_found(output: str, answer: str) -> bool:
    return answer.strip().lower() in output.lower()
