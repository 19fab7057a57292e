"""Passkey, multi-key passkey and needle prompts: the needle sits at the requested depth, prompts fit the
length, the scorers accept exactly the right answer, and the grid's summary lengths follow the accuracies."""

import re

import numpy as np
import pytest

from ctxjax.data import ByteTokenizer
from ctxjax.evaluate import multikey
from ctxjax.evaluate.multikey import MultiKeyTask
from ctxjax.evaluate.needle import NeedleTask, needle_found
from ctxjax.evaluate.passkey import FILLER, KEY_SENTENCE, QUESTION, PasskeyTask, passkey_correct
from ctxjax.evaluate.retrieval import build_prompt, max_length_at, run_grid

TOKENIZER = ByteTokenizer()
LONGEST_UNIT = max(len(" " + s) for s in FILLER)


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("length", [300, 1000])
def test_passkey_prompt_puts_the_key_at_the_requested_depth(length, depth):
    task = PasskeyTask(TOKENIZER)
    trial = task.make_trial(length, depth, np.random.RandomState(0), key="48213")
    prompt = trial.prompt
    text = TOKENIZER.decode(prompt.tokens)
    assert trial.expected == "48213"
    assert length - LONGEST_UNIT < len(prompt.tokens) <= length
    assert text.endswith(QUESTION)
    # The key sentence starts exactly at needle_start, after filler_before tokens of filler.
    sentence = " " + KEY_SENTENCE.format(key="48213")
    needle = prompt.tokens[prompt.needle_start:prompt.needle_start + len(sentence)]
    assert TOKENIZER.decode(needle) == sentence
    assert text.count("48213") == 2
    # Depth: the filler before the key is within half a filler unit of depth x all filler.
    assert abs(prompt.filler_before - depth * prompt.filler_total) <= LONGEST_UNIT / 2
    assert prompt.needle_start == len(task.prefix) + prompt.filler_before


def test_passkey_length_shorter_than_the_template_is_refused_in_one_line():
    task = PasskeyTask(TOKENIZER)
    with pytest.raises(ValueError, match=r"cannot hold the template \(\d+ tokens without filler\)"):
        task.make_trial(100, 0.5, np.random.RandomState(0))


@pytest.mark.parametrize("output, correct", [
    ("48213", True), (" 48213. Remember it.", True), ("is 48213 and 11111", True),
    ("4821", False), ("482130", False), ("48214", False), ("", False), ("no digits", False),
    ("11111 then 48213", False), ("4821 3", False),
])
def test_passkey_scorer_accepts_exactly_the_right_key(output, correct):
    assert passkey_correct(output, "48213") is correct


def test_keys_have_the_requested_digits_and_vary():
    task = PasskeyTask(TOKENIZER, key_digits=5)
    rng = np.random.RandomState(0)
    keys = {task.random_key(rng) for _ in range(50)}
    assert len(keys) > 40 and all(len(k) == 5 and k[0] != "0" for k in keys)


def reading_completer(answer_up_to: int):
    """A fake model: answers with the key found in the prompt when the prompt is at most `answer_up_to`
    tokens long, else with a wrong number. Lets the grid logic be checked without a model."""
    def complete(prompts, max_new_tokens):
        out = []
        for tokens in prompts:
            text = TOKENIZER.decode(tokens)
            key = text.split("The pass key is ")[1].split(".")[0]
            out.append(f" {key}." if len(tokens) <= answer_up_to else " 7.")
        return out
    return complete


def test_grid_counts_trials_and_summarizes_the_largest_lengths_that_pass():
    task = PasskeyTask(TOKENIZER)
    result = run_grid(task.make_trial, passkey_correct, reading_completer(600), lengths=[200, 400, 600, 800],
                      depths=[0.0, 0.5, 1.0], trials=3, answer_tokens=8, batch_size=2, seed=0)
    assert [s["length"] for s in result["skipped"]] == [200]
    assert "cannot hold the template" in result["skipped"][0]["reason"]
    accuracy = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"]}
    assert accuracy == {(n, d): float(n <= 600) for n in (400, 600, 800) for d in (0.0, 0.5, 1.0)}
    assert all(c["trials"] == 3 for c in result["cells"])
    assert result["max_length_80"] == 600 and result["max_length_20"] == 600


def test_summary_lengths_need_every_depth_to_pass():
    cells = [{"length": 100, "accuracy": 1.0}, {"length": 100, "accuracy": 0.9},
             {"length": 200, "accuracy": 1.0}, {"length": 200, "accuracy": 0.5},
             {"length": 300, "accuracy": 0.3}, {"length": 300, "accuracy": 0.2}]
    assert max_length_at(cells, 0.8) == 100
    assert max_length_at(cells, 0.2) == 300
    assert max_length_at(cells, 0.95) is None


def test_needle_prompt_places_a_user_needle_in_the_haystack_and_scores_by_answer(tmp_path):
    (tmp_path / "hay.txt").write_text("alpha line one\nbeta line two\ngamma line three\n" * 20)
    task = NeedleTask(TOKENIZER, "The secret fruit is a mango.", "What is the secret fruit?", "mango",
                      f"text:{tmp_path}/*.txt", None, 400)
    trial = task.make_trial(400, 0.5, np.random.RandomState(0))
    text = TOKENIZER.decode(trial.prompt.tokens)
    assert len(trial.prompt.tokens) <= 400
    assert "\nThe secret fruit is a mango.\n" in text
    assert text.endswith("\nWhat is the secret fruit?\nAnswer:")
    assert abs(trial.prompt.depth - 0.5) < 0.1
    assert needle_found(" A Mango, I think", trial.expected) and not needle_found(" an apple", trial.expected)


def test_build_prompt_cycles_filler_from_the_first_unit():
    prompt = build_prompt([9], [[1], [2, 2], [3]], [7], [8], length=10, depth=0.0, first_unit=1)
    assert prompt.tokens == [9, 7, 2, 2, 3, 1, 2, 2, 3, 8]


def test_build_prompt_without_cycling_uses_each_unit_at_most_once():
    prompt = build_prompt([9], [[1], [2, 2]], [7], [8], length=20, depth=1.0, cycle=False)
    assert prompt.tokens == [9, 1, 2, 2, 7, 8]


def secret_numbers(text: str) -> dict[str, str]:
    """{name: key} of every key sentence in a multi-key prompt, in order."""
    pattern = re.escape(multikey.KEY_SENTENCE).replace(r"\{name\}", "([a-z-]+)").replace(r"\{key\}", r"(\d+)")
    return dict(re.findall(pattern, text))


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_multikey_prompt_hides_distinct_named_keys_and_asks_for_the_one_at_the_depth(depth):
    task = MultiKeyTask(TOKENIZER, distractors=3)
    trial = task.make_trial(1500, depth, np.random.RandomState(7))
    prompt, text = trial.prompt, TOKENIZER.decode(trial.prompt.tokens)
    assert 1500 - LONGEST_UNIT < len(prompt.tokens) <= 1500
    keys = secret_numbers(text)
    assert len(keys) == 4 and len(set(keys.values())) == 4 and all(len(k) == 5 for k in keys.values())
    asked = text.split("What is the secret number of ")[1].split("?")[0]
    assert keys[asked] == trial.expected and text.endswith(f"The secret number of {asked} is")
    sentence = " " + multikey.KEY_SENTENCE.format(name=asked, key=trial.expected)
    needle = prompt.tokens[prompt.needle_start:prompt.needle_start + len(sentence)]
    assert TOKENIZER.decode(needle) == sentence
    assert abs(prompt.depth - depth) < 0.05


def test_multikey_tells_reading_the_name_from_copying_a_number():
    """A model that copies the first number it saw scores near chance (1 in 4 keys); one that reads the name
    scores everything."""
    def answer_with(pick):
        return lambda prompts, _: [" " + pick(TOKENIZER.decode(p)) + "." for p in prompts]

    by_name = answer_with(
        lambda t: secret_numbers(t)[t.split("What is the secret number of ")[1].split("?")[0]])
    first_number = answer_with(lambda t: next(iter(secret_numbers(t).values())))
    task = MultiKeyTask(TOKENIZER, distractors=3)
    grid = dict(lengths=[300, 1000], depths=[0.5], trials=24, answer_tokens=8, batch_size=8, seed=0)
    reading = run_grid(task.make_trial, passkey_correct, by_name, **grid)
    copying = run_grid(task.make_trial, passkey_correct, first_number, **grid)
    assert reading["cells"][0]["accuracy"] == 1.0 and copying["cells"][0]["accuracy"] < 0.5
    assert reading["skipped"][0]["length"] == 300  # too short for the template and 3 distractors
    assert "cannot hold the template and 3 distractors" in reading["skipped"][0]["reason"]
