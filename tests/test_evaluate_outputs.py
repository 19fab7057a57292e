"""`ctxjax eval` and `ctxjax generate` end to end on tiny local models: results.json, summary.md and valid
PNG plots; explicit skips with reasons; --compare; work directories; one-line errors for bad input.
Tiny random models score 0% on retrieval: these tests check construction and plumbing, not accuracy."""

import json
import os
import shutil

import hf_oracle as oracle
import matplotlib.image
import pytest

from ctxjax import cli
from ctxjax.evaluate import evaluate_workdir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYTE_VOCAB = 258  # the bytes tokenizer's ids


def assert_valid_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text("def f(x):\n    return x + 1\n" * 9)  # 243 bytes
    (root / "b.txt").write_text("import os\nprint(os.sep)\n" * 4)  # 96 bytes
    return f"text:{root}/*.txt"


@pytest.fixture(scope="module")
def llama_dir():
    return oracle.save(oracle.llama(vocab_size=BYTE_VOCAB))


@pytest.fixture(scope="module")
def evaluated(llama_dir, corpus, tmp_path_factory):
    """One evaluation with every task, shared by the tests below (its compilations are the slow part)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    code = cli.main(["eval", "--hf", llama_dir, "--tokenizer", "bytes", "--out", str(out), "--name", "tiny",
                     "--tasks", "ppl,passkey,multikey,needle", "--lengths", "32,64,300", "--source", corpus,
                     "--distractors", "1",
                     "--depths", "0,1", "--trials", "1", "--stride", "16", "--target-tokens", "16",
                     "--needle", "The magic word is banana.", "--question", "What is the magic word?",
                     "--answer", "banana", "--rope-type", "yarn", "--factor", "2"])
    assert code == 0
    return out


def test_eval_writes_results_summary_and_valid_plots(evaluated, capsys):
    results = json.load(open(evaluated / "results.json"))
    assert results["run"] == "tiny" and "yarn" in results["model"]["position"]
    assert results["model"]["sliding_window"] == 0  # recorded: a window changes every number
    assert set(results["ppl"]["nonoverlapping"]) == {"32", "64"}
    assert set(results["ppl"]["sliding"]["64"]) >= {"nll", "ppl", "tokens", "documents", "stride"}
    assert results["ppl"]["fixed_target"]["32"]["tokens"] == results["ppl"]["fixed_target"]["64"]["tokens"]
    assert [(c["length"], c["depth"]) for c in results["passkey"]["cells"]] == [(300, 0.0), (300, 1.0)]
    assert results["needle"]["cells"][0]["trials"] == 1
    assert [c["length"] for c in results["multikey"]["cells"]] == [300, 300]  # 1 distractor fits in 300
    assert set(results["plots"]) == {"ppl_vs_length.png", "per_position_loss.png", "passkey_heatmap.png",
                                     "multikey_heatmap.png", "needle_heatmap.png"}
    for name in results["plots"]:
        assert_valid_png(evaluated / name)
    summary = open(evaluated / "summary.md").read()
    assert "| 64 |" in summary and "Passkey retrieval" in summary and "Needle in a haystack" in summary
    assert "Multi-key passkey" in summary


def test_skipped_lengths_are_explained_in_the_summary(evaluated):
    summary = open(evaluated / "summary.md").read()
    assert "skipped length 300: longer than every held-out document (longest: 244 tokens" in summary
    assert "skipped length 32: a prompt of 32 tokens cannot hold the template" in summary
    assert "largest length with >= 80% accuracy at every depth: none" in summary


def compare_with_a_copy(evaluated, tmp_path):
    """`ctxjax eval --compare` of an evaluation and a renamed copy of it, into tmp_path/cmp."""
    other = tmp_path / "other"
    shutil.copytree(evaluated, other)
    results = json.load(open(other / "results.json"))
    results["run"] = "other"
    json.dump(results, open(other / "results.json", "w"))
    assert cli.main(["eval", "--compare", str(evaluated), str(other), "--out", str(tmp_path / "cmp")]) == 0


def test_compare_overlays_runs_in_one_set_of_plots(evaluated, tmp_path):
    compare_with_a_copy(evaluated, tmp_path)
    for name in ("ppl_vs_length.png", "per_position_loss.png", "passkey_vs_length.png",
                 "needle_vs_length.png"):
        assert_valid_png(tmp_path / "cmp" / name)
    table = open(tmp_path / "cmp" / "compare.md").read()
    assert "| metric | tiny | other |" in table and "eval/ppl/sliding/64" in table


def test_learned_positions_beyond_the_table_are_skipped_with_the_reason(corpus, tmp_path):
    gpt2_dir = oracle.save(oracle.gpt2(vocab_size=BYTE_VOCAB, n_positions=48))
    out = tmp_path / "gpt2"
    assert cli.main(["eval", "--hf", gpt2_dir, "--tokenizer", "bytes", "--out", str(out), "--tasks", "ppl",
                     "--lengths", "32,64", "--source", corpus, "--ppl-methods", "nonoverlapping"]) == 0
    summary = open(out / "summary.md").read()
    assert "skipped length 64: beyond the learned position table (48 rows)" in summary


def test_eval_and_generate_on_a_work_directory(llama_dir, corpus, tmp_path, capsys):
    workdir = tmp_path / "work"
    assert cli.main(["import-hf", llama_dir, "--workdir", str(workdir)]) == 0
    assert cli.main(["eval", str(workdir), "--tokenizer", "bytes", "--tasks", "ppl", "--lengths", "32",
                     "--source", corpus]) == 0
    assert json.load(open(workdir / "eval" / "latest" / "results.json"))["step"] == 0  # the latest, named
    assert "eval/ppl/nonoverlapping/32" in capsys.readouterr().out
    # The Python entry point of `make demo` gives the same numbers.
    metrics, out = evaluate_workdir(str(workdir), {"tasks": ["ppl"], "lengths": [32], "source": corpus},
                                    out_dir=str(tmp_path / "demo"), tokenizer="bytes", log=lambda m: None)
    saved = json.load(open(workdir / "eval" / "latest" / "results.json"))
    assert metrics["eval/ppl/sliding/32"] == pytest.approx(saved["ppl"]["sliding"]["32"]["ppl"])
    assert os.path.exists(os.path.join(out, "summary.md"))
    assert cli.main(["generate", str(workdir), "--tokenizer", "bytes", "--prompt", "def f(x):",
                     "--prompt", "import", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert "=== 'def f(x):'\ndef f(x):" in printed and "=== 'import'\nimport" in printed


def bad_hf_dir(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": 64')  # truncated JSON
    return str(bad)


def corrupt_weights_dir(llama_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(llama_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    return str(bad)


@pytest.mark.parametrize("argv, message", [
    (lambda d, t: ["eval", "--hf", str(t / "missing")], "is not a directory"),
    (lambda d, t: ["eval", "--hf", bad_hf_dir(t)],
     "config.json (a Hugging Face model config) is not valid JSON"),
    (lambda d, t: ["eval", "--hf", corrupt_weights_dir(d, t), "--tokenizer", "bytes"],
     "model.safetensors is not a readable safetensors file"),
    (lambda d, t: ["eval", "--hf", d], "no tokenizer found"),
    (lambda d, t: ["eval", "--hf", d, "--tokenizer", "bytes", "--lengths", "1"], "lengths"),
    (lambda d, t: ["eval", "--hf", d, "--tokenizer", "bytes", "--tasks", "ppl,bogus"], "tasks"),
    (lambda d, t: ["eval", "--hf", d, "--tokenizer", "bytes", "--depths", "1.5"], "depths"),
    (lambda d, t: ["eval", "--compare", str(t)], "--out"),
    (lambda d, t: ["eval", "--compare", str(t), str(t), "--out", str(t / "c")], "results.json"),
    (lambda d, t: ["eval"], "either a work directory or --hf"),
    (lambda d, t: ["generate", "--hf", d, "--tokenizer", "bytes"], "--prompt"),
    (lambda d, t: ["generate", "--hf", d, "--tokenizer", "bytes", "--prompt", "x", "--top-p", "0"], "top_p"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(argv, message, llama_dir, tmp_path, capsys):
    assert cli.main(argv(llama_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path, capsys):
    small = oracle.save(oracle.llama())  # vocab 97 < 258 byte ids
    assert cli.main(["eval", "--hf", small, "--tokenizer", "bytes", "--out", str(tmp_path / "o")]) == 2
    assert "vocab_size" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_eval_config_lists_accept_comma_separated_strings_and_single_values():
    from ctxjax.evaluate.config import EvalConfig

    cfg = EvalConfig(tasks="ppl, passkey", lengths="512,1024", depths=0.5)
    assert (cfg.tasks, cfg.lengths, cfg.depths) == (("ppl", "passkey"), (512, 1024), (0.5,))
    assert EvalConfig(tasks="ppl", lengths=512).resolved_lengths(64) == (512,)
    with pytest.raises(ValueError, match="max_documents=0 must be at least 1"):
        EvalConfig(max_documents=0)
