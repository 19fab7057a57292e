"""An encoder's evaluation (ctxjax/evaluate/masked.py): fixed masked targets scored with growing context on
both sides, the long-range masked recall probe, and both end to end on a tiny random encoder (results.json,
summary.md, plots, flat metrics). Tiny random models score about 0: these check construction and plumbing;
a scorer that reads the fact shows the probe can be solved only through the distance."""

import json
import os

import jax
import numpy as np
import pytest

from ctxjax import ModelConfig, Transformer
from ctxjax.data import load_tokenizer
from ctxjax.errors import InputError
from ctxjax.evaluate import run_evaluation
from ctxjax.evaluate.config import as_eval_config
from ctxjax.evaluate.masked import RecallTask, encoder_completer, masked_by_length, recall_correct
from ctxjax.evaluate.retrieval import run_grid
from ctxjax.generate import generate

TOKENIZER = load_tokenizer("bytes+mask")
MASK = TOKENIZER.mask_id
ENCODER = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      causal=False)


def test_the_masked_targets_are_the_same_at_every_length_and_the_context_grows_on_both_sides():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, n).astype(np.int32) for n in (300, 150, 90, 40)]
    docs[0][150:152] = (256, 257)  # specials in the middle are never masked
    seen = {}

    def scorer(tokens, segment_ids, targets):
        seen[tokens.shape[1]] = (tokens, targets)
        assert (segment_ids == 1).all()
        return np.ones(tokens.shape, np.float32), targets  # a scorer that is always right

    results = masked_by_length(docs, [32, 64, 128, 512], scorer, mask_id=MASK, special_ids=(256, 257, MASK),
                               mask_rate=0.25, target_tokens=16, max_windows=8)
    assert [s["length"] for s in results["skipped"]] == [512]
    assert set(results["by_length"]) == {"32", "64", "128"}
    assert all(v["documents"] == 2 and v["accuracy"] == 1.0 and v["nll"] == 1.0  # docs of >= 128 tokens
               for v in results["by_length"].values())
    masked = {n: targets[tokens == MASK] for n, (tokens, targets) in seen.items()}
    np.testing.assert_array_equal(masked[32], masked[64])  # the same tokens, in the same order
    np.testing.assert_array_equal(masked[32], masked[128])
    assert not np.isin(masked[32], (256, 257)).any()
    tokens, _ = seen[64]
    where = np.nonzero(tokens[0] == MASK)[0]
    assert 16 <= where.min() and where.max() < 48  # the middle of a window centred on the targets
    assert results["target_tokens"] == 16 and results["by_length"]["32"]["tokens"] == len(masked[32])


def test_recall_trials_mask_the_value_at_a_mention_further_away_with_depth():
    task = RecallTask(TOKENIZER, MASK, key_digits=5)
    rng = np.random.RandomState(0)
    near, far = task.make_trial(200, 0.0, rng), task.make_trial(200, 1.0, rng)
    for trial in (near, far):
        tokens = trial.prompt.tokens
        assert len(tokens) <= 200 and tokens.count(MASK) == 5 and len(trial.expected) == 5
        assert trial.expected in TOKENIZER.decode(tokens)  # the fact states it, once
    assert near.prompt.filler_before == 0 and far.prompt.filler_before > 100
    assert task.distances == {(200, 0.0): [0], (200, 1.0): [far.prompt.filler_before]}


def fact_reader(tokens, segment_ids, targets):
    """A perfect long-range model: every mask becomes the digits after the first ' is ' (the fact)."""
    top = tokens.copy()
    for row in range(len(tokens)):
        text = bytes(int(t) for t in tokens[row] if t < 256)
        start = text.index(b" is ") + 4
        masks = np.nonzero(tokens[row] == MASK)[0]
        top[row, masks] = list(text[start:start + len(masks)])
        assert (segment_ids[row, :len(tokens[row])] >= 0).all()
    return np.zeros(tokens.shape, np.float32), top


def test_recall_grid_with_a_model_that_reads_the_fact_scores_every_cell():
    task = RecallTask(TOKENIZER, MASK, key_digits=4)
    widths = []

    def scorer(tokens, segment_ids, targets):
        widths.append(tokens.shape[1])
        assert ((segment_ids == 0) == (np.cumsum(segment_ids == 0, axis=1) > 0)).all()  # padding at the end
        return fact_reader(tokens, segment_ids, targets)

    grid = task.with_distances(run_grid(
        task.make_trial, recall_correct, encoder_completer(scorer, TOKENIZER, MASK, [128, 256]),
        lengths=[128, 256], depths=[0.0, 0.5, 1.0], trials=3, answer_tokens=0, batch_size=2, seed=0))
    assert [c["accuracy"] for c in grid["cells"]] == [1.0] * 6 and grid["max_length_80"] == 256
    assert set(widths) == {128, 256}  # one shape per length
    distance = {(c["length"], c["depth"]): c["distance"] for c in grid["cells"]}
    assert distance[(128, 0.0)] == 0 < distance[(128, 1.0)] < distance[(256, 1.0)]


@pytest.fixture(scope="module")
def encoder_params():
    return Transformer(ENCODER).init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]


def test_encoder_evaluation_end_to_end(encoder_params, tmp_path):
    config = as_eval_config(dict(tasks="encoder", lengths=(32, 128), source="stdlib:eval", max_documents=3,
                                 max_windows=3, target_tokens=16, trials=2, depths=(0.0, 1.0), key_digits=3))
    metrics = run_evaluation(ENCODER, encoder_params, TOKENIZER, config, str(tmp_path), run_name="enc")
    assert {"eval/mlm/nll/32", "eval/mlm/acc/128", "eval/mlm_recall/acc/128"} <= set(metrics)
    assert 0 <= metrics["eval/mlm/acc/32"] <= 1 and metrics["eval/mlm/nll/32"] > 0
    results = json.load(open(tmp_path / "results.json"))
    assert results["mlm"]["by_length"]["32"]["tokens"] == results["mlm"]["by_length"]["128"]["tokens"]
    assert "distance" in results["mlm_recall"]["cells"][0]
    summary = open(tmp_path / "summary.md").read()
    assert "## Masked-token loss by context length" in summary and "Masked key-value recall" in summary
    for plot in ("mlm_vs_length.png", "mlm_recall_heatmap.png", "mlm_recall_by_distance.png"):
        assert plot in results["plots"] and os.path.getsize(tmp_path / plot) > 1000


@pytest.mark.parametrize("cfg, tasks, tokenizer, message", [
    (ENCODER, "ppl,passkey", TOKENIZER, "the model is an encoder.*\\['ppl', 'passkey'\\].*--tasks encoder"),
    (ENCODER.replace(causal=True), "mlm", TOKENIZER,
     "\\['mlm'\\] fill masked tokens.*the model is a decoder"),
    (ENCODER, "mlm", load_tokenizer("bytes"), "the model's tokenizer: the tokenizer has no mask token"),
])
def test_tasks_that_do_not_fit_the_model_are_refused_before_measuring(encoder_params, cfg, tasks, tokenizer,
                                                                      message, tmp_path):
    with pytest.raises(InputError, match=message):
        run_evaluation(cfg, encoder_params, tokenizer, dict(tasks=tasks, lengths=(32,)), str(tmp_path))
    assert not os.listdir(tmp_path)


def test_an_encoder_does_not_generate(encoder_params):
    with pytest.raises(InputError, match="encoder.*does not generate text.*ctxjax eval --tasks encoder"):
        generate(ENCODER, encoder_params, [[1, 2, 3]], 4)
