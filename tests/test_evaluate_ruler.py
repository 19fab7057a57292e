"""RULER's tasks: every prompt has the promised length, depth and answer; RULER's scores on hand-made replies;
an oracle gets 100%, copying baselines get what theory says; bad lengths, tokenizers and task names are
skipped cells or one-line errors; `ctxjax eval --tasks ruler` writes the table and the plots."""

import collections
import io
import json
import re

import numpy as np
import pytest

from ctxjax.data import ByteTokenizer
from ctxjax.errors import InputError
from ctxjax.evaluate.config import RULER_TASKS, EvalConfig
from ctxjax.evaluate.progress import Progress
from ctxjax.evaluate.retrieval import build_prompt_with_others
from ctxjax.evaluate.ruler import any_answer, recall, run_ruler, task_specs
from ctxjax.evaluate.ruler import qa, tracking
from ctxjax.evaluate.ruler.report import section

TOKENIZER = ByteTokenizer()


class Terminal(io.StringIO):
    def isatty(self):
        return True


CONFIG = EvalConfig(tasks="ruler")
SPECS = task_specs(RULER_TASKS, TOKENIZER, CONFIG)
LENGTH = 1500
SLACK = 40  # a prompt is at most its length and short of it by less than one filler unit / word group / fact


def trial(task, depth=0.5, length=LENGTH, seed=0):
    depth = depth if SPECS[task].uses_depth else None
    return SPECS[task].make_trial(length, depth, np.random.RandomState(seed))


def text_of(t):
    return TOKENIZER.decode(t.prompt.tokens)


def needle_text(t, sentence):
    start = t.prompt.needle_start
    return TOKENIZER.decode(t.prompt.tokens[start:start + len(TOKENIZER.encode(sentence))])


def numbers_of(text):
    """{name: [numbers]} of every secret-number sentence, in order."""
    found = collections.defaultdict(list)
    for name, key in re.findall(r"The secret number of ([a-z-]+) is (\d+)\.", text):
        found[name].append(key)
    return found


@pytest.mark.parametrize("task", RULER_TASKS)
@pytest.mark.parametrize("length", [900, 2500])
def test_prompts_have_the_promised_length(task, length):
    for seed in range(3):
        n = len(trial(task, length=length, seed=seed).prompt.tokens)
        assert length - SLACK < n <= length, (task, n)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_needle_prompts_put_the_asked_needle_at_the_depth_and_ask_for_its_numbers(depth):
    for task in ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"):
        t = trial(task, depth)
        text, found = text_of(t), numbers_of(text_of(t))
        assert abs(t.prompt.depth - depth) < 0.05, task
        asked = re.search(r"numbers? of ([a-z, -]+?)\? ", text).group(1).replace(" and ", ", ").split(", ")
        first = f" The secret number of {asked[0]} is {t.answers[0]}."
        assert needle_text(t, first) == first, task
        if task == "niah_multivalue":
            assert len(asked) == 1 and len(set(t.answers)) == 4
            assert sorted(found[asked[0]]) == sorted(t.answers)
        else:
            assert [found[name] for name in asked] == [[a] for a in t.answers]
        keys = {"niah_single": 1, "niah_multikey": 4, "niah_multivalue": 4, "niah_multiquery": 4}[task]
        assert sum(map(len, found.values())) == keys, task


def test_variable_tracking_answers_are_exactly_the_variables_holding_the_value():
    for seed in range(3):
        t = trial("vt", seed=seed)
        text = text_of(t)
        value = re.search(r"assigned the value (\d+) in", text).group(1)
        holds = {}
        for name, source in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", text):
            holds[name] = holds[source[4:]] if source.startswith("VAR") else source  # sources come first
        assert sorted(n for n, v in holds.items() if v == value) == sorted(t.answers) and len(t.answers) == 5


def test_variable_tracking_distractor_chains_hold_other_values():
    task = tracking.VariableTrackingTask(TOKENIZER, chains=3, hops=2)
    t = task.make_trial(LENGTH, None, np.random.RandomState(1))
    values = re.findall(r"VAR [A-Z]{5} = (\d+)\.", text_of(t))
    assert len(values) == 3 == len(set(values)) and len(t.answers) == 3


@pytest.mark.parametrize("task, top", [("cwe", 10), ("fwe", 3)])
def test_word_tasks_ask_for_the_strictly_most_frequent_words(task, top):
    for length in (900, 3000):
        t = trial(task, length=length)
        listed = text_of(t).split(". ", 2)[-1] if task == "cwe" else text_of(t).split("appears. ")[1]
        counts = collections.Counter(listed.split(" Question:")[0].split())
        ranked = counts.most_common()
        assert {w for w, _ in ranked[:top]} == set(t.answers) and len(t.answers) == top
        assert ranked[top - 1][1] > ranked[top][1]  # no tie at the cut


def test_common_words_keep_rulers_frequencies_when_the_length_allows():
    t = trial("cwe", length=6000)
    counts = collections.Counter(text_of(t).split("times. ")[1].split(" Question:")[0].split())
    assert {counts[w] for w in t.answers} == {30} and set(counts.values()) == {30, 3}


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_qa_prompt_states_the_asked_fact_once_at_the_depth_among_distractors(depth):
    t = trial("qa", depth)
    text = text_of(t)
    person, attribute = re.search(r"Question: What is (.+?)'s (.+?)\?", text).groups()
    facts = re.findall(r"([A-Z][a-z]+ [A-Z][a-z]+)'s ([a-z ]+) is ([A-Za-z ]+)\.", text)
    asked = [f for f in facts if f[:2] == (person, attribute)]
    assert len(asked) == 1 and t.answers == [asked[0][2].split()[-1]] and len(facts) > 20
    fact = f" {person}'s {attribute} is {asked[0][2]}."
    assert needle_text(t, fact) == fact
    assert abs(t.prompt.depth - depth) < 0.05
    assert any(f[0] == person for f in facts if f != asked[0]) or any(f[1] == attribute for f in facts
                                                                      if f != asked[0])


def test_prompts_are_deterministic_from_the_seed():
    for task in RULER_TASKS:
        assert trial(task, seed=3).prompt.tokens == trial(task, seed=3).prompt.tokens
        assert trial(task, seed=3).prompt.tokens != trial(task, seed=4).prompt.tokens


@pytest.mark.parametrize("reply, score", [
    ("12345, 67890, 11111 and 22222", 1.0), ("12345 and 67890.", 0.5), ("", 0.0), ("1234", 0.0),
    ("0123456", 0.25),  # RULER's substring rule: a number inside a longer one counts
])
def test_recall_is_the_fraction_of_answers_in_the_reply(reply, score):
    assert recall(reply, ["12345", "67890", "11111", "22222"]) == score


def test_recall_ignores_case_and_any_answer_needs_one():
    assert recall(" kamidu, ZOREBE", ["kamidu", "zorebe", "bafuto"]) == pytest.approx(2 / 3)
    assert any_answer(" she was from LISBON.", ["Lisbon"]) == 1.0
    assert any_answer(" Porto", ["Lisbon", "Lisboa"]) == 0.0
    assert any_answer(" Lisboa", ["Lisbon", "Lisboa"]) == 1.0


class Answers:
    """A fake model: `pick(prompt text, trial answers) -> reply`, cut to the generation budget like a model's
    reply; records the batches it is given."""

    def __init__(self, pick, trials_by_prompt):
        self.pick, self.trials, self.calls = pick, trials_by_prompt, []

    def __call__(self, prompts, max_new_tokens):
        self.calls.append((len(prompts), max_new_tokens))
        replies = [self.pick(TOKENIZER.decode(p), self.trials.get(tuple(p))) for p in prompts]
        return [TOKENIZER.decode(TOKENIZER.encode(r)[:max_new_tokens]) for r in replies]


def recording_specs(names):
    """The tasks, with every trial remembered by its prompt, so an oracle can look up the answers."""
    seen = {}
    specs = task_specs(names, TOKENIZER, CONFIG)
    for spec in specs.values():
        def make_trial(length, depth, rng, make=spec.make_trial):
            t = make(length, depth, rng)
            seen[tuple(t.prompt.tokens)] = t.answers
            return t
        spec.make_trial = make_trial
    return specs, seen


GRID = dict(lengths=[300, 1000], depths=[0.0, 1.0], trials=3, seed=0)


def test_an_oracle_scores_everything_in_one_batch_per_task_and_length():
    specs, seen = recording_specs(RULER_TASKS)
    oracle = Answers(lambda text, answers: " " + ", ".join(answers) + ".", seen)
    terminal = Terminal()
    result = run_ruler(specs, oracle, TOKENIZER, **GRID, progress=Progress(terminal))
    # A bar per task over its lengths, skipped ones included.
    assert all(f"ruler {name}: 100%" in terminal.getvalue() for name in RULER_TASKS)
    assert "2/2 [" in terminal.getvalue() and "length/s" in terminal.getvalue()
    for name, task in result["tasks"].items():
        assert task["by_length"]["1000"] == 1.0 and set(task["by_length"].values()) == {1.0}, name
        assert [s["length"] for s in task["skipped"]] == ([] if name in ("niah_single", "qa") else [300])
        assert {c["depth"] for c in task["cells"]} == ({0.0, 1.0} if specs[name].uses_depth else {None})
    assert result["average"]["1000"] == {"score": 1.0, "tasks": 8} and result["mean"] == 1.0
    assert result["average"]["300"] == {"score": 1.0, "tasks": 2}
    # One call per measured (task, length), holding all its trials (3 per depth).
    per_call = [n for n, _ in oracle.calls]
    assert len(per_call) == 8 + 2 and per_call.count(6) == 5 + 2 and per_call.count(3) == 3  # vt, cwe, fwe


def first_match(pattern):
    return lambda text, answers: " " + re.findall(pattern, text)[0]


@pytest.mark.parametrize("task, pick, expected", [
    # The first number of a multi-value or multi-query prompt is always one of its 4 asked numbers.
    ("niah_multivalue", first_match(r"\d{5}"), 0.25),
    ("niah_multiquery", first_match(r"\d{5}"), 0.25),
    # The first variable of a one-chain prompt is one of the 5 asked.
    ("vt", first_match(r"VAR ([A-Z]{5})"), 0.2),
])
def test_copying_baselines_score_what_theory_says(task, pick, expected):
    result = run_ruler(task_specs([task], TOKENIZER, CONFIG), Answers(pick, {}), TOKENIZER, **GRID)
    assert result["tasks"][task]["by_length"]["1000"] == pytest.approx(expected)


def test_echoing_the_prompt_scores_only_what_the_budget_lets_it_copy():
    """Substring scoring would credit a reply that repeats the whole prompt; the budget (the answers' length
    plus a few tokens) cuts an echo to the task's opening words. Those hold no answer, except in cwe, where
    the budget reaches past the intro into the list: there the echo scores the common words it copied."""
    specs, seen = recording_specs(RULER_TASKS)
    echo = Answers(lambda text, answers: text, seen)
    result = run_ruler(specs, echo, TOKENIZER, **GRID)
    for name, task in result["tasks"].items():
        if name != "cwe":
            assert set(task["by_length"].values()) == {0.0}, name
    (cell,) = result["tasks"]["cwe"]["cells"]
    expected = []
    for tokens, answers in seen.items():
        if len(answers) == 10:  # cwe's trials
            copied = TOKENIZER.decode(tokens[:cell["answer_tokens"]]).split("times. ")[1].split()
            expected.append(len(set(copied) & set(answers)) / 10)
    assert cell["score"] == pytest.approx(np.mean(expected)) and 0 < cell["score"] < 1


def test_lengths_a_task_cannot_use_are_skipped_with_the_reason():
    refuse = {1000: "beyond the learned position table"}
    silent = Answers(lambda t, a: "", {})
    result = run_ruler(task_specs(["cwe", "niah_multiquery"], TOKENIZER, CONFIG), silent, TOKENIZER,
                       lengths=[300, 800, 1000], depths=[0.5], trials=1, seed=0,
                       too_long=lambda n, new_tokens: refuse.get(n))
    cwe = {s["length"]: s["reason"] for s in result["tasks"]["cwe"]["skipped"]}
    assert "cannot hold 10 common words appearing 4 times" in cwe[300] and "use lengths >= 730" in cwe[300]
    assert cwe[1000] == refuse[1000]
    multiquery = {s["length"]: s["reason"] for s in result["tasks"]["niah_multiquery"]["skipped"]}
    assert set(multiquery) == {300, 1000} and result["tasks"]["niah_multiquery"]["by_length"] == {"800": 0.0}
    assert any(line.startswith("- ruler cwe: skipped length 300: a prompt") for line in section(result))


class UpperlessTokenizer(ByteTokenizer):
    """Writes upper-case letters as '?': cannot represent variable names, nor names of people."""

    def encode(self, text):
        return super().encode("".join("?" if c.isupper() else c for c in text))


def test_a_tokenizer_that_cannot_write_a_task_skips_its_cells_with_the_reason():
    specs = task_specs(["vt", "qa", "fwe"], UpperlessTokenizer(), CONFIG)
    result = run_ruler(specs, Answers(lambda t, a: "", {}), UpperlessTokenizer(), lengths=[1000],
                       depths=[0.5], trials=1, seed=0)
    for task in ("vt", "qa", "fwe"):
        (skip,) = result["tasks"][task]["skipped"]
        assert "the tokenizer cannot represent" in skip["reason"] and "\n" not in skip["reason"], task


def test_a_subword_tokenizer_gets_exact_lengths_and_an_oracle_at_100_percent(tmp_path):
    """Byte-level BPE (pieces of uneven length, words split differently in context): same promises."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ctxjax.data import load_tokenizer
    from ctxjax.data.retrieval_text import FILLER

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    sample = " ".join([*FILLER, *(qa.FACT.format(person="Vera Holm", attribute=a, value=v[0])
                                   for a, v in qa.ATTRIBUTES.items())])
    bpe.train_from_iterator([sample] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(str(tmp_path))
    answers_of = {}

    def oracle(prompts, max_new_tokens):
        replies = [" " + ", ".join(answers_of[tuple(p)]) + "." for p in prompts]
        assert all(len(tokenizer.encode(r)) <= max_new_tokens for r in replies)
        return replies

    specs = task_specs(RULER_TASKS, tokenizer, CONFIG)
    for name, spec in specs.items():
        def make_trial(length, depth, rng, make=spec.make_trial):
            t = make(length, depth, rng)
            assert length - SLACK < len(t.prompt.tokens) <= length
            text = tokenizer.decode(t.prompt.tokens)
            assert all(a in text for a in t.answers)
            answers_of[tuple(t.prompt.tokens)] = t.answers
            return t
        spec.make_trial = make_trial
    result = run_ruler(specs, oracle, tokenizer, lengths=[1200], depths=[0.25, 0.75], trials=2, seed=0)
    assert result["average"]["1200"] == {"score": 1.0, "tasks": 8}


def test_ruler_alias_expands_and_an_unknown_task_is_one_line_listing_the_valid_names():
    assert EvalConfig(tasks="ppl,ruler,vt").tasks == ("ppl", *RULER_TASKS)
    refusal = r"must be a non-empty subset of .*'qa'.*\] or the sets ruler .*, short and encoder"
    with pytest.raises(InputError, match=refusal) as error:
        EvalConfig(tasks="ruler,bogus")
    assert "\n" not in str(error.value)


def test_multikey_distractors_still_share_the_placement():
    prompt = build_prompt_with_others([9], [[1], [2]], [7], [[5, 5]], [8], length=7, depth=1.0,
                                      rng=np.random.RandomState(0), what="x")
    assert sorted(prompt.tokens) == sorted([9, 1, 2, 5, 5, 7, 8]) and prompt.tokens[-2:] == [7, 8]
    with pytest.raises(InputError, match="cannot hold x"):
        build_prompt_with_others([9], [[1]], [7], [[5, 5]], [8], 4, 0.5, np.random.RandomState(0), "x")


def assert_valid_png(path):
    import matplotlib.image

    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[0] > 50


# --- end to end on a tiny random model (it scores ~0: this checks the plumbing and the outputs) ---

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    import hf_oracle as oracle
    from ctxjax import cli

    out = tmp_path_factory.mktemp("ruler") / "run"
    code = cli.main(["eval", "--hf", oracle.save(oracle.llama(vocab_size=258)), "--tokenizer", "bytes",
                     "--out", str(out), "--name", "tiny", "--tasks", "ruler", "--lengths", "700",
                     "--depths", "0.5", "--trials", "2"])
    assert code == 0
    return out


def test_eval_tasks_ruler_writes_the_table_and_the_plots(evaluated):
    results = json.load(open(evaluated / "results.json"))
    ruler = results["ruler"]
    assert list(ruler["tasks"]) == list(RULER_TASKS)
    assert ruler["average"]["700"]["tasks"] == 7 and ruler["mean"] is None  # cwe needs 730 tokens
    assert [s["length"] for t in ruler["tasks"].values() for s in t["skipped"]] == [700]
    assert all(c["trials"] == 2 for t in ruler["tasks"].values() for c in t["cells"])
    assert {"ruler_heatmap.png", "ruler_vs_length.png"} <= set(results["plots"])
    for name in ("ruler_heatmap.png", "ruler_vs_length.png"):
        assert_valid_png(evaluated / name)
    summary = open(evaluated / "summary.md").read()
    assert "## RULER" in summary and "| task | 700 |" in summary
    assert "| **average** | **0%** (7 tasks) |" in summary
    assert "| cwe (common words) | - |" in summary
    assert "ruler cwe: skipped length 700: a prompt of 700 tokens cannot hold" in summary


def test_compare_overlays_ruler_averages(evaluated, tmp_path):
    from test_evaluate_outputs import compare_with_a_copy

    compare_with_a_copy(evaluated, tmp_path)
    assert_valid_png(tmp_path / "cmp" / "ruler_vs_length.png")
    assert "eval/ruler/average/700" in open(tmp_path / "cmp" / "compare.md").read()
