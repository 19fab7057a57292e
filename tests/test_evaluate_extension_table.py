"""The before/after-extension table: built from two evaluations' results, one row each, passkey, multikey and
fixed-target perplexity per length; lengths one of them lacks are left out, unmeasured cells marked."""

import pytest

from ctxjax.evaluate.extension_table import before_and_after, extension_table


def results(passkey, ppl, lengths=(128, 256, 512)):
    """A results.json as `ctxjax eval` writes it, reduced to what the table reads."""
    cells = [{"length": n, "depth": d, "accuracy": a} for n, a in zip(lengths, passkey) for d in (0.0, 1.0)]
    return {"lengths": list(lengths),
            "ppl": {"fixed_target": {str(n): {"ppl": p} for n, p in zip(lengths, ppl)}},
            "passkey": {"cells": cells, "max_length_80": None, "max_length_20": None},
            "multikey": {"cells": [c for c in cells if c["length"] > 128], "max_length_80": None,
                         "max_length_20": None}}


def test_one_row_per_model_and_a_column_per_task_and_length():
    before = results([1.0, 0.25, 0.0], [20.0, 21.5, 80.25])
    after = results([1.0, 1.0, 0.9], [19.0, 17.0, 16.0])
    table = extension_table(before, after, 128, "before", "after").splitlines()
    assert table[0] == ("|  | passkey 128 (1×) | passkey 256 (2×) | passkey 512 (4×) | multikey 128 (1×) | "
                        "multikey 256 (2×) | multikey 512 (4×) | fixed-target ppl 128 (1×) | "
                        "fixed-target ppl 256 (2×) | fixed-target ppl 512 (4×) |")
    assert table[2] == "| before | 100% | 25% | 0% | – | 25% | 0% | 20.0 | 21.5 | 80.2 |"
    assert table[3] == "| after | 100% | 100% | 90% | – | 100% | 90% | 19.0 | 17.0 | 16.0 |"


def test_only_lengths_both_evaluations_measured():
    table = extension_table(results([1.0, 1.0], [2.0, 2.0], (128, 256)), results([1.0], [2.0], (128,)), 128,
                            "a", "b")
    assert "256" not in table
    with pytest.raises(ValueError, match="share no length"):
        extension_table(results([1.0], [2.0], (128,)), results([1.0], [2.0], (512,)), 128, "a", "b")


def test_before_is_the_last_stage_at_the_base_length_and_after_the_last_stage():
    assert before_and_after([(100, 128), (300, 512)]) == ((100, 128), (300, 512))
    # Two stages at 128 (e.g. retrieval documents alone, then with code), two extensions.
    assert before_and_after([(70, 128), (120, 128), (160, 256), (200, 512)]) == ((120, 128), (200, 512))
    with pytest.raises(ValueError, match="every stage of the run trains at 128 tokens"):
        before_and_after([(70, 128), (120, 128)])
