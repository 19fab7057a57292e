"""RULER's two scores of a reply against a trial's answers (Hsieh et al. 2024, no LLM judge): an answer counts
when it occurs in the reply, ignoring case. Extra words in the reply cost nothing, so the generation budget
(the answers' own length plus a few tokens) is what keeps a model from listing everything it read."""

from __future__ import annotations


def recall(output: str, answers: list[str]) -> float:
    """The fraction of `answers` contained in `output` (RULER's string_match_all: every needle task, variable
    tracking, common and frequent words)."""
    text = output.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def any_answer(output: str, answers: list[str]) -> float:
    """1.0 when `output` contains any of `answers` (RULER's string_match_part: question answering, where
    several phrasings of one answer may be accepted)."""
    text = output.lower()
    return float(any(a.lower() in text for a in answers))
