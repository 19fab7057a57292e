"""Stage gates (ctxjax/train/gates.py): a gate that passes lets the run go on, one that fails stops it after
the checkpoint, extend_steps trains the stage longer and checks again, and all of it resumes."""

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from ctxjax import cli
from ctxjax.errors import GateFailed, InputError
from ctxjax.train import apply_overrides, load_config, train_and_evaluate
from ctxjax.train.configs import validate

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:tiny")
PPL16 = "eval/ppl/fixed_target/16"


def tiny(stage0=None, stage1=None, **overrides):
    """Two short stages (16 then 32 tokens) evaluated by fixed-target perplexity on a few windows."""
    config = load_config(TINY)
    config.log_every, config.export_dir, config.eval_at_stage_end = 1, "", True
    config.eval.update(tasks=("ppl",), ppl_methods=("fixed_target",), lengths=(16, 32), target_tokens=8,
                       max_windows=2, max_documents=4)
    config.stages = [dict(steps=2, seq_len=16, lr=3e-3, warmup_steps=1, **(stage0 or {})),
                     dict(steps=2, seq_len=32, lr=1e-3, **(stage1 or {}))]
    return apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])


def run(config, workdir, **kwargs):
    return train_and_evaluate(config, str(workdir), devices=jax.devices()[:1], **kwargs)


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def gate_records(workdir):
    return [r for r in records(workdir) if "gate/passed" in r]


def checkpoints(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


def test_a_passing_gate_goes_on_a_failing_one_stops_after_its_checkpoint_and_a_rerun_decides_again(tmp_path,
                                                                                                    caplog):
    caplog.set_level(logging.INFO, logger="ctxjax.train.metrics")
    passes = dict(gate=dict(metric="ppl/fixed_target", max=1e9))
    fails = dict(gate=dict(metric="ppl/fixed_target", length="seq_len", ratio_to="previous_seq_len", max=0.0))
    with pytest.raises(GateFailed) as failed:
        run(tiny(passes, fails), tmp_path)
    message = str(failed.value)
    assert isinstance(failed.value, InputError)  # `ctxjax train` prints it in one line and exits 2
    assert "\n" not in message
    assert "stage 1 (seq_len 32) gate failed at step 4: eval/ppl/fixed_target/32 / eval/ppl/fixed_target/16" \
           " = " in message
    assert "(needs <= 0)" in message and "checkpoint at step 4 is saved" in message
    assert checkpoints(tmp_path)[-1] == 4  # the stage end: nothing trained is lost
    assert re.search(r"stage 0 gate at step 2: eval/ppl/fixed_target/16 = [\d.]+ \(needs <= 1e\+09\): passed",
                     caplog.text)  # the progress line
    first = gate_records(tmp_path)
    assert [(r["step"], r["gate/stage"], r["gate/passed"]) for r in first] == [(2, 0, True), (4, 1, False)]
    assert first[0]["gate/ppl/fixed_target/16"] == next(r[PPL16] for r in records(tmp_path)
                                                        if r["step"] == 2 and PPL16 in r)
    # Rerun with the gate lowered: the stage end is evaluated again, and the run goes on (here: it is done).
    summary = run(tiny(passes, fails, **{"stages.1.gate.max": 1e9}), tmp_path)
    assert summary["start_step"] == 4 and summary["final_step"] == 4 == summary["last_step"]
    again = gate_records(tmp_path)
    assert [(r["step"], r["gate/passed"]) for r in again] == [(2, True), (4, True)]  # step 4's logged once
    assert sum(1 for r in records(tmp_path) if r["step"] == 4 and PPL16 in r) == 1


def test_extensions_train_more_steps_at_the_floor_lr_resume_inside_one_and_stop_when_used_up(tmp_path):
    never = dict(gate=dict(metric="ppl/fixed_target", length=16, max=1.0), extend_steps=2, max_extensions=2)
    interrupted = str(tmp_path / "interrupted")
    # Stage 0 ends at step 2, fails, trains steps 3-4, stopped after step 3: inside its first extension.
    only16 = {"eval.lengths": (16,)}
    assert run(tiny(never, **only16), interrupted, stop_after=3)["stopped_at"] == 3
    with pytest.raises(GateFailed, match="stage 0 .*gate failed at step 6 after 2 extension.*"
                                         "eval/ppl/fixed_target/16 = .* \\(needs <= 1\\).*max_extensions"):
        run(tiny(never, **only16), interrupted)
    assert [(r["step"], r["gate/extensions"], r["gate/passed"]) for r in gate_records(interrupted)] == \
        [(2, 0, False), (4, 1, False), (6, 2, False)]
    assert checkpoints(interrupted)[-1] == 6
    lrs = {r["step"]: r["lr"] for r in records(interrupted) if "lr" in r}
    np.testing.assert_allclose([lrs[s] for s in (3, 4, 5, 6)], 3e-4, rtol=1e-5)  # lr * min_lr_ratio
    values = [r["gate/ppl/fixed_target/16"] for r in gate_records(interrupted)]
    assert values[0] != values[1]

    # A threshold between the first two checks: fails at the stage end, passes after one extension, and the
    # run goes on to stage 1 two steps later than planned. The same steps as the interrupted run's.
    middle = (values[0] + values[1]) / 2
    bound = dict(max=middle) if values[1] < values[0] else dict(min=middle)
    once = dict(gate=dict(metric="ppl/fixed_target", length=16, **bound), extend_steps=2, max_extensions=2)
    straight = str(tmp_path / "straight")
    summary = run(tiny(once, **only16), straight)
    assert summary["final_step"] == summary["last_step"] == 6
    assert [(r["step"], r["gate/passed"]) for r in gate_records(straight)] == [(2, False), (4, True)]
    got = {r["step"]: r["loss"] for r in records(straight) if "loss" in r}
    want = {r["step"]: r["loss"] for r in records(interrupted) if "loss" in r}
    np.testing.assert_allclose([got[s] for s in (1, 2, 3, 4)], [want[s] for s in (1, 2, 3, 4)], rtol=1e-6)
    assert {r["step"]: r["seq_len"] for r in records(straight) if "loss" in r} == \
        {1: 16, 2: 16, 3: 16, 4: 16, 5: 32, 6: 32}


@pytest.mark.parametrize("stage0, overrides, message", [
    (dict(gate=dict(metric="passkey/acc", min=0.9)), {}, "gate metric 'passkey/acc' is not measured by "
     "eval.tasks=\\['ppl'\\].*it measures \\['ppl/fixed_target'\\]"),
    (dict(gate=dict(metric="ppl/fixed_target", max=9.0)), {"eval_at_stage_end": False},
     "stage 0 has a gate.*set --config.eval_at_stage_end=True"),
    (dict(gate=dict(metric="ppl/fixed_target", length=64, max=9.0)), {},
     "reads length\\(s\\) \\[64\\], which eval.lengths=\\[16, 32\\] does not list.*eval.lengths=16,32,64"),
    (dict(gate=dict(metric="ppl/fixed_target", max=9.0)), {"eval.lengths": None}, "eval.lengths=None"),
    (dict(gate=dict(metric="ppl/fixed_target")), {}, "sets no threshold"),
    (dict(gate=dict(metric="ppl/fixed_target", min=2.0, max=1.0)), {}, "min=2.0 > max=1.0"),
    (dict(gate=dict(metric="ppl/fixed_target", max="low")), {}, "max='low' must be a finite number"),
    (dict(gate=dict(metric="ppl/fixed_target", max=float("nan"))), {}, "must be a finite number"),
    (dict(gate=dict(metric="ppl/fixed_target", length=0, max=1.0)), {}, "length=0 must be a length in "
     "tokens"),
    (dict(gate=dict(metric="ppl/fixed_target", ratio_to="previous_seq_len", max=1.0)), {},
     "'previous_seq_len' but stage 0 has no stage before it"),
    (dict(gate=dict(metric="ppl/fixed_target", maximum=1.0)), {}, "unknown field\\(s\\) \\['maximum'\\]"),
    (dict(gate=dict(min=1.0)), {}, "needs metric='TASK/NAME'"),
    (dict(gate="ppl"), {}, "gate='ppl' must be a dict"),
    (dict(extend_steps=3), {}, "extend_steps=3 extends the stage when its gate fails, but the stage has no "
     "gate"),
    (dict(gate=dict(metric="ppl/fixed_target", max=1.0), extend_steps=0), {}, "extend_steps=0 must be"),
    (dict(gate=dict(metric="ppl/fixed_target", max=1.0), max_extensions=2), {}, "max_extensions=2 needs "
     "extend_steps"),
    (dict(gate=dict(metric="ppl/fixed_target", max=1.0), extend_steps=2, min_lr_ratio=0.0), {},
     "an extension would change nothing; set min_lr_ratio > 0"),
])
def test_bad_gates_are_one_line_errors_before_anything_trains(stage0, overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        validate(tiny(stage0, **overrides), 1)
    assert "\n" not in str(error.value)


def test_the_command_line_reports_a_bad_gate_in_one_line(tmp_path, capsys):
    code = cli.main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.eval_at_stage_end=True",
                     "--config.stages.1.gate={'metric': 'needle/acc', 'min': 0.5}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("ctxjax train: error: stage 1: gate metric 'needle/acc' is not measured")


def test_extensions_lengthen_their_stage_move_the_later_ones_and_train_at_the_floor_lr():
    from ctxjax.schedule import build_stages, learning_rate_schedule, stage_at

    raw = [dict(steps=4, seq_len=16, lr=1e-2, gate=dict(metric="ppl/fixed_target", max=9.0), extend_steps=3),
           dict(steps=2, seq_len=32, lr=1e-3)]
    stages = build_stages(raw, 64, 0.1, {"0": {"extensions": 2, "steps": 6}})
    assert [(s.start, s.end, s.extensions) for s in stages] == [(0, 10, 2), (10, 12, 0)]
    assert stages[0].max_extensions == 1  # the default once extend_steps is set
    assert stage_at(stages, 9).index == 0 and stage_at(stages, 10).index == 1
    lr = learning_rate_schedule(stages)
    np.testing.assert_allclose([float(lr(s)) for s in range(4, 10)], 1e-3, rtol=1e-6)
    assert float(lr(10)) == pytest.approx(1e-3)  # stage 1's peak, two extensions later


def test_a_gate_compares_a_value_or_a_ratio_a_nan_fails_and_a_missing_metric_is_one_line():
    from ctxjax.schedule import build_stages
    from ctxjax.train import gates

    raw = [dict(steps=1, seq_len=16, lr=1e-3),
           dict(steps=1, seq_len=32, lr=1e-3, gate=[dict(metric="passkey/acc", min=0.5),
                                                    dict(metric="eval/ppl/fixed_target", max=1.0,
                                                         ratio_to="previous_seq_len")])]
    stage = build_stages(raw, 64)[1]
    metrics = {"eval/passkey/acc/32": 0.5, "eval/ppl/fixed_target/32": 9.0, "eval/ppl/fixed_target/16": 10.0}
    assert [(r.value, r.passed) for r in gates.check(stage, metrics, 2)] == [(0.5, True), (0.9, True)]
    metrics["eval/passkey/acc/32"] = float("nan")
    assert [r.passed for r in gates.check(stage, metrics, 2)] == [False, True]
    with pytest.raises(InputError, match="the evaluation at step 2 gave no eval/ppl/fixed_target/16, which "
                                         "its gate reads"):
        gates.check(stage, {"eval/passkey/acc/32": 1.0, "eval/ppl/fixed_target/32": 9.0}, 2)
