"""The study (`ctxjax study`): the quick scale end to end — every arm trained or evaluated, the report with
its fourteen verdicts and figures, a rerun that trains nothing — and the verdict rules on numbers made up to
hold or break a prediction."""

import json
import math
import os

import jax
import pytest

from ctxjax.cli import main
from ctxjax.errors import InputError
from ctxjax.study.arms import SCALES, arms
from ctxjax.study.report import write_report
from ctxjax.study.runner import run_study
from ctxjax.study.verdicts import Numbers, verdicts

QUICK = SCALES["quick"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    logs = []
    done = run_study(out, QUICK, devices=jax.devices()[:1], log=logs.append)
    return out, done, logs


def test_every_arm_is_trained_or_evaluated_and_costed(study):
    out, done, logs = study
    assert set(done) == {arm.name for arm in arms(QUICK)}
    L, X = QUICK.base_len, QUICK.extended_len
    for name, entry in done.items():
        if entry["arm"].trains:
            cost = json.load(open(os.path.join(out, name, "cost.json")))
            assert cost["finished"] and cost["tokens"] > 0 and cost["flops"] > 0 and cost["wall_s"] > 0
            assert set(entry["results"]["all"]["ppl"]["fixed_target"]) == {str(n) for n in QUICK.eval_lengths}
        else:  # zero-shot: one evaluation per length, each with its own scale factor
            assert sorted(entry["results"]) == list(QUICK.eval_lengths[1:])
    numbers = Numbers(done, L, out)
    # The bytes template of a passkey prompt fits 4L only (a multikey one nowhere): measured there.
    assert not math.isnan(numbers.passkey("ft-yarn", X)) and not math.isnan(numbers.passkey("rope", X))
    # Zero-shot PI at 4L is the RoPE model with its rotation stretched 4x: not the base model's numbers there.
    assert numbers.ppl("zs-pi", X) != numbers.ppl("rope", X)
    # PoSE trains the fine-tune's tokens in rows of L: the same tokens, fewer FLOPs.
    assert numbers.cost("ft-pose", "tokens") == numbers.cost("ft-pi", "tokens")
    assert numbers.cost("ft-pose", "flops") < numbers.cost("ft-pi", "flops")
    # Loss by position is logged while training past L.
    assert any(k.startswith("loss/pos_") for r in numbers.training_log("ft-yarn") for k in r)


def test_the_report_has_a_verdict_for_every_prediction_and_its_figures(study, tmp_path):
    out, done, _ = study
    path = str(tmp_path / "results.md")
    text = write_report(done, QUICK, out, path, "ctxjax study --quick")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "**" in line]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, 15))
    for figure in ("pretrain_ppl", "zero_shot_ppl", "fine_tune_ppl", "loss_by_position", "staged_loss",
                   "warm_up_loss", "fine_tune_passkey"):
        assert os.path.getsize(tmp_path / "results-figures" / f"{figure}.png") > 1000
        assert f"results-figures/{figure}.png" in text
    # Its own report is rewritten; anyone else's file is not.
    write_report(done, QUICK, out, path, "again")
    foreign = tmp_path / "notes.md"
    foreign.write_text("my notes\n")
    with pytest.raises(InputError, match="was not written by `ctxjax study`"):
        write_report(done, QUICK, out, str(foreign), "x")
    assert foreign.read_text() == "my notes\n"


def test_a_rerun_trains_and_evaluates_nothing_and_renders_the_report_again(study, capsys):
    out, _, _ = study
    logs = []
    done = run_study(out, QUICK, only=("ft-yarn",), devices=jax.devices()[:1], log=logs.append)
    assert logs == [] and set(done) == {"ft-yarn", "rope"}
    # The command: a scale other than the directory's is refused, before anything runs.
    with open(os.path.join(out, "scale.txt"), "w") as f:
        f.write("quick\n")
    assert main(["study", "--out", out, "--only", "rope"]) == 2
    assert "holds a quick study" in capsys.readouterr().err
    assert main(["study", "--out", out, "--quick", "--only", "nope,ropey"]) == 2
    assert "unknown study arm(s) ['ropey']" in capsys.readouterr().err
    # A report path holding someone else's file is refused before anything runs.
    foreign = os.path.join(out, "mine.md")
    with open(foreign, "w") as f:
        f.write("mine\n")
    assert main(["study", "--out", out, "--quick", "--only", "rope", "--report", foreign]) == 2
    assert "was not written by `ctxjax study`" in capsys.readouterr().err


def fake(ppl: dict, passkey: dict | None = None, cost: dict | None = None) -> dict:
    """run_study's output for arms with the given fixed-target perplexities {arm: {length: ppl}}."""
    done = {}
    for arm, values in ppl.items():
        results = {"ppl": {"fixed_target": {str(n): {"ppl": p} for n, p in values.items()},
                           "nonoverlapping": {str(n): {"ppl": p} for n, p in values.items()},
                           "per_position": {}},
                   "passkey": {"cells": [{"length": n, "depth": 0.5, "accuracy": a}
                                         for n, a in (passkey or {}).get(arm, {}).items()]}}
        done[arm] = {"arm": None, "cost": (cost or {}).get(arm, {}), "results": {"all": results}}
    return done


def verdict(done: dict, number: int) -> str:
    return next(v.verdict for v in verdicts(Numbers(done, 256, "/nonexistent")) if v.number == number)


@pytest.mark.parametrize("values, expected", [
    ({256: 10.0, 512: 400.0}, "reproduced"),  # perplexity x40 at 2L
    ({256: 10.0, 512: 10.5}, "not reproduced"),  # no break
])
def test_prediction_1_follows_the_perplexity_at_twice_the_length(values, expected):
    assert verdict(fake({"rope": values}), 1) == expected


def test_verdicts_say_what_is_missing():
    assert verdict(fake({"rope": {256: 10.0}}), 4) == "not measured"  # no zero-shot arms
    done = fake({"ft-pi": {1024: 9.0}, "ft-direct": {1024: 12.0}})  # no passkey numbers
    assert verdict(done, 3) == "reproduced (some numbers missing)"


def test_staged_growth_is_judged_on_perplexity_and_compute():
    ppl = {"scratch-4x": {1024: 10.0}, "staged-20": {1024: 10.2}, "staged-40": {1024: 12.0}}
    cost = {"scratch-4x": {"flops": 100.0}, "staged-20": {"flops": 70.0}, "staged-40": {"flops": 60.0}}
    assert verdict(fake(ppl, cost=cost), 12) == "partly"  # 20%: as good and cheaper; 40%: worse


def test_a_training_stopped_by_sigterm_stops_the_study_for_a_rerun(tmp_path, monkeypatch):
    import ctxjax.study.runner as runner

    calls = []

    def stopped(config, workdir, devices):  # what train_and_evaluate returns after a SIGTERM checkpoint
        calls.append(workdir)
        return {"final_step": 3, "last_step": QUICK.pretrain_steps, "stopped_at": 3, "loss": 5.0}

    monkeypatch.setattr(runner, "train_and_evaluate", stopped)
    logs = []
    assert run_study(str(tmp_path), QUICK, devices=jax.devices()[:1], log=logs.append) == {}
    assert calls == [str(tmp_path / "rope")] and "rerun the same command to resume it" in logs[-1]
    cost = json.load(open(tmp_path / "rope" / "cost.json"))
    assert cost["finished"] is False and cost["tokens"] == QUICK.pretrain_steps * QUICK.tokens_per_step
