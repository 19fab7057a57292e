"""Masked-language-model training through the staged schedule (data.objective='mlm' on a model.causal=False
model): the loss falls, a resumed run repeats the uninterrupted one exactly (the same masks), the stage-end
evaluation runs the encoder tasks, and the pairings that would train nonsense are refused in one line."""

import json
import os

import jax
import numpy as np
import pytest
from test_train import losses, tiny

from ctxjax import cli
from ctxjax.errors import InputError
from ctxjax.train import train_and_evaluate

MLM = {"model.causal": False, "model.vocab_size": 259, "data.tokenizer": "bytes+mask",
       "data.objective": "mlm",
       "data.mask_rate": 0.3, "export_dir": "",
       "stages": [dict(steps=10, seq_len=32, lr=1e-2, warmup_steps=1), dict(steps=4, seq_len=64, lr=3e-3)]}
STAGE_END_EVAL = {"eval_at_stage_end": True, "eval.tasks": ("encoder",), "eval.lengths": (16, 32, 128),
                  "eval.max_documents": 4, "eval.trials": 1, "eval.depths": (0.0, 1.0), "eval.key_digits": 2,
                  "eval.target_tokens": 8}


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mlm"))
    summary = train_and_evaluate(tiny(**MLM, **STAGE_END_EVAL), workdir, devices=jax.devices()[:1])
    return workdir, summary


def test_mlm_loss_falls_through_the_stages(mlm_run):
    workdir, summary = mlm_run
    assert summary["final_step"] == 14
    loss = losses(workdir)
    assert np.mean([loss[s] for s in (1, 2)]) > np.log(259) - 0.5  # a random model: about ln(vocabulary)
    assert np.mean([loss[s] for s in (13, 14)]) < np.mean([loss[s] for s in (1, 2)]) - 1.0
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert "loss/pos_32-64" in losses_at(records, 14)  # loss by position still measured
    evaluated = [r for r in records if "eval/mlm/acc/128" in r]
    assert len(evaluated) == 2 and all("eval/mlm_recall/acc/128" in r for r in evaluated)
    results = json.load(open(os.path.join(workdir, "eval", "step_14", "results.json")))
    assert set(results["mlm"]["by_length"]) == {"16", "32", "128"}
    assert [s["length"] for s in results["mlm_recall"]["skipped"]] == [16, 32]  # the probe needs ~70 bytes


def test_a_resumed_mlm_run_repeats_the_uninterrupted_one(mlm_run, tmp_path):
    reference, _ = mlm_run
    first = train_and_evaluate(tiny(**MLM), str(tmp_path), devices=jax.devices()[:1], stop_after=5)
    assert first["stopped_at"] == 5
    train_and_evaluate(tiny(**MLM), str(tmp_path), devices=jax.devices()[:1])
    want, got = losses(reference), losses(str(tmp_path))
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({**MLM, "model.causal": True}, "data.objective='mlm' trains an encoder, but the model is a decoder"),
    ({**MLM, "data.objective": "next_token"}, "the model is an encoder.*--config.data.objective=mlm"),
    ({**MLM, "data.tokenizer": "bytes"}, "no mask token.*'bytes\\+mask' instead of 'bytes'"),
    ({**MLM, "eval_at_stage_end": True}, "encoder.*eval tasks \\['ppl'\\].*--tasks encoder"),
])
def test_mismatched_objective_model_and_tokenizer_are_refused(overrides, message, tmp_path):
    with pytest.raises(InputError, match=message):
        train_and_evaluate(tiny(**overrides), str(tmp_path), devices=jax.devices()[:1])


def test_ctxjax_eval_of_an_encoder_workdir_runs_its_tasks_and_generate_refuses_it(mlm_run, tmp_path, capsys):
    workdir, _ = mlm_run
    out = tmp_path / "eval"
    assert cli.main(["eval", workdir, "--out", str(out), "--lengths", "16,128", "--max-documents", "2",
                     "--trials", "1", "--depths", "1", "--target-tokens", "8", "--mask-rate", "0.5"]) == 0
    results = json.load(open(out / "results.json"))
    assert set(results["eval_config"]["tasks"]) == {"mlm", "mlm_recall"}  # an encoder's default
    assert results["mlm"]["mask_rate"] == 0.5
    assert cli.main(["eval", workdir, "--tasks", "passkey", "--out", str(tmp_path / "no")]) == 2
    assert "--tasks encoder" in capsys.readouterr().err
    assert cli.main(["generate", workdir, "--prompt", "def"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an encoder" in err[0] and "does not generate" in err[0]


def losses_at(records, step):
    return next(r for r in records if r["step"] == step and "loss" in r)


def test_bert_extend_tiny_grows_its_learned_table_by_copying_and_trains_mlm(tmp_path):
    summary = train_and_evaluate(tiny("bert_extend"), str(tmp_path), devices=jax.devices()[:1])
    assert summary["final_step"] == 4 and np.isfinite(summary["loss"])
