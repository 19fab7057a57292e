"""`ctxjax check-logits` and `ctxjax export --check`: ctxjax against transformers on a user's own checkpoint,
with a verdict per length that fails where the two really compute different things."""

import os
import sys

import hf_oracle as oracle
import numpy as np

from ctxjax import cli
from ctxjax.evaluate.logit_report import check, text_rows
from ctxjax.data import load_tokenizer
from ctxjax.evaluate.documents import load_documents
from ctxjax.hf import load_pretrained
from ctxjax.evaluate.logit_check import _merge, row_differences
from ctxjax.positions import Rope


def table_rows(out: str) -> dict[int, list[str]]:
    """{length: cells} of the printed table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


def one_line_error(capsys, argv, expected):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctxjax {argv[0]}: error:") and "\n" not in err and expected in err, err


def test_an_import_checks_out_below_and_above_its_original_context(capsys):
    src = oracle.save(oracle.llama(rope_scaling=oracle.ROPE_CASES["yarn"]))  # L0 16, 4x
    assert cli.main(["check-logits", src, "--lengths", "12,48"]) == 0
    out = capsys.readouterr().out
    assert "tokens:    random ids (seed 0)" in out  # the tiny model has no tokenizer
    rows = table_rows(out)
    assert sorted(rows) == [12, 48]
    for cells in rows.values():
        assert float(cells[1]) <= 1e-4 and cells[6] == "100.0%" and cells[7] == "yes"
    assert "ctxjax and transformers give the same answers" in out


def test_a_model_computing_something_else_fails_at_the_lengths_where_it_differs(capsys):
    """Dynamic NTK equals plain RoPE up to the original context (64) and differs beyond it: a ctxjax config
    without the scaling passes the short row and fails the long one, and the verdict is 1. (A tiny random
    model hardly uses positions, so the difference is 3e-3 here, under the default --atol meant for real
    checkpoints.)"""
    src = oracle.save(oracle.llama(rope_scaling=oracle.ROPE_CASES["dynamic"]))
    cfg, params = load_pretrained(src)
    capsys.readouterr()
    assert check(cfg.replace(position=Rope()), params, src, lengths=(40, 100), atol=1e-4) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows[40][7] == "yes" and rows[100][7] == "NO"
    assert "at length 100 the logits differ by up to" in out and "do not compute the same thing" in out
    # With the scaling it computes what transformers does.
    assert check(cfg, params, src, lengths=(40, 100), atol=1e-4) == 0


def test_export_check_compares_the_written_model_with_the_checkpoint_on_text(tmp_path, capsys):
    src = oracle.with_tokenizer(oracle.save(oracle.llama()))
    work, out = tmp_path / "work", tmp_path / "out"
    assert cli.main(["import-hf", src, "--workdir", str(work)]) == 0
    capsys.readouterr()
    assert cli.main(["export", "--workdir", str(work), "--out", str(out), "--check", "8,40"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "tokens:    stdlib:eval, HuggingFaceTokenizer" in printed
    assert sorted(table_rows(printed)) == [8, 40]
    assert "give the same answers" in printed
    one_line_error(capsys, ["export", "--workdir", str(work), "--out", str(tmp_path / "o2"), "--check",
                            "--peft-adapter", str(tmp_path / "a")], "--check compares a whole model")
    assert not os.path.exists(tmp_path / "o2")
    # A run compared with another model's export, and a work directory given as the export: one line each.
    other = oracle.save(oracle.llama(vocab_size=50))
    one_line_error(capsys, ["check-logits", other, "--workdir", str(work)],
                   "of 50 token ids and the ctxjax model has 97")
    one_line_error(capsys, ["check-logits", str(work)], "is a ctxjax work directory, not a Hugging Face one")


def test_export_check_refuses_lengths_the_model_cannot_take_before_writing(tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    assert cli.main(["import-hf", oracle.save(oracle.gpt2()), "--workdir", str(work)]) == 0  # 64 positions
    one_line_error(capsys, ["export", "--workdir", str(work), "--out", str(out), "--check"],
                   "--check 128 is beyond the learned position table (64 rows)")
    assert not os.path.exists(out)


def test_text_rows_are_bos_led_documents_that_wrap_around():
    tokenizer = load_tokenizer("bytes")
    stream = np.concatenate(load_documents("stdlib:eval", tokenizer, None))
    short, long = text_rows((10, len(stream) + 50), tokenizer, "stdlib:eval")
    assert short[0] == tokenizer.bos_id and len(short) == 10
    np.testing.assert_array_equal(long[len(stream):], stream[:50])


def test_text_rows_read_only_the_documents_they_need():
    """A training corpus as --source must not be tokenized whole for a row of 100 tokens."""
    tokenizer, encoded = load_tokenizer("bytes"), []

    class Counting(type(tokenizer)):
        def encode(self, text):
            encoded.append(text)
            return super().encode(text)

    (row,) = text_rows((100,), Counting(), "stdlib:eval")
    assert len(row) == 100 and len(encoded) == 1


def test_a_nan_anywhere_in_a_long_row_fails_the_check():
    """Logits are compared 1024 positions at a time; a NaN in a later chunk must still be the worst value."""
    good = np.zeros((4, 5), np.float32)
    bad = good.copy()
    bad[2, 1] = np.nan
    merged = _merge([row_differences(good + 1e-3, good), row_differences(bad, good)], [0, 1024])
    assert np.isnan(merged["max_abs"]) and merged["position"] == 1026 and np.isnan(merged["max_kl"])


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    one_line_error(capsys, ["check-logits", str(tmp_path / "missing")], "is not a directory")
    gpt2 = oracle.save(oracle.gpt2())  # 64 learned positions
    one_line_error(capsys, ["check-logits", gpt2, "--lengths", "100"],
                   "--lengths 100 is beyond the learned position table")
    one_line_error(capsys, ["check-logits", gpt2, "--step", "3"], "--step needs --workdir")
    one_line_error(capsys, ["check-logits", gpt2, "--random-tokens", "--tokenizer", "bytes"], "uses no text")
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without PyTorch
    one_line_error(capsys, ["check-logits", gpt2], "pip install torch transformers")
