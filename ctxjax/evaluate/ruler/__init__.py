"""RULER's core synthetic tasks (Hsieh et al. 2024), native: prompts assembled from token ids at exact lengths
(and depths), greedy decoding through the evaluation's completer, RULER's scores. See docs/evaluation.md.

| task | what the reply must hold | score |
|---|---|---|
| niah_single | the one named number | recall |
| niah_multikey | the asked number among 3 other named numbers | recall |
| niah_multivalue | all 4 numbers of one name | recall |
| niah_multiquery | the numbers of 4 names | recall |
| vt | the 5 variables of a chain of assignments | recall |
| cwe | the 10 most common words of a list | recall |
| fwe | the 3 most frequent words of a Zipf-distributed text | recall |
| qa | the value of the asked fact among distractor facts | contains the answer |
"""

from __future__ import annotations

from ctxjax.evaluate.config import RULER_TASKS
from ctxjax.evaluate.ruler.aggregation import CommonWordsTask, FrequentWordsTask
from ctxjax.evaluate.ruler.common import RulerTrial, TaskSpec
from ctxjax.evaluate.ruler.grid import run_ruler, run_task
from ctxjax.evaluate.ruler.needles import MultiQueryTask, MultiValueTask, SingleAnswer
from ctxjax.evaluate.ruler.qa import FactQATask
from ctxjax.evaluate.ruler.scoring import any_answer, recall
from ctxjax.evaluate.ruler.tracking import VariableTrackingTask

# name -> (task from (tokenizer, eval config), scorer, whether prompts vary by depth)
_BUILDERS = {
    "niah_single": (lambda tok, c: SingleAnswer(tok, c.key_digits, 0, c.add_bos), recall, True),
    "niah_multikey": (lambda tok, c: SingleAnswer(tok, c.key_digits, c.distractors, c.add_bos), recall, True),
    "niah_multivalue": (lambda tok, c: MultiValueTask(tok, c.key_digits, add_bos=c.add_bos), recall, True),
    "niah_multiquery": (lambda tok, c: MultiQueryTask(tok, c.key_digits, add_bos=c.add_bos), recall, True),
    "vt": (lambda tok, c: VariableTrackingTask(tok, key_digits=c.key_digits, add_bos=c.add_bos), recall,
           False),
    "cwe": (lambda tok, c: CommonWordsTask(tok, add_bos=c.add_bos), recall, False),
    "fwe": (lambda tok, c: FrequentWordsTask(tok, add_bos=c.add_bos), recall, False),
    "qa": (lambda tok, c: FactQATask(tok, add_bos=c.add_bos), any_answer, True),
}
assert tuple(_BUILDERS) == RULER_TASKS


def task_specs(names, tokenizer, eval_config) -> dict[str, TaskSpec]:
    """The grid's view of each named task. A task that cannot be set up for this tokenizer (it cannot write
    the task's text) still appears: every length of it is skipped with the reason."""
    specs = {}
    for name in names:
        build, score, uses_depth = _BUILDERS[name]
        try:
            make_trial = build(tokenizer, eval_config).make_trial
        except ValueError as error:
            make_trial = _refuse(str(error))
        specs[name] = TaskSpec(make_trial, score, uses_depth)
    return specs


def _refuse(reason: str):
    def make_trial(length, depth, rng):
        raise ValueError(reason)
    return make_trial


__all__ = ["RULER_TASKS", "RulerTrial", "TaskSpec", "any_answer", "recall", "run_ruler", "run_task",
           "task_specs"]
