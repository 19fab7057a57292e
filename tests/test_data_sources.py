"""Each source kind, and bad input: every problem is a one-line DataError naming the fix."""

import json
import os

import numpy as np
import pytest

from ctxjax.data import DataConfig, DataError, eval_source_spec, make_pipeline, open_source
from ctxjax.data import stdlib_corpus
from ctxjax.data.sources import ListSource, MixtureSource


def one_line_error(fn, match):
    with pytest.raises(DataError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def drain_tokens(source, **overrides):
    """Every document token of one epoch, in order (bytes tokenizer: tokens are the UTF-8 bytes)."""
    values = dict(tokenizer="bytes", add_bos=False, add_eos=False, shuffle=False, prefetch=0)
    values.update(overrides)
    pipe = make_pipeline(values, None, source=source, process_index=0, process_count=1, num_epochs=1)
    batches = list(pipe.batches(1, 64))
    return bytes(t for b in batches for t in b["tokens"][b["segment_ids"] > 0].tolist()), pipe


# ---- text and jsonl ----
def test_text_glob_is_one_document_per_file_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub" / "c.txt").write_text("third ✓")
    source = open_source(f"text:{tmp_path}/**/*.txt")
    assert [source.text(i) for i in range(len(source))] == ["first", "second", "third ✓"]
    assert drain_tokens(f"text:{tmp_path}/**/*.txt")[0] == "firstsecondthird ✓".encode()


def test_jsonl_reads_a_field_and_skips_blank_lines(tmp_path):
    lines = [json.dumps({"body": "one", "id": 1}), "", "   ", json.dumps({"body": "two ✓"})]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    source = open_source(f"jsonl:{tmp_path}/*.jsonl:body")
    assert [source.text(i) for i in range(len(source))] == ["one", "two ✓"]
    (tmp_path / "y.jsonl").write_text(json.dumps({"text": "default field"}))
    assert open_source(f"jsonl:{tmp_path}/y.jsonl").text(0) == "default field"
    one_line_error(lambda: open_source(f"jsonl:{tmp_path}/y.jsonl:body").text(0), "jsonl:GLOB:FIELD")


def test_glob_matching_nothing_is_an_error(tmp_path):
    one_line_error(lambda: open_source(f"text:{tmp_path}/nothing/*.txt"), "matches no file")
    one_line_error(lambda: open_source(f"jsonl:{tmp_path}/*.jsonl"), "matches no file")


def test_unknown_source_kind_is_an_error():
    one_line_error(lambda: open_source("s3:bucket/x"), "unknown kind 's3'")


@pytest.fixture
def mixed_encodings(tmp_path):
    (tmp_path / "good.txt").write_text("valid text")
    (tmp_path / "bad.txt").write_bytes(b"latin-1 caf\xe9")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{not json}\n')
    return tmp_path


def test_non_utf8_documents_are_skipped_and_counted(mixed_encodings):
    tokens, pipe = drain_tokens(f"text:{mixed_encodings}/*.txt")
    assert tokens == b"valid text" and pipe.stats()["skipped_undecodable"] == 1
    tokens, pipe = drain_tokens(f"jsonl:{mixed_encodings}/*.jsonl", precompute_tokens=False)
    assert tokens == b"ok" and pipe.stats()["skipped_undecodable"] == 2


def test_non_utf8_documents_fail_when_configured(mixed_encodings):
    message = one_line_error(lambda: drain_tokens(f"text:{mixed_encodings}/*.txt", on_decode_error="fail"),
                             "not UTF-8")
    assert "bad.txt" in message and "on_decode_error='skip'" in message


# ---- the embedded stdlib corpus ----
def test_stdlib_corpus_has_a_fixed_held_out_split_by_file():
    train, held_out, everything = (stdlib_corpus.stdlib_files(s) for s in ("train", "eval", "all"))
    assert not set(train) & set(held_out) and sorted(train + held_out) == everything
    assert 0.01 < len(held_out) / len(everything) < 0.15 and len(train) > 100
    root = stdlib_corpus.stdlib_root()
    for path in everything:
        parts = os.path.relpath(path, root).split(os.sep)
        assert path.endswith(".py") and "site-packages" not in parts and "test" not in parts[:-1]
    assert train == sorted(train) and stdlib_corpus.stdlib_files("eval") == held_out
    assert open_source("stdlib").spec == "stdlib:train" and len(open_source("stdlib:eval")) == len(held_out)
    assert eval_source_spec(DataConfig()) == "stdlib:eval"
    one_line_error(lambda: open_source("stdlib:validation"), "stdlib split")


def test_stdlib_documents_are_long():
    source = open_source("stdlib", DataConfig(max_documents=50))
    lengths = [len(source.text(i)) for i in range(len(source))]
    assert len(lengths) == 50 and max(lengths) > 20_000


# ---- tensorflow-datasets, without TensorFlow: a tiny local data set in the array_record format ----
tfds = pytest.importorskip("tensorflow_datasets")
from tfds_docs import docs_builder  # noqa: E402  (needs tensorflow_datasets)
TFDS_DOCS = {"train": [f"train document {i} " * (i + 1) for i in range(7)], "test": ["held out ✓"]}


# Registered as 'ctxjax_tiny_docs'.
CtxjaxTinyDocs = docs_builder("CtxjaxTinyDocs", TFDS_DOCS)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    CtxjaxTinyDocs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_array_record_source_reads_without_tensorflow(tfds_dir):
    config = DataConfig(tfds_data_dir=tfds_dir)
    source = open_source("tfds:ctxjax_tiny_docs", config)  # picks book_text over title
    assert sorted(source.text(i) for i in range(len(source))) == sorted(TFDS_DOCS["train"])
    held_out = open_source("tfds:ctxjax_tiny_docs:test", config)
    assert [held_out.text(0)] == TFDS_DOCS["test"]
    titles = open_source("tfds:ctxjax_tiny_docs", DataConfig(tfds_data_dir=tfds_dir, text_field="title"))
    assert sorted(titles.text(i) for i in range(len(titles))) == [f"title {i}" for i in range(7)]
    tokens, pipe = drain_tokens("tfds:ctxjax_tiny_docs:test", tfds_data_dir=tfds_dir)
    assert tokens == "held out ✓".encode() and pipe.stats()["documents"] == 1


def test_tfds_unknown_name_unknown_split_and_unprepared_data_set(tfds_dir, tmp_path):
    def opener(spec, **config):
        return lambda: open_source(spec, DataConfig(**{"tfds_data_dir": tfds_dir, **config}))

    message = one_line_error(opener("tfds:no_such_dataset_xyz"), "no_such_dataset_xyz")
    assert "tfds build" in message
    one_line_error(opener("tfds:ctxjax_tiny_docs:validation"),
                   r"no split 'validation'; use one of \['test', 'train'\]")
    message = one_line_error(opener("tfds:ctxjax_tiny_docs", tfds_data_dir=str(tmp_path)), "is not prepared")
    assert "tfds build ctxjax_tiny_docs --file_format=array_record" in message
    one_line_error(opener("tfds:ctxjax_tiny_docs", text_field="body"), "no feature 'body'")


def test_tfds_data_set_is_read_from_its_files_where_its_builder_code_is_unknown(tfds_dir):
    """As on a user's machine reading a data set prepared elsewhere: no builder class, only the files."""
    import subprocess
    import sys

    script = ("from ctxjax.data import open_source, DataConfig\n"
              f"s = open_source('tfds:ctxjax_tiny_docs:test', DataConfig(tfds_data_dir={tfds_dir!r}))\n"
              "print(repr(s.text(0)))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr(TFDS_DOCS["test"][0])


# ---- mixtures ----
def test_mixture_repeats_and_thins_each_source_by_its_weight(tmp_path):
    for name, n in (("a", 3), ("b", 4)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.txt").write_text(f"{name}{i}")
    spec = f"mix:2 * text:{tmp_path}/a/*.txt; 0.5*text:{tmp_path}/b/*.txt"  # spaces are fine
    source = open_source(spec)
    assert [source.text(i) for i in range(len(source))] == ["a0", "a0", "a1", "a1", "a2", "a2", "b0", "b2"]
    other = open_source(spec.replace("2 *", "3 *"))
    assert source.local_files and source.fingerprint() != other.fingerprint()
    # max_documents limits every part (each keeps its share), not the first N of the whole.
    limited = open_source(spec, DataConfig(max_documents=2))
    assert [limited.text(i) for i in range(len(limited))] == ["a0", "a0", "a1", "a1", "b0"]
    # Through the pipeline: one epoch holds every repeat, in the shuffled order.
    tokens, _ = drain_tokens(source, shuffle=True)
    pairs = sorted(tokens.decode()[i:i + 2] for i in range(0, 16, 2))
    assert pairs == ["a0", "a0", "a1", "a1", "a2", "a2", "b0", "b2"]
    # Evaluation reads each part's held-out documents once (repeats would only score them again).
    held_out = eval_source_spec(DataConfig(source="mix:3*stdlib;1*stdlib:train"))
    assert held_out == "mix:1*stdlib:eval;1*stdlib:eval"


@pytest.mark.parametrize("spec, match", [
    ("mix:", "names no source"),
    ("mix:two*stdlib", "'two\\*stdlib' is not WEIGHT\\*SPEC"),
    ("mix:0*stdlib", "is not WEIGHT\\*SPEC with a finite weight > 0"),
    ("mix:stdlib", "is not WEIGHT\\*SPEC"),
    ("mix:1*mix:1*stdlib", "other than mix"),
    ("mix:0.0001*stdlib", "makes 0 per epoch; choose a weight between"),
    ("mix:1e300*stdlib", "per epoch; choose a weight between"),
    ("mix:inf*stdlib", "finite weight > 0"),
])
def test_bad_mixtures_are_one_line_errors(spec, match):
    one_line_error(lambda: open_source(spec), match)


def test_a_mixtures_repeats_are_tokenized_and_cached_once(tmp_path):
    from ctxjax.data.documents import DocumentTokenizer, PrecomputedDocuments
    from ctxjax.data.tokenizer import load_tokenizer

    source = MixtureSource([ListSource(["ab", "cde"]), ListSource(["f"])], [3.0, 1.0], "mix:3*a;1*b")
    tokenizer = DocumentTokenizer(source, load_tokenizer("bytes"), add_bos=False, add_eos=False,
                                  on_decode_error="fail")
    order = np.array([6, 0, 4, 1, 3])  # a shard's documents: f, ab, cde, ab, cde
    for _ in range(2):  # tokenized, then read back from the cache
        docs = PrecomputedDocuments(tokenizer, order, str(tmp_path))
        texts = [bytes(docs.tokens(j).tolist()) for j in range(len(docs))]
        assert texts == [b"f", b"ab", b"cde", b"ab", b"cde"]
        assert docs.lengths().tolist() == [1, 2, 3, 2, 3] and len(docs._flat) == 6  # each text stored once


def test_a_mixture_refuses_a_source_read_only_in_order():
    stream = ListSource(["x"], spec="tfds:pg19")
    stream.sequential = True  # as a tfrecord-prepared tfds split read through tf.data
    one_line_error(lambda: MixtureSource([stream], [1.0], "mix:1*tfds:pg19"), "read only in order")
