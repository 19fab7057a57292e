"""tensorflow-datasets through tf.data: a data set prepared as tfrecord, read with TensorFlow installed.

The main venv has no TensorFlow (so the rest of the suite reads tfds as a user without it does), so this
file runs itself as a script under .venv-tf (`make install-tf`: the `tf` extra, no torch). The script
prepares one tiny data set twice, as tfrecord and as array_record, in files of several examples each, and
reads both through ctxjax.data; the tests here compare what it read. The tf.data path must give the
documents, in the same order, and the batches the array_record path gives, and resume exactly.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TF_VENV = ROOT / ".venv-tf"
TF_PYTHON = TF_VENV / "bin" / "python"
NAME = "ctxjax_tfdata_docs"  # a name of its own: test_data_sources.py prepares ctxjax_tiny_docs
FORMATS = ("tfrecord", "array_record")
# Per split. More examples a file than tfds interleaves from one file before it turns to the next (16), so
# a reader that interleaves files reads another order; reads that start mid-split must open the right file.
NUM_FILES = 2
DOCS = {"train": [f"doc {i}: " + "ünïcode ✓ " * (i % 4) + "word " * (7 * i % 19 + 1) for i in range(40)],
        "test": ["held out ✓", "second held out", "third held out ✓"]}
JUMPS = [37, 3, 4, 23, 0, 19, 20, 5, 6, 39]  # back, forth, across files, and runs of consecutive reads
ROWS, LENGTH = 2, 64
EPOCH_BATCHES = math.ceil(sum(len(d.encode()) for d in DOCS["train"]) / (ROWS * LENGTH))
STEPS, SAVED_AT = 2 * EPOCH_BATCHES, EPOCH_BATCHES - 3  # into the second epoch; resume within the first


# ---- the script: runs under .venv-tf ----
def prepare(data_dir: str) -> None:
    import tensorflow_datasets as tfds

    from tfds_docs import docs_builder

    builder = docs_builder("CtxjaxTfdataDocs", DOCS)
    for file_format in FORMATS:
        builder(data_dir=os.path.join(data_dir, file_format), file_format=file_format) \
            .download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=NUM_FILES))


def read_batches(data_dir, file_format, steps, state=None, **overrides):
    """`steps` batches as lists, and the JSON state after them; starts from `state` when given."""
    from ctxjax.data import make_pipeline

    layout = {k: overrides.pop(k, v) for k, v in (("process_index", 0), ("process_count", 1))}
    config = dict(tokenizer="bytes", tfds_data_dir=os.path.join(data_dir, file_format), shuffle=False)
    with make_pipeline({**config, **overrides}, None, source=f"tfds:{NAME}", **layout) as pipe:
        if state is not None:
            pipe.restore(json.loads(state))
        batches = [{k: v.tolist() for k, v in pipe.next_batch(ROWS * layout["process_count"], LENGTH).items()}
                   for _ in range(steps)]
        return batches, json.dumps(pipe.state())


def read_errors(data_dir) -> dict:
    from ctxjax.data import DataConfig, DataError, open_source

    errors = {}
    for key, spec, where in (("unknown", "tfds:no_such_dataset_xyz", "tfrecord"),
                             ("unprepared", f"tfds:{NAME}", "nothing_here"),
                             ("bad_slice", f"tfds:{NAME}:train[30:50]", "tfrecord")):
        try:
            open_source(spec, DataConfig(tfds_data_dir=os.path.join(data_dir, where)))
        except DataError as e:
            errors[key] = str(e)
    return errors


def all_texts(source) -> list[str]:
    return [source.text(i) for i in range(len(source))]


def reader_opens(data_dir) -> dict:
    """Where the tf.data source opens a reader, reading every document in order and then JUMPS."""
    from ctxjax.data import DataConfig, open_source

    source = open_source(f"tfds:{NAME}", DataConfig(tfds_data_dir=os.path.join(data_dir, "tfrecord")))
    opened, open_reader = [], source._open
    source._open = lambda i: opened.append(i) or open_reader(i)
    all_texts(source)
    in_order = list(opened)
    for i in JUMPS:
        source.text(i)
    return {"in_order": in_order, "jumps": opened[len(in_order):]}


def read_everything(data_dir: str) -> dict:
    import tensorflow as tf

    from ctxjax.data import DataConfig, open_source

    prepare(data_dir)
    out = {"tensorflow": tf.__version__, "errors": read_errors(data_dir), "opens": reader_opens(data_dir)}
    for file_format in FORMATS:
        config = DataConfig(tfds_data_dir=os.path.join(data_dir, file_format))
        source = open_source(f"tfds:{NAME}", config)
        out[file_format] = {
            "kind": type(source).__name__,
            "texts": all_texts(source),
            "jumps": [source.text(i) for i in JUMPS],
            "sliced": all_texts(open_source(f"tfds:{NAME}:train[5:-5]", config)),
            "test": all_texts(open_source(f"tfds:{NAME}:test", config)),
            "batches": read_batches(data_dir, file_format, STEPS)[0],
            "two_shards": read_batches(data_dir, file_format, STEPS, num_shards=2)[0],
            "second_process": read_batches(data_dir, file_format, STEPS, process_index=1, process_count=2)[0],
        }
    first, saved = read_batches(data_dir, "tfrecord", SAVED_AT)
    out["resumed"] = first + read_batches(data_dir, "tfrecord", STEPS - SAVED_AT, saved)[0]
    out["shuffle_asked"] = read_batches(data_dir, "tfrecord", STEPS, shuffle=True)[0]
    return out


def read_from_files(data_dir: str) -> dict:
    """In a process that never defined the builder, as on a machine reading a data set prepared elsewhere."""
    from ctxjax.data import DataConfig, open_source

    config = DataConfig(tfds_data_dir=os.path.join(data_dir, "tfrecord"))
    source = open_source(f"tfds:{NAME}:train[30:]", config)
    return {"kind": type(source).__name__, "texts": all_texts(source)}


# ---- the tests: run in the main venv ----
def ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="module")
def tfdata(tmp_path_factory):
    if not (TF_VENV / ".installed").exists():  # `make install-tf` writes it once the venv is complete
        reason = "the venv with TensorFlow (.venv-tf) is not installed: run `make install-tf`"
        if ci():  # CI must never pass without having run the tf.data path
            pytest.fail(reason)
        pytest.skip(reason)
    data_dir = str(tmp_path_factory.mktemp("tfdata"))
    out = run_script(data_dir)
    out["from_files"] = run_script("--from-files", data_dir)
    return data_dir, out


def run_script(*args) -> dict:
    # PYTHONPATH: the ctxjax of this checkout, wherever .venv-tf's editable install points.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([str(TF_PYTHON), __file__, *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_tfrecord_split_is_read_through_tf_data_in_the_array_record_order(tfdata):
    data_dir, out = tfdata
    assert len(list(pathlib.Path(data_dir, "tfrecord").rglob(f"{NAME}-train.tfrecord-*"))) == NUM_FILES
    tf_data, array_record = out["tfrecord"], out["array_record"]
    assert (tf_data["kind"], array_record["kind"]) == ("TfdsStreamSource", "TfdsSource")
    assert sorted(tf_data["texts"]) == sorted(DOCS["train"])
    assert tf_data["texts"] == array_record["texts"]  # tfds' shuffled order, the same in both formats
    for key in ("jumps", "sliced", "test"):
        assert tf_data[key] == array_record[key], key
    assert tf_data["jumps"] == [tf_data["texts"][i] for i in JUMPS]
    # A read of the document after one already read continues that reader (4, 20, 5 and 6 here).
    assert out["opens"] == {"in_order": [0], "jumps": [37, 3, 23, 0, 19, 39]}
    assert tf_data["sliced"] == tf_data["texts"][5:-5] and sorted(tf_data["test"]) == sorted(DOCS["test"])


def test_tfrecord_split_is_read_from_its_files_where_its_builder_code_is_unknown(tfdata):
    _, out = tfdata
    assert out["from_files"] == {"kind": "TfdsStreamSource", "texts": out["tfrecord"]["texts"][30:]}


def test_tf_data_batches_equal_the_array_record_batches(tfdata):
    _, out = tfdata
    for key in ("batches", "two_shards", "second_process"):  # two_shards: two readers, interleaved
        assert out["tfrecord"][key] == out["array_record"][key], key
    # One shard, in order: the batches' text bytes (ids < 256; BOS, EOS and padding aside) are the split's
    # documents one after another, epoch after epoch.
    stream = bytes(t for b in out["tfrecord"]["batches"]
                   for row, segments in zip(b["tokens"], b["segment_ids"])
                   for t, s in zip(row, segments) if s > 0 and t < 256)
    assert stream.startswith("".join(out["tfrecord"]["texts"] * 2).encode()[:len(stream)])
    assert len(stream) > len("".join(DOCS["train"]).encode())


def test_tf_data_stream_resumes_exactly_and_is_read_in_order(tfdata):
    _, out = tfdata
    assert out["resumed"] == out["tfrecord"]["batches"]
    # Shuffling a stream would re-read it for every document: a tf.data source is read in its order.
    assert out["shuffle_asked"] == out["tfrecord"]["batches"]


def test_unknown_or_unprepared_tfds_name_with_tensorflow_is_a_one_line_error(tfdata):
    _, out = tfdata
    unknown, unprepared, bad_slice = (out["errors"][k] for k in ("unknown", "unprepared", "bad_slice"))
    assert "no_such_dataset_xyz" in unknown and "tfds build" in unknown
    assert "is not prepared" in unprepared and f"tfds build {NAME}" in unprepared
    assert "cannot slice 'train[30:50]'" in bad_slice and f"has {len(DOCS['train'])} examples" in bad_slice
    assert "\n" not in unknown + unprepared + bad_slice


def test_tfrecord_without_tensorflow_names_the_extra(tfdata):
    import importlib.util

    from ctxjax.data import DataConfig, DataError, open_source

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed in this venv")
    data_dir, _ = tfdata
    with pytest.raises(DataError, match=r"needs TensorFlow; `pip install 'ctxjax\[tf\]'`") as info:
        open_source(f"tfds:{NAME}", DataConfig(tfds_data_dir=os.path.join(data_dir, "tfrecord")))
    assert "\n" not in str(info.value) and "--file_format=array_record" in str(info.value)


if __name__ == "__main__":
    if sys.argv[1] == "--from-files":
        print(json.dumps(read_from_files(sys.argv[2])))
    else:
        print(json.dumps(read_everything(sys.argv[1])))
