"""No command loses a user's work: damaged checkpoints fall back to the newest readable step, nothing a user
made is ever replaced or deleted, what an interrupted write leaves is cleaned up, and a full disk or an
unwritable directory is one line before anything is compiled. docs/reliability.md describes each guarantee;
the faults that need a real process (kill -9, Ctrl-C) are in test_reliability_processes.py."""

import errno
import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from test_train import losses, tiny

from ctxjax import cli, fs
from ctxjax.checkpoint import Checkpointer, load_for_inference
from ctxjax.data import make_pipeline
from ctxjax.errors import CheckpointDamaged, InputError, warn_once
from ctxjax.train import train_and_evaluate
from ctxjax.train.metrics import MetricsWriter

ONE_DEVICE = jax.devices()[:1]
DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no process has it


def snapshot(path) -> dict:
    """Every file under `path` with its size and contents: what "untouched" means below."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            with open(file, "rb") as f:
                out[os.path.relpath(file, path)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A whole tiny run (checkpoints 3, 5, 7, export in hf/) and its losses."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)
    return workdir


def damage(workdir, step: int, kind: str) -> None:
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    if kind == "truncated array file":
        biggest = max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)
        with open(biggest, "r+b") as f:
            f.truncate(100)
    elif kind == "no manifest.ocdbt":
        os.remove(f"{step_dir}/state/manifest.ocdbt")
    elif kind == "no _METADATA":
        os.remove(f"{step_dir}/state/_METADATA")
    elif kind in ("garbage meta", "garbage data"):
        with open(f"{step_dir}/{kind.split()[1]}/metadata", "w") as f:
            f.write("{not json")
    elif kind == "empty step directory":
        shutil.rmtree(step_dir)
        os.makedirs(step_dir)


KINDS = {"truncated array file": "state: OUT_OF_RANGE",
         "no manifest.ocdbt": "state/manifest.ocdbt is missing",
         "no _METADATA": "state/_METADATA is missing", "garbage meta": "(meta: ", "garbage data": "(data: ",
         "empty step directory": "(the step directory: it is empty)"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_latest_checkpoint_costs_a_warning_and_loads_the_previous_step(kind, finished, tmp_path,
                                                                                 caplog):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    damage(workdir, 7, kind)
    with caplog.at_level(logging.WARNING):
        cfg, params, _, _ = load_for_inference(workdir)
    assert f"checkpoint step 7 in {workdir} is damaged" in caplog.text and KINDS[kind] in caplog.text
    _, want, _, _ = load_for_inference(finished, 5)
    jax.tree.map(np.testing.assert_array_equal, params, want)
    with pytest.raises(CheckpointDamaged, match=f"checkpoint step 7 in {workdir} is damaged") as error:
        load_for_inference(workdir, 7)  # the step asked for: no fallback, one line naming it
    assert error.value.step == 7 and "\n" not in str(error.value)


@pytest.fixture(scope="module")
def stopped_at_5(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("stopped"))
    train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE, stop_after=5)
    return workdir


@pytest.mark.parametrize("kind", ["truncated array file", "empty step directory"])
def test_training_resumes_from_the_newest_readable_step_and_sets_the_damaged_one_aside(
        kind, stopped_at_5, finished, tmp_path, caplog):
    workdir = str(tmp_path / "w")
    shutil.copytree(stopped_at_5, workdir)
    damage(workdir, 5, kind)
    damaged = snapshot(os.path.join(workdir, "checkpoints", "5"))
    with caplog.at_level(logging.WARNING):
        summary = train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)
    assert summary["start_step"] == 3 and summary["final_step"] == 7
    assert "checkpoint step 5" in caplog.text and "moved to" in caplog.text
    # Never deleted: moved out of the way, so that the resumed run could save step 5 again.
    assert snapshot(os.path.join(workdir, "damaged_checkpoints", "5")) == damaged
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "5", "7"]
    want, got = losses(finished), losses(workdir)
    np.testing.assert_allclose([got[s] for s in range(1, 8)], [want[s] for s in range(1, 8)], rtol=1e-6)


def test_when_no_checkpoint_reads_one_line_names_each_step_and_nothing_is_touched(finished, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    for step in (3, 5, 7):
        damage(workdir, step, "garbage meta")
    before = snapshot(workdir)
    with pytest.raises(InputError, match="no checkpoint in .* can be read .*step 7.*step 5.*step 3.*nothing "
                                         "was deleted") as error:
        train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)
    assert "\n" not in str(error.value)
    assert snapshot(workdir) == before


def test_a_torn_last_line_of_the_metrics_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n{"step": 3, "lo')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        MetricsWriter(str(tmp_path), total_steps=10, start_step=2).close()
    assert path.read_text() == '{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n'
    assert f"{path}: dropped line(s) 3" in caplog.text


# ---- nothing a user made is replaced, held or written into ----

def _one_line_refusal(capsys, argv, *messages):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"ctxjax {argv[0]}: error: ") and all(m in err[-1] for m in messages), err


@pytest.mark.parametrize("out, message", [
    (lambda w: w, "holds"),  # the work directory itself
    (lambda w: os.path.dirname(w), "holds"),  # a directory holding it (and its siblings)
    (lambda w: os.path.join(w, "checkpoints"), "is a work directory's checkpoints"),
    (lambda w: os.path.join(w, "checkpoints", "9"), "is inside"),
    (lambda w: os.path.join(os.path.dirname(w), "mine"), "is not an unchanged ctxjax export"),
])
def test_export_overwrite_never_replaces_what_ctxjax_did_not_write(out, message, finished, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    os.makedirs(tmp_path / "mine")
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "sibling.txt").write_text("mine")
    before = snapshot(tmp_path)
    _one_line_refusal(capsys, ["export", "--workdir", workdir, "--out", out(workdir), "--overwrite"], message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("export_dir, message", [
    (".", "holds"), ("checkpoints", "is a work directory's checkpoints"),
    ("tokenizer", "is a work directory's"),
    ("ABSOLUTE", "is not empty"),
])
def test_the_export_at_the_end_of_training_is_checked_before_training(export_dir, message, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    export_dir = str(mine) if export_dir == "ABSOLUTE" else export_dir
    workdir = str(tmp_path / "w")
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:tiny")
    _one_line_refusal(capsys, ["train", "--config", config, "--workdir", workdir,
                               f"--config.export_dir={export_dir!r}"], f"--config.export_dir={export_dir!r}",
                      message)
    assert snapshot(mine) == {"notes.txt": b"mine"}
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*"))  # refused before any step


def test_a_rerun_replaces_its_own_export_but_not_one_a_user_changed(finished, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)  # finished: re-exports to its own hf/
    (tmp_path / "w" / "hf" / "README.md").write_text("my model card")
    with pytest.raises(InputError, match="README.md added since it was written"):
        train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)
    assert (tmp_path / "w" / "hf" / "README.md").read_text() == "my model card"


# ---- what interrupted writes leave behind ----

def _stale(directory, name: str, is_dir: bool) -> str:
    path = os.path.join(directory, fs.temp_prefix(name).replace(f"-{os.getpid()}-", f"-{DEAD_PID}-") + "x")
    os.makedirs(path) if is_dir else open(path, "w").close()
    return path


def test_temporaries_of_dead_writers_are_removed_and_a_live_writers_are_kept(tmp_path):
    dead = _stale(tmp_path, "hf", is_dir=True)
    live = os.path.join(tmp_path, fs.temp_prefix("hf") + "y")  # this process's: it may still be writing
    os.makedirs(live)
    fs.write_directory_atomically(str(tmp_path / "hf"), lambda d: open(os.path.join(d, "a"), "w").close())
    assert not os.path.exists(dead) and os.path.exists(live) and os.listdir(tmp_path / "hf") == ["a"]


def test_a_kill_between_the_two_renames_of_a_replacement_puts_the_old_directory_back(tmp_path):
    stale = _stale(tmp_path, "hf", is_dir=True)  # the old export, moved aside, then the process died
    os.makedirs(os.path.join(stale, "hf"))
    with open(os.path.join(stale, "hf", "config.json"), "w") as f:
        f.write("old")

    def fails(directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        fs.write_directory_atomically(str(tmp_path / "hf"), fails)
    assert (tmp_path / "hf" / "config.json").read_text() == "old"  # the previous export is back, whole
    assert os.listdir(tmp_path) == ["hf"]


def test_a_full_disk_leaves_no_temporary_file_behind(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.file = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(fs.os, "fdopen", FullDisk)
    with pytest.raises(OSError):
        fs.write_atomically(str(tmp_path / "file"), b"0123456789" * 10)
    assert os.listdir(tmp_path) == []  # no half-written temporary beside it


def test_the_token_cache_cleans_up_after_a_killed_run_and_a_full_disk_does_not_stop_training(
        tmp_path, monkeypatch, caplog):
    from ctxjax.data import documents

    os.makedirs(tmp_path / "token_cache")
    stale = _stale(tmp_path / "token_cache", "x.npz", is_dir=False)  # what a killed run left half-written

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(documents, "write_atomically", full)
    with caplog.at_level(logging.WARNING):
        pipe = make_pipeline(dict(source="stdlib", tokenizer="bytes", max_documents=3, prefetch=0),
                             str(tmp_path))
    pipe.next_batch(2, 16)  # the run goes on without the cache
    pipe.close()
    assert "cannot cache tokens" in caplog.text and "No space left on device" in caplog.text
    assert os.listdir(tmp_path / "token_cache") == [] and not os.path.exists(stale)


def test_a_full_disk_at_a_checkpoint_is_one_line_saying_where_a_rerun_resumes(finished, tmp_path,
                                                                              monkeypatch):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished, workdir)
    with Checkpointer(workdir, async_save=False) as checkpointer:
        state = {"params": {"w": np.zeros(3, np.float32)}}

        def full(*args, **kwargs):
            raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database: Failed '
                             'writing')

        monkeypatch.setattr(checkpointer._manager, "save", full)
        with pytest.raises(InputError, match="checkpoint step 9 could not be written to .*: the disk is "
                                             "full; free space .* and rerun: the run resumes from step 7"):
            checkpointer.save(9, state, data_state={}, meta={}, force=True)


# ---- checked before anything compiles ----

@pytest.mark.parametrize("make, message", [
    (lambda w: open(w, "w").close(), "the work directory"),
    (lambda w: (os.makedirs(w), open(os.path.join(w, "checkpoints"), "w").close()),
     "the checkpoints directory"),
])
def test_a_work_directory_that_is_a_file_is_one_line(make, message, tmp_path):
    workdir = str(tmp_path / "w")
    make(workdir)
    with pytest.raises(InputError, match=f"{message} .* is a file, not a directory"):
        train_and_evaluate(tiny(), workdir, devices=ONE_DEVICE)


def test_an_unwritable_work_directory_is_found_before_compiling(tmp_path, monkeypatch):
    def refused(*args, **kwargs):  # what a read-only or immutable directory does (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fs.tempfile, "mkstemp", refused)
    with pytest.raises(InputError, match="cannot write to the work directory .* \\(Permission denied\\)"):
        train_and_evaluate(tiny(), str(tmp_path / "w"), devices=ONE_DEVICE)


def test_a_bucket_url_is_refused_not_written_to_a_local_gs_directory(tmp_path, monkeypatch, capsys):
    """os.path would turn gs://bucket/run into ./gs:/bucket/run on each host, lost with the VM."""
    monkeypatch.chdir(tmp_path)
    refusal = r"gs://b/run is a URL; .*gcsfuse --implicit-dirs b /mnt/b\).*/mnt/b/run"
    with pytest.raises(InputError, match=refusal):
        train_and_evaluate(tiny(), "gs://b/run", devices=ONE_DEVICE)
    assert cli.main(["export", "--workdir", str(tmp_path), "--out", "gs://b/hf"]) == 2
    assert "--out gs://b/hf is a URL" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_scaling_that_changes_nothing_and_a_missing_rope_theta_are_warned_about(caplog):
    from ctxjax import positions

    warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        positions.Rope("yarn", factor=1.0, original_max_position_embeddings=16).validate(tiny_model())
        positions.Rope.from_hf({"max_position_embeddings": 64, "rope_parameters": {"rope_type": "default"}})
        positions.Rope.from_hf({"max_position_embeddings": 64,
                                "rope_scaling": {"rope_type": "yarn", "rope_theta": 1e4}})
    assert "rope yarn with factor 1 computes exactly the unscaled rotation" in caplog.text
    assert "name no rope_theta: using 10000" in caplog.text
    assert "names no factor and no original context" in caplog.text


def tiny_model():
    from ctxjax import ModelConfig

    return ModelConfig()


def test_jsonl_records_whose_text_is_not_a_string_are_not_trained_on(tmp_path, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [{"text": "good one"}, {"text": 5}, {"text": None},
                                                      {"text": "good two"}]))
    with caplog.at_level(logging.WARNING):
        pipe = make_pipeline(dict(source=f"jsonl:{data}", tokenizer="bytes", prefetch=0, shuffle=False))
    assert pipe.stats()["skipped_undecodable"] == 2 and "'text' is 5, not a string" in caplog.text
    pipe.close()
    with pytest.raises(InputError, match="'text' is 5, not a string; fix or remove it"):
        make_pipeline(dict(source=f"jsonl:{data}", tokenizer="bytes", prefetch=0, on_decode_error="fail"))


def test_an_imported_model_without_a_tokenizer_is_not_given_a_new_one(tmp_path, capsys):
    import hf_oracle as oracle

    src = oracle.save(oracle.llama())  # no tokenizer files
    workdir = str(tmp_path / "w")
    assert cli.main(["import-hf", src, "--workdir", workdir]) == 0
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "llama_extend.py:tiny")
    _one_line_refusal(capsys, ["train", "--config", config, "--workdir", workdir,
                               "--config.data.tokenizer=''"], "came without a tokenizer")
    assert not os.path.exists(os.path.join(workdir, "tokenizer"))


def test_one_field_of_a_stage_is_an_override_like_any_other():
    config = tiny(**{"stages.0.seq_len": 32, "stages.1.position": {"rope_type": "linear", "factor": 2.0}})
    assert config.stages[0]["seq_len"] == 32 and config.stages[1]["position"]["factor"] == 2.0


def test_a_diverged_run_says_so_and_exits_3(tmp_path, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:tiny")
    stages = "[{'steps': 2, 'seq_len': 16, 'lr': 1e-3}, {'steps': 2, 'seq_len': 16, 'lr': 1e30}]"
    assert cli.main(["train", "--config", config, "--workdir", str(tmp_path), f"--config.stages={stages}",
                     "--config.export_dir=''"]) == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ctxjax train: diverged: loss became NaN/inf at step")


def test_generating_past_the_models_context_is_said(tmp_path, capsys):
    import hf_oracle as oracle

    src = oracle.save(oracle.llama(vocab_size=258))  # a context of 64 tokens
    assert cli.main(["generate", "--hf", src, "--tokenizer", "bytes", "--prompt", "x" * 40,
                     "--max-new-tokens", "40"]) == 0
    err = capsys.readouterr().err
    assert "prompt + --max-new-tokens reach 81 tokens, past the model's context of 64" in err
