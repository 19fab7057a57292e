"""The `retrieval:` source: documents are the evaluation's passkey / multikey prompts followed by their
answer, a function of (seed, index) alone, with a spec whose mistakes are one-line DataErrors; it mixes like
any source."""

import re

import numpy as np
import pytest

from ctxjax.data import ByteTokenizer, DataConfig, DataError, eval_source_spec, make_pipeline, open_source
from ctxjax.data.retrieval_source import RetrievalSpec, parse_spec
from ctxjax.data.retrieval_text import (FILLER, MULTIKEY_INTRO, MULTIKEY_QUESTION, MULTIKEY_SENTENCE, NAMES,
                                        PASSKEY_INTRO, PASSKEY_QUESTION, PASSKEY_SENTENCE)
from ctxjax.evaluate.multikey import MultiKeyTask
from ctxjax.evaluate.passkey import PasskeyTask

BYTES = ByteTokenizer()  # one token per byte: prompt text and training text compare character by character
ANSWER = re.compile(r" (\d+)\.$")


def texts(spec, n=None):
    source = open_source(spec)
    return [source.text(i) for i in range(n or len(source))]


# ---- spec ----
def test_spec_defaults_and_options():
    assert parse_spec("", "retrieval") == RetrievalSpec()
    parsed = parse_spec("multikey,passkey:chars=50-90:docs=7:digits=4-6:distractors=2:filler=random:seed=3",
                        "s")
    assert parsed == RetrievalSpec(tasks=("multikey", "passkey"), min_chars=50, max_chars=90, docs=7,
                                   min_digits=4, max_digits=6, distractors=2, filler="random", seed=3)
    assert parse_spec("chars=300", "s").min_chars == parse_spec("chars=300", "s").max_chars == 300
    assert len(open_source("retrieval:passkey:docs=12")) == 12


@pytest.mark.parametrize("arg, match", [
    ("needle", "tasks needle must be one or both of passkey, multikey"),
    ("passkey,passkey", "must be one or both"),
    ("passkey:size=3", "unknown option 'size=3'"),
    ("passkey:docs", "unknown option 'docs'"),
    ("passkey:docs=many", "'docs=many' does not give an integer"),
    ("passkey:chars=9-x", "does not give MIN-MAX"),
    ("passkey:chars=90-50", "needs 1 <= MIN <= MAX"),
    ("passkey:docs=0", "docs must be >= 1"),
    ("multikey:digits=1:distractors=20", "with as many distinct keys"),
    ("passkey:filler=shuffled", "filler=shuffled must be one of cycle, random"),
])
def test_bad_specs_are_one_line_errors_with_an_example(arg, match):
    with pytest.raises(DataError, match=match) as info:
        open_source(f"retrieval:{arg}")
    assert "\n" not in str(info.value) and "write e.g. retrieval:" in str(info.value)


# ---- determinism ----
def test_documents_are_a_function_of_seed_and_index():
    spec = "retrieval:passkey,multikey:docs=50"
    first, again = open_source(spec), open_source(spec)
    backwards = [again.text(i) for i in reversed(range(50))][::-1]  # random access: order does not matter
    assert [first.text(i) for i in range(50)] == backwards
    assert len(set(backwards)) == 50
    other_seed = texts(spec + ":seed=1")
    assert not set(other_seed) & set(backwards)
    assert first.fingerprint() == again.fingerprint() != open_source(spec + ":seed=1").fingerprint()
    assert first.fingerprint() != open_source("retrieval:passkey,multikey:docs=51").fingerprint()
    with pytest.raises(IndexError):
        first.text(50)


def test_lengths_keys_and_distances_cover_the_ranges():
    docs = texts("retrieval:passkey:chars=300-900:docs=200:digits=5-7")
    assert all(300 - len(FILLER[-1]) - 1 <= len(d) <= 900 for d in docs)
    assert {len(ANSWER.search(d).group(1)) for d in docs} == {5, 6, 7}
    # Where the key sits: from right after the intro to right before the question.
    distance = [len(d) - d.index("The pass key is") for d in docs]
    assert min(distance) < 120 and max(distance) > 650


# ---- the text is the evaluation's prompt plus its answer ----
def split_document(text, intro):
    """(sentences between the intro and the question, the question, the key) of `text` (ending in its
    answer)."""
    key = ANSWER.search(text).group(1)
    assert text.startswith(intro + " ")
    body, question = text[len(intro):-len(f" {key}.")].rsplit(" What is ", 1)
    sentences = re.findall(r" ([^.]+\.(?: Remember it\. \d+ is the pass key\.)?)", body)
    assert "".join(" " + s for s in sentences) == body
    return sentences, "What is " + question, key


def filler_cycles_from_the_first_sentence(sentences):
    filler = [s for s in sentences if s in FILLER]
    return filler == [FILLER[i % len(FILLER)] for i in range(len(filler))]


@pytest.mark.parametrize("i", range(6))
def test_a_passkey_document_is_the_evaluation_prompt_followed_by_the_key(i):
    doc = open_source("retrieval:passkey:chars=250-700").text(i)
    sentences, question, key = split_document(doc, PASSKEY_INTRO)
    assert question == PASSKEY_QUESTION and filler_cycles_from_the_first_sentence(sentences)
    needle = PASSKEY_SENTENCE.format(key=key)
    assert sentences.count(needle) == 1 and len([s for s in sentences if s not in FILLER]) == 1
    # The evaluation's prompt of the same length, with the key at the same place, is the document without its
    # answer.
    prompt_text = doc[:-len(f" {key}.")]
    filler_before = len(prompt_text.split(" " + needle)[0]) - len(PASSKEY_INTRO)
    filler_total = len(prompt_text) - len(PASSKEY_INTRO) - len(" " + needle) - len(" " + PASSKEY_QUESTION)
    task = PasskeyTask(BYTES, add_bos=False)
    depth = filler_before / filler_total if filler_total else 0.0
    trial = task.make_trial(len(prompt_text), depth, np.random.RandomState(0), key=key)
    assert BYTES.decode(trial.prompt.tokens) == prompt_text


@pytest.mark.parametrize("i", range(6))
def test_a_multikey_document_has_the_evaluation_prompts_parts_and_answers_the_asked_name(i):
    doc = open_source("retrieval:multikey:chars=350-900").text(i)
    prompt = BYTES.decode(MultiKeyTask(BYTES, add_bos=False).make_trial(len(doc) - 7, 0.5,
                                                                        np.random.RandomState(i)).prompt.tokens)
    pattern = (re.escape(MULTIKEY_SENTENCE).replace(r"\{name\}", "([a-z]+-[a-z]+)")
               .replace(r"\{key\}", r"(\d+)"))
    for text, with_answer in ((doc, True), (prompt + " 12345.", False)):
        sentences, question, key = split_document(text, MULTIKEY_INTRO)
        assert filler_cycles_from_the_first_sentence(sentences)
        named = [re.fullmatch(pattern, s).groups() for s in sentences if s not in FILLER]
        assert len(named) == 4 and len({n for n, _ in named}) == 4 and len({k for _, k in named}) == 4
        assert all(name in NAMES for name, _ in named)
        asked = re.fullmatch(re.escape(MULTIKEY_QUESTION).replace(r"\{name\}", "([a-z]+-[a-z]+)"),
                             question).group(1)
        assert asked in dict(named) and (not with_answer or dict(named)[asked] == key)


@pytest.mark.parametrize("task, intro", [("passkey", PASSKEY_INTRO), ("multikey", MULTIKEY_INTRO)])
def test_a_random_filler_draws_its_sentences_and_keeps_everything_else(task, intro):
    """filler=random: the same intro, needles, question and answer at about the same length, but filler
    sentences in no fixed order, so that the key's offset from the question follows no period."""
    spec = f"retrieval:{task}:chars=400-900:docs=20"
    cyclic = []
    for cycled, drawn in zip(texts(spec), texts(spec + ":filler=random")):
        (sentences, question, key), (drawn_sentences, drawn_question, drawn_key) = (
            split_document(cycled, intro), split_document(drawn, intro))
        assert (question, key) == (drawn_question, drawn_key)
        assert sorted(s for s in sentences if s not in FILLER) == sorted(s for s in drawn_sentences
                                                                         if s not in FILLER)
        assert abs(len(drawn) - len(cycled)) <= max(map(len, FILLER)) + 1
        cyclic.append(filler_cycles_from_the_first_sentence(drawn_sentences))
    assert not any(cyclic)
    assert open_source(spec).fingerprint() != open_source(spec + ":filler=random").fingerprint()


def test_tasks_alternate_by_index():
    docs = texts("retrieval:passkey,multikey:docs=6")
    assert [d.startswith(PASSKEY_INTRO) for d in docs] == [True, False] * 3


# ---- as a source: mixtures, pipeline, held-out split ----
def test_it_mixes_into_other_sources_and_goes_through_the_pipeline(tmp_path):
    (tmp_path / "a.txt").write_text("natural text")
    spec = f"mix:1*text:{tmp_path}/*.txt;2*retrieval:passkey:docs=3:chars=250-260"
    mixed = open_source(spec)
    assert len(mixed) == 1 + 6
    assert texts(spec)[1:] == [t for t in texts("retrieval:passkey:docs=3:chars=250-260") for _ in range(2)]
    pipe = make_pipeline(DataConfig(source=spec, tokenizer="bytes", prefetch=0), None, process_index=0,
                         process_count=1, num_epochs=1)
    tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in pipe.batches(2, 128)])
    text = bytes(t for t in tokens.tolist() if t < 256).decode()
    assert text.count(PASSKEY_QUESTION) == 6 and "natural text" in text
    # Synthetic documents hold nothing out: the held-out split is the natural parts'.
    assert eval_source_spec(DataConfig(source="mix:1*stdlib;1*retrieval:passkey")) == "mix:1*stdlib:eval"
    with pytest.raises(DataError, match="set data.eval_source"):
        eval_source_spec(DataConfig(source="retrieval:passkey"))
