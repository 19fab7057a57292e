"""Faults as they happen to real runs, in real `ctxjax train` processes: kill -9 while a checkpoint is written
and while the export is written (tests/faults/sitecustomize.py pulls the trigger at that exact moment), Ctrl-C
once (save and stop) and twice (stop at once). After each, rerunning the command gives what an uninterrupted
run gives."""

import json
import os
import signal
import subprocess

import jax
import numpy as np
import pytest
from test_train import losses, tiny
from test_train_processes import CONFIG, CTXJAX, wait_until_logged

from ctxjax import cli
from ctxjax.checkpoint import load_for_inference
from ctxjax.commands import train as train_command
from ctxjax.errors import EXIT_INTERRUPTED
from ctxjax.train import train_and_evaluate
from ctxjax.train.stopping import StopRequests

FAULTS = os.path.join(os.path.dirname(__file__), "faults")
# One device, as the in-process runs below use; every override the reference run uses too.
OVERRIDES = {"log_every": 1, "checkpoint.async_save": True}


def _start(workdir, fault: str = "", extra=()):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    if fault:
        env.update(CTXJAX_FAULT=fault, PYTHONPATH=os.pathsep.join([FAULTS, env.get("PYTHONPATH", "")]))
    args = [f"--config.{k}={v!r}" for k, v in OVERRIDES.items()] + list(extra)
    return subprocess.Popen([CTXJAX, "train", "--config", CONFIG, "--workdir", str(workdir), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _resume(workdir):
    return train_and_evaluate(tiny(**OVERRIDES), str(workdir), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _resume(workdir)
    return workdir


def _same_run(workdir, reference):
    want, got = losses(reference), losses(workdir)
    assert sorted(got) == sorted(want) == list(range(1, 8))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6)
    ours, theirs = load_for_inference(str(workdir))[1], load_for_inference(str(reference))[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)


def test_kill_9_while_a_checkpoint_is_written_costs_only_the_steps_since_the_last_one(tmp_path,
                                                                                      uninterrupted):
    process = _start(tmp_path, fault="checkpoint:5")
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-2000:]
    summary = _resume(tmp_path)
    assert summary["start_step"] in (3, 5)  # step 5 if its write had finished before the kill, else step 3
    assert summary["final_step"] == 7
    _same_run(tmp_path, uninterrupted)
    # no half-written leftovers
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if not n.isdigit()]


def test_kill_9_while_exporting_leaves_no_half_export_and_the_rerun_writes_it(tmp_path, uninterrupted):
    process = _start(tmp_path, fault="export")
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-2000:]
    assert not (tmp_path / "hf").exists()  # the export appears whole or not at all
    assert [n for n in os.listdir(tmp_path) if n.startswith(".hf.tmp-")]  # what the kill left behind...
    summary = _resume(tmp_path)  # every step is done: the rerun only exports
    assert summary["start_step"] == 7 and summary["export_dir"] == str(tmp_path / "hf")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hf.tmp-")]  # ...is gone
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "ctxjax_export.json", "model.safetensors"]
    _same_run(tmp_path, uninterrupted)


def test_ctrl_c_saves_and_stops_like_sigterm(tmp_path):
    long = "[{'steps': 10000, 'seq_len': 16, 'lr': 0.001}]"
    process = _start(tmp_path, extra=[f"--config.stages={long}", "--config.export_dir=''"])
    wait_until_logged(process, tmp_path / "metrics.jsonl")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "Ctrl-C: saving a checkpoint" in err and "Traceback" not in err
    stopped = json.loads(out[out.index("{"):])["stopped_at"]
    assert 3 <= stopped < 10000 and os.listdir(tmp_path / "checkpoints") == [str(stopped)]


def test_a_second_ctrl_c_stops_at_once_and_the_command_says_so_in_one_line(monkeypatch, capsys):
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # the first: the loop saves after this step and stops
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: no waiting for the save

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "run", interrupted)
    assert cli.main(["train", "--config", CONFIG, "--workdir", "unused"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ctxjax train: interrupted"
