"""Short-context regression: the verdict on hand-made results pairs, refused baselines, `--tasks short`, and
`ctxjax eval --baseline` end to end on a tiny model."""

import json

import hf_oracle as oracle
import pytest

from ctxjax import cli
from ctxjax.errors import InputError
from ctxjax.evaluate.baseline import (NO_REGRESSION, check_compatible, compare, parse_tolerance,
                                      verdict_lines)
from ctxjax.evaluate.config import EvalConfig


def results(ppl: dict, passkey: dict, max_seq_len=128, **model):
    """A results.json with sliding perplexity and passkey accuracy (one depth) by length."""
    return {"run": "r", "lengths": sorted({*map(int, ppl), *passkey}),
            "model": {"max_seq_len": max_seq_len, "family": "llama", "vocab_size": 258, "tokenizer": "abc",
                      **model},
            "eval_config": {"tasks": ["ppl", "passkey"], "source": "stdlib:eval"},
            "ppl": {"sliding": {str(n): {"ppl": v} for n, v in ppl.items()}},
            "passkey": {"cells": [{"length": n, "accuracy": a} for n, a in passkey.items()],
                        "max_length_80": None, "max_length_20": None}}


BEFORE = results({64: 10.0, 128: 8.0}, {64: 1.0, 128: 0.9})


def test_worse_beyond_tolerance_at_short_lengths_is_a_regression():
    after = results({64: 10.5, 128: 8.0, 256: 50.0}, {64: 0.6, 128: 0.9, 256: 0.0}, max_seq_len=512)
    verdict = compare(after, BEFORE, "base")
    regressed = [(r["metric"], r["length"]) for r in verdict["regressed"]]
    assert regressed == [("passkey/acc", 64), ("ppl/sliding", 64)]
    assert "passkey/acc/256" not in verdict["compared"]  # beyond the baseline's context: not its business
    assert verdict["verdict"] == "short-context regression in 2 of 4 metrics"
    lines = verdict_lines(verdict)
    assert lines[0].startswith("**Verdict: short-context regression")
    assert "- ppl/sliding at 64: 10 -> 10.5 (+5.0%)" in lines
    assert "- passkey/acc at 64: 100% -> 60% (-40 points)" in lines


def test_better_or_within_tolerance_is_no_regression():
    after = results({64: 10.1, 128: 7.0}, {64: 0.96, 128: 1.0})  # +1% < 2%, -4 points < 5
    verdict = compare(after, BEFORE, "base")
    assert verdict["verdict"] == NO_REGRESSION and len(verdict["compared"]) == 4
    assert verdict_lines(verdict)[0].startswith(f"**Verdict: {NO_REGRESSION}**")
    assert compare(results({256: 9.0}, {}), BEFORE, "base")["verdict"].startswith("not compared")
    strict = compare(after, BEFORE, "base", "ppl=0.005,acc=0.01")
    assert len(strict["regressed"]) == 2 and strict["tolerance"] == {"ppl": 0.005, "acc": 0.01}


def test_rulers_scores_are_compared_like_accuracies():
    def with_ruler(vt: dict):
        out = results({64: 10.0}, {})
        out["ruler"] = {"tasks": {"vt": {"by_length": vt, "cells": [], "skipped": []}},
                        "average": {n: {"score": v, "tasks": 1} for n, v in vt.items()}, "mean": None}
        return out

    verdict = compare(with_ruler({64: 0.5}), with_ruler({64: 0.9}), "base")
    assert {(r["metric"], r["length"]) for r in verdict["regressed"]} == {("ruler/vt", 64),
                                                                         ("ruler/average", 64)}


@pytest.mark.parametrize("model, message", [
    ({"family": "gpt2"}, "another model family"),
    ({"vocab_size": 32000}, "another vocabulary size"),
    ({"tokenizer": "def"}, "another tokenizer"),
])
def test_a_baseline_of_another_model_or_tokenizer_is_refused(model, message):
    other = results({64: 10.0}, {64: 1.0}, **model)
    with pytest.raises(InputError, match=message):
        check_compatible(BEFORE, other["model"], other["eval_config"], [64])


def test_a_baseline_without_shared_short_lengths_tasks_or_documents_is_refused():
    config = BEFORE["eval_config"]
    with pytest.raises(InputError, match="shares no length at or below its context"):
        check_compatible(BEFORE, BEFORE["model"], config, [256, 512])
    with pytest.raises(InputError, match="measured none of the tasks"):
        check_compatible(BEFORE, BEFORE["model"], {**config, "tasks": ["needle"]}, [64])
    with pytest.raises(InputError, match="pass --source stdlib:eval"):
        check_compatible(BEFORE, BEFORE["model"], {**config, "source": "text:x"}, [64])
    for bad in ("ppl=x", "loss=0.1", "acc=5"):
        with pytest.raises(InputError, match="tolerance"):
            parse_tolerance(bad)


def test_tasks_short_is_the_retrieval_tasks_and_perplexity_at_the_original_context():
    config = EvalConfig(tasks=("short",))
    assert config.tasks == ("ppl", "passkey", "multikey", "needle") and config.short
    assert config.resolved_lengths(4096, original_context=1024) == (256, 512, 1024)
    assert config.resolved_lengths(1024) == (256, 512, 1024)
    assert EvalConfig(tasks="short,ppl", lengths=(64,)).resolved_lengths(1024) == (64,)


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    """A tiny Llama (context 64) and the cheapest evaluation: non-overlapping perplexity at 32 and 64."""
    root = tmp_path_factory.mktemp("baseline")
    (root / "a.txt").write_text("def f(x):\n    return x + 1\n" * 9)
    llama = oracle.save(oracle.llama(vocab_size=258))
    argv = ["eval", "--hf", llama, "--tokenizer", "bytes", "--tasks", "ppl", "--lengths", "32,64",
            "--ppl-methods", "nonoverlapping", "--source", f"text:{root}/*.txt"]
    assert cli.main(argv + ["--out", str(root / "before")]) == 0
    return argv, root


def test_eval_baseline_end_to_end_opens_the_summary_with_the_verdict(tiny_eval, capsys):
    argv, root = tiny_eval
    assert cli.main(argv + ["--out", str(root / "same"), "--baseline", str(root / "before")]) == 0
    printed = capsys.readouterr().out
    assert NO_REGRESSION in printed and "eval/baseline/regressed: 0" in printed
    after = json.load(open(root / "same" / "results.json"))
    assert after["baseline"]["verdict"] == NO_REGRESSION
    assert after["baseline"]["compared"] == ["ppl/nonoverlapping/32", "ppl/nonoverlapping/64"]
    summary = open(root / "same" / "summary.md").read().splitlines()
    assert summary[2].startswith(f"**Verdict: {NO_REGRESSION}**")
    ppl = after["throughput"]["tasks"]["ppl"]  # throughput recorded, and in the summary
    assert ppl["tokens_scored"] > 0 and ppl["wall_s"] > 0 and ppl["scored_per_s"] > 0
    assert "## Throughput" in "\n".join(summary)

    # A baseline whose perplexity was much lower at 32 tokens: the same model now regressed there.
    better = json.load(open(root / "before" / "results.json"))
    better["ppl"]["nonoverlapping"]["32"]["ppl"] /= 2
    (root / "better").mkdir()
    json.dump(better, open(root / "better" / "results.json", "w"))
    assert cli.main(argv + ["--out", str(root / "worse"), "--baseline", str(root / "better")]) == 0
    summary = open(root / "worse" / "summary.md").read()
    assert "**Verdict: short-context regression in 1 of 2 metrics**" in summary
    assert "- ppl/nonoverlapping at 32: " in summary and "(+100.0%)" in summary


def test_eval_refuses_an_incompatible_baseline_in_one_line(tiny_eval, capsys):
    argv, root = tiny_eval
    other = json.load(open(root / "before" / "results.json"))
    other["model"]["tokenizer"] = "0" * 40
    (root / "other").mkdir()
    json.dump(other, open(root / "other" / "results.json", "w"))
    for baseline, message in ((root / "other", "another tokenizer"),
                              (root / "missing", "holds no results.json")):
        assert cli.main(argv + ["--out", str(root / "x"), "--baseline", str(baseline)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
