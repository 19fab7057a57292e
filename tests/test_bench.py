"""Each side-by-side bench script runs end to end on its tiny configuration (`--tiny`): the rows of both
sides are printed and agree where they must (the same NLL, tokens compared). Nothing here is timed."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def tiny_run(script: str) -> list[list[str]]:
    """The table rows the script prints with --tiny, as lists of cells."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user runs it
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--tiny"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_train_step_rows_of_both_sides_with_mfu():
    pytest.importorskip("peft")
    rows = tiny_run("train_step.py")
    assert [(r[0], r[2]) for r in rows] == [("ctxjax", "everything"), ("ctxjax (CLI)", "everything"),
                                            ("torch", "everything"), ("ctxjax", "LoRA r=2"),
                                            ("torch", "LoRA r=2")]
    assert all(r[7].endswith("%") for r in rows)


def test_scoring_rows_give_the_same_nll():
    rows = tiny_run("scoring.py")
    assert [r[0] for r in rows] == ["ctxjax", "torch"]
    assert abs(float(rows[0][5]) - float(rows[1][5])) < 1e-4


def test_generation_rows_compare_the_tokens():
    rows = tiny_run("generate.py")
    assert [r[0] for r in rows] == ["ctxjax", "torch"]
    equal, batch = rows[1][8].split("/")
    assert batch == "2" and 0 <= int(equal) <= 2


def test_step_profile_runs():
    rows = tiny_run("profile_step.py")
    assert {r[0] for r in rows} & {"loss", "mlp", "attn"}
    assert [r[2] for r in rows if r[1] == "weight grad X^T dY"]  # the matmul shapes' table
