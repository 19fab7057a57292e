"""Perplexity by length: each method against a hand computation with a scorer of known values, window and
stride edge cases, skipped lengths with their reasons, and the model scorer against transformers' logits."""

import math

import hf_oracle as oracle
import numpy as np
import pytest
import torch

from ctxjax.evaluate.perplexity import perplexity_by_length, sliding_starts
from ctxjax.evaluate.scoring import evaluation_execution, model_scorer
from ctxjax.hf import load_pretrained


def known_scorer(windows):
    """A 'model' whose NLL of a target is target/10 + 1/context, context = tokens before the target."""
    targets = windows[:, 1:].astype(np.float64)
    context = np.arange(1, windows.shape[1])[None, :]
    return targets / 10 + 1 / context


def expected(pairs):
    """(target token, context) pairs -> (mean NLL, perplexity)."""
    nll = sum(t / 10 + 1 / c for t, c in pairs) / len(pairs)
    return nll, math.exp(nll)


DOC = np.arange(10, dtype=np.int32)  # token i is the number i, so targets are identifiable


def run(docs, lengths, **kw):
    args = dict(methods=("nonoverlapping", "sliding", "fixed_target"), stride=3, target_tokens=2,
                bucket_size=2, max_windows=100)
    return perplexity_by_length(docs, lengths, lambda n: known_scorer, **{**args, **kw})


def test_each_method_matches_a_hand_computation():
    r = run([DOC], [4])
    # Non-overlapping windows of 4: tokens 0-4 and 4-8; each window's targets see 1..4 tokens; token 9 is a
    # tail.
    nll, ppl = expected([(1, 1), (2, 2), (3, 3), (4, 4), (5, 1), (6, 2), (7, 3), (8, 4)])
    assert r["nonoverlapping"]["4"]["nll"] == pytest.approx(nll)
    assert r["nonoverlapping"]["4"]["ppl"] == pytest.approx(ppl)
    assert r["nonoverlapping"]["4"]["tokens"] == 8
    # Sliding, stride 3 (does not divide 10 - 4 - 1): windows at 0, 3 and one more ending at the end (5);
    # each target once: window 3 scores 5-7 (contexts 2-4), window 5 scores 8-9 (contexts 3-4).
    nll, _ = expected([(1, 1), (2, 2), (3, 3), (4, 4), (5, 2), (6, 3), (7, 4), (8, 3), (9, 4)])
    assert r["sliding"]["4"]["nll"] == pytest.approx(nll)
    sliding = r["sliding"]["4"]
    assert (sliding["tokens"], sliding["windows"], sliding["stride"]) == (9, 3, 3)
    # Fixed target set: the last 2 tokens (8, 9) with the window of 4 that ends at the document's end.
    nll, _ = expected([(8, 3), (9, 4)])
    assert r["fixed_target"]["4"]["nll"] == pytest.approx(nll)
    # Per-position loss: mean over the two non-overlapping windows, in buckets of 2 target positions.
    assert r["per_position"]["4"]["starts"] == [0, 2]
    assert r["per_position"]["4"]["nll"] == pytest.approx([
        np.mean([0.1 + 1, 0.2 + 0.5, 0.5 + 1, 0.6 + 0.5]),
        np.mean([0.3 + 1 / 3, 0.4 + 0.25, 0.7 + 1 / 3, 0.8 + 0.25])])


def test_fixed_targets_are_the_same_at_every_length_only_the_context_grows():
    long_doc, short_doc = np.arange(12, dtype=np.int32), np.arange(100, 106, dtype=np.int32)
    r = run([long_doc, short_doc], [3, 5, 11])
    # Only the document long enough for the longest length (11) holds targets: 10 and 11, at every length.
    for length, contexts in ((3, (2, 3)), (5, (4, 5)), (11, (10, 11))):
        nll, _ = expected(list(zip((10, 11), contexts)))
        assert r["fixed_target"][str(length)]["nll"] == pytest.approx(nll)
        assert r["fixed_target"][str(length)]["documents"] == 1
    # The short document still counts where it fits a whole window (length 3 and 5), and only there.
    assert r["nonoverlapping"]["5"]["documents"] == 2 and r["nonoverlapping"]["11"]["documents"] == 1
    # A separate evaluation at one length keeps the same targets when told the context they were chosen for.
    alone = run([long_doc, short_doc], [5], fixed_context=11)
    assert alone["fixed_target"]["5"] == r["fixed_target"]["5"]
    assert run([long_doc, short_doc], [5])["fixed_target"]["5"]["documents"] == 2


def test_documents_shorter_than_the_window_and_lengths_longer_than_every_document_are_skipped_with_reasons():
    r = run([DOC, np.arange(4, dtype=np.int32)], [4, 9, 10, 50], target_tokens=5)
    assert r["nonoverlapping"]["4"]["documents"] == 1  # the 4-token document cannot fill a window of 4 (+1)
    assert r["nonoverlapping"]["9"]["tokens"] == 9  # exactly one window: 10 tokens
    skipped = {(s["length"], s["method"]): s["reason"] for s in r["skipped"]}
    assert "longer than every held-out document (longest: 10 tokens" in skipped[(10, "all")]
    assert (50, "all") in skipped and "10" not in r["nonoverlapping"]
    assert "shorter than the target set (target_tokens=5)" in skipped[(4, "fixed_target")]
    assert set(r["fixed_target"]) == {"9"}


def test_a_length_the_model_cannot_take_is_skipped_with_the_given_reason():
    r = run([DOC], [4, 8], too_long={8: "beyond the learned position table (6 rows)"})
    reason = "beyond the learned position table (6 rows)"
    assert r["skipped"] == [{"length": 8, "method": "all", "reason": reason}]


def test_a_stride_longer_than_the_window_is_capped_at_the_window():
    r = run([DOC], [4], stride=7)
    assert r["sliding"]["4"]["stride"] == 4 and r["sliding"]["4"]["tokens"] == 9


@pytest.mark.parametrize("n_tokens, length, stride", [(10, 4, 4), (10, 4, 3), (5, 4, 2), (4, 4, 1),
                                                       (101, 16, 5)])
def test_sliding_windows_score_every_target_exactly_once(n_tokens, length, stride):
    starts = sliding_starts(n_tokens, length, stride)
    if n_tokens < length + 1:
        assert starts == []
        return
    scored = [s + j + 1 for s, first in starts for j in range(first, length)]
    assert sorted(scored) == list(range(1, n_tokens))
    assert all(s + length + 1 <= n_tokens for s, _ in starts)  # every window is whole


def test_model_scorer_equals_transformers_cross_entropy():
    model = oracle.llama()
    cfg, params = load_pretrained(oracle.save(model))
    windows = oracle.tokens(3, 21, seed=5)
    score = model_scorer(cfg, evaluation_execution(), params, batch_size=2)
    ours = score(windows.astype(np.int32))  # 2 + padded 1
    logits = torch.tensor(oracle.logits(model, windows[:, :-1]))
    theirs = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.tensor(windows[:, 1:]),
                                               reduction="none").numpy()
    assert ours.shape == (3, 20)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
