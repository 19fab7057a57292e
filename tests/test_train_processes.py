"""Training as separate processes: SIGTERM on a preemptible VM, and two JAX processes (multi-host) that
together train exactly like one process with the same devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from test_train import losses, tiny

from ctxjax.train import train_and_evaluate

CTXJAX = os.path.join(os.path.dirname(sys.executable), "ctxjax")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:tiny")


def wait_until_logged(process, metrics, lines: int = 3) -> None:
    """Until a training process has logged `lines` steps to `metrics` (so it is past start-up and
    compilation), failing if it exits or takes 4 minutes."""
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    stages = "[{'steps': 10000, 'seq_len': 16, 'lr': 0.001}]"
    process = subprocess.Popen([CTXJAX, "train", "--config", CONFIG, "--workdir", str(tmp_path),
                                f"--config.stages={stages}", "--config.log_every=1",
                               "--config.export_dir=''"],
                               env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_logged(process, tmp_path / "metrics.jsonl")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    stopped = json.loads(out[out.index("{"):])["stopped_at"]
    assert 3 <= stopped < 10000
    assert os.listdir(tmp_path / "checkpoints") == [str(stopped)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
    overrides = {"mesh.data": 2, "mesh.fsdp": 2, "data.num_shards": 2, "export_dir": "",
                 "stages": [dict(steps=2, seq_len=16, lr=3e-3), dict(steps=2, seq_len=32, lr=1e-3)]}
    single = str(tmp_path / "single")
    train_and_evaluate(tiny(**overrides), single, devices=jax.devices()[:4])

    multi = str(tmp_path / "multi")
    port = _free_port()
    args = [f"--config.{k}={v!r}" for k, v in overrides.items()] + ["--config.log_every=1"]
    processes = [subprocess.Popen([CTXJAX, "train", "--config", CONFIG, "--workdir", multi,
                                   "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i), *args],
                                  env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    for p in processes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    want, got = losses(single), losses(multi)
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], atol=1e-5)
