"""`ctxjax plan`: train steps compiled for a TPU topology on this CPU host by libtpu, with the TPU kernels
(splash as a Mosaic call, run per shard), and their memory and cost read back.

Needs libtpu (the `test` extra installs it): without it these tests skip with the install command, except
under CI=true, where a missing libtpu fails them (the `libtpu` fixture, in conftest.py)."""

import json
import logging
import os

import pytest

from ctxjax import cli
from ctxjax.attention.common import warn_fallback
from ctxjax.plan.chips import parse_topology
from ctxjax.plan.devices import tpu_devices
from ctxjax.plan.report import check_fits, stage_plan
from ctxjax.plan.compare import default_alternatives, parse_alternatives
from ctxjax.plan.search import config_at_length
from ctxjax.train import load_config
from ctxjax.train.aot import compiled_stages, largest_arrays
from ctxjax.train.configs import apply_overrides

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "configs", "demo.py:tiny")
MOSAIC_CALL = 'custom_call_target="tpu_custom_call"'  # how a Pallas TPU kernel appears in the program


def one_stage(seq_len: int, tokens: int, *overrides: str) -> list[str]:
    return [f"stages=[{{'steps': 2, 'seq_len': {seq_len}, 'lr': 1e-3}}]", f"tokens_per_step={tokens}",
            "execution.dtype=bfloat16", *overrides]


def compile_for(topology: str, overrides: list[str]):
    top = parse_topology(topology)
    config = apply_overrides(load_config(TINY), overrides)
    (compiled,) = compiled_stages(config, tpu_devices(top))
    return compiled, stage_plan(compiled, top)


def test_slice_names_are_libtpu_topologies():
    names = {n: parse_topology(n).topology_name for n in ("v5e-1", "v5e-8", "v6e-16", "v2-8", "v4-32",
                                                          "v5p-128", "v5e:2x2")}
    assert names == {"v5e-1": "v5e:1x1", "v5e-8": "v5e:2x4", "v6e-16": "v6e:4x4", "v2-8": "v2:2x2",
                     "v4-32": "v4:2x2x4", "v5p-128": "v5p:4x4x4", "v5e:2x2": "v5e:2x2"}
    assert parse_topology("v2-8").devices == 8 and parse_topology("v4-8").devices == 4  # cores vs megacore
    with pytest.raises(ValueError, match="e.g. v5e-8"):
        parse_topology("v7x-8")


def test_splash_compiles_for_tpu_per_shard_with_fsdp_and_tensor(libtpu):
    compiled, row = compile_for("v5e:2x2", one_stage(256, 2048, "execution.attention=splash", "mesh.data=1",
                                                     "mesh.fsdp=2", "mesh.tensor=2"))
    # The kernel follows the mesh's devices (TPU), not the host's backend (CPU): the Mosaic call is there.
    assert MOSAIC_CALL in compiled.compiled.as_text()
    assert row["temp_bytes"] > 0 and 0 < row["total_bytes"] < row["hbm_bytes"]
    assert row["params_bytes"] > 0 and row["optimizer_bytes"] >= 2 * row["params_bytes"]  # Adam mu, nu
    assert row["compiled_flops"] > 0 and row["model_flops"] > 0 and row["step_seconds_at_peak"] > 0
    check_fits(row, parse_topology("v5e:2x2"))


def test_ring_attention_compiles_for_tpu_with_a_sequence_axis(libtpu):
    compiled, row = compile_for("v5e:2x2", one_stage(256, 2048, "execution.attention=ring", "mesh.data=1",
                                                     "mesh.fsdp=2", "mesh.sequence=2"))
    assert "collective-permute" in compiled.compiled.as_text() and row["total_bytes"] < row["hbm_bytes"]


def test_splash_on_a_v2_runs_blockwise_and_says_why(libtpu, caplog):
    """libtpu's Mosaic has no bfloat16 matmul on v2/v3: the kernel would fail to compile with a traceback."""
    warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        compiled, _ = compile_for("v2-8", one_stage(256, 2048, "execution.attention=splash", "mesh.data=1"))
    assert MOSAIC_CALL not in compiled.compiled.as_text()
    assert "runs as 'blockwise': libtpu's Mosaic has no bfloat16 matrix multiply on TPU v2" in caplog.text


def test_ulysses_compiles_for_tpu_with_splash_inside_and_all_to_alls(libtpu):
    compiled, row = compile_for("v5e:2x2", one_stage(256, 2048, "execution.attention=ulysses", "mesh.data=1",
                                                     "mesh.fsdp=2", "mesh.sequence=2"))
    program = compiled.compiled.as_text()
    # Heads are exchanged for length around the Mosaic kernel, which sees each device's heads whole.
    assert "all-to-all" in program and MOSAIC_CALL in program and row["total_bytes"] < row["hbm_bytes"]


def test_a_step_that_does_not_fit_fails_in_one_line(libtpu, capsys):
    # Full 8k x 8k float32 scores of 8 heads for 8 rows at once: far more than a v5e chip's 16 GiB.
    code = cli.main(["plan", "--config", TINY, "--topology", "v5e-1",
                     *(f"--config.{o}" for o in one_stage(8192, 65536, "execution.attention=xla",
                                                          "mesh.data=1"))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "stage 0 (seq_len 8192, batch 8) does not fit" in err and "remat" in err
    # The compiler gives totals only; the line also names the biggest arrays: here the 8k x 8k scores.
    assert "largest arrays of the step (global shapes, per device inside per-shard kernels): f32[" in err
    assert ",8192,8192] " in err


def test_the_evaluation_after_the_last_stage_is_planned_too(libtpu, capsys):
    args = ["plan", "--config", TINY, "--topology", "v5e-1", "--json", "--config.mesh.data=1"]
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    programs = {row["program"]: row for row in rows if "program" in row}
    assert [row["stage"] for row in rows if "stage" in row] == [0, 1, 2]
    assert list(programs) == ["perplexity", "generate prefill", "generate decode"]
    # The evaluation's longest length: twice the last stage's (64), and room for the answer when decoding.
    assert programs["perplexity"]["seq_len"] == 128 and programs["generate decode"]["seq_len"] == 128 + 32
    assert all(0 < row["total_bytes"] < row["hbm_bytes"] for row in programs.values())
    # Float32 scores of 16k x 16k: the train steps fit, the evaluation at 16k tokens does not, in one line.
    assert cli.main([*args, *(f"--config.{o}" for o in one_stage(64, 512)), "--config.eval.lengths=16384",
                     "--config.eval.attention=xla"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "evaluation program 'perplexity' (length 16384, batch 4) does not fit" in err


def test_the_longest_context_is_bracketed_within_one_granule_and_alternatives_compared(libtpu, capsys):
    # --compare runs the --find-max-seq-len search for the config as it is and for each alternative given;
    # one the config cannot take (3 tensor shards of 1 device) is reported with its reason, not fatal.
    code = cli.main(["plan", "--config", TINY, "--topology", "v5e-1", "--json", "--memory-limit", "0.005",
                     "--compare", "mesh.tensor=3", "--config.execution.attention=xla",
                     "--config.mesh.data=1"])
    lines = capsys.readouterr().out.strip().splitlines()
    summaries = {s["name"]: s for s in json.loads(lines[-1])["comparison"]}
    assert code == 0 and list(summaries) == ["as configured", "mesh.tensor=3"]
    assert summaries["mesh.tensor=3"]["plan"] is None and "1 devices" in summaries["mesh.tensor=3"]["reason"]
    tried = {row["seq_len"]: row for row in map(json.loads, lines[:-1])}
    assert {row["alternative"] for row in tried.values()} == {"as configured"}
    longest = summaries["as configured"]["longest"]
    assert tried[longest]["fits"] and tried[longest]["total_bytes"] <= 0.005 * 2**30
    assert summaries["as configured"]["plan"]["total_bytes"] == tried[longest]["total_bytes"]
    assert not tried[longest + 128]["fits"]  # the next length up was compiled and is over the limit
    assert all(row["fits"] == (n <= longest) for n, row in tried.items())  # memory grows with length
    assert len(tried) <= 8  # doubling, then bisection


def test_find_max_seq_len_says_in_one_line_when_nothing_fits(libtpu, capsys):
    code = cli.main(["plan", "--config", TINY, "--topology", "v5e-1", "--find-max-seq-len", "--memory-limit",
                     "0.001", "--config.execution.attention=xla", "--config.mesh.data=1"])
    captured = capsys.readouterr()
    assert code == 2 and "| 128 | " in captured.out and len(captured.err.strip().splitlines()) == 1
    assert "no seq_len fits in 1.0 MiB per device, down to 128 tokens" in captured.err


def test_default_alternatives_follow_the_config():
    pod = load_config(os.path.join(ROOT, "configs", "tpu_pod.py"))  # ring, fsdp x tensor 4 x sequence 2
    names = [name for name, _ in default_alternatives(pod, 64)]
    assert names == ["as configured", "remat=attention", "remat=full", "attention=ulysses",
                     "fsdp=32, tensor=1"]
    tiny = load_config(TINY)  # no sequence axis, no tensor axis: remat, and a tensor axis taken from fsdp
    assert [name for name, _ in default_alternatives(tiny, 64)][-1] == "fsdp=16, tensor=4"
    with pytest.raises(ValueError, match="FIELD=VALUE overrides separated by spaces"):
        parse_alternatives(["full"])


def test_a_length_keeps_the_tokens_per_step_with_a_row_per_shard_at_least():
    config = load_config(TINY)
    long = config_at_length(config, 4 * int(config.tokens_per_step), batch_ways=2)
    assert long.stages == [{**config.stages[-1], "seq_len": 4 * int(config.tokens_per_step)}]
    assert long.tokens_per_step == 2 * long.stages[0]["seq_len"]  # two rows: one per data-parallel shard
    assert config_at_length(config, 32, 1).tokens_per_step == config.tokens_per_step


def test_a_memory_limit_must_be_positive(capsys):
    assert cli.main(["plan", "--config", TINY, "--topology", "v5e-1", "--memory-limit", "0"]) == 2
    assert "--memory-limit 0 must be a positive number of GiB" in capsys.readouterr().err


def test_largest_arrays_reads_a_lowered_programs_types():
    program = ("%0 = stablehlo.dot_general %a, %b : (tensor<8x128xbf16>, tensor<128x64xbf16>) -> "
               "tensor<8x64xf32>\n%1 = stablehlo.compare %x, %y : (tensor<4x1024x1024xi1>) -> tensor<f32>")
    assert largest_arrays(program, 2) == "i1[4,1024,1024] 4.00 MiB, bf16[128,64] 0.02 MiB"
    assert largest_arrays("no arrays") == "none found"


def test_the_attached_slice_is_named_from_its_devices(libtpu):
    """What the Colab notebook plans for: jax.devices() of a TPU VM -> its slice name (libtpu's devices of a
    topology report the device kind a TPU VM does)."""
    import jax

    from ctxjax.plan.chips import slice_of

    for name in ("v2-8", "v3-8", "v4-8", "v4-32", "v5e-1", "v5e-8", "v5p-8", "v6e-4"):
        assert slice_of(tpu_devices(parse_topology(name))) == name
    assert slice_of(jax.devices()) is None  # the CPU
