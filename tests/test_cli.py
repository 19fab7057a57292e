"""The `ctxjax` command line: zero-shot extension of Hugging Face models and its bad-input handling."""

import json
import os
import subprocess
import sys

import hf_oracle as oracle
import jax.numpy as jnp
import numpy as np
import run_model
from transformers import AutoModelForCausalLM

from ctxjax import cli, positions
from ctxjax.hf import load_pretrained


def test_extend_hf_writes_yarn_scaling_that_transformers_reproduces(tmp_path, capsys):
    src = oracle.save(oracle.llama())
    out = tmp_path / "yarn"
    assert cli.main(["extend-hf", src, "--out", str(out), "--rope-type", "yarn", "--factor", "4"]) == 0
    assert "64 -> 256 tokens" in capsys.readouterr().out
    config = json.load(open(out / "config.json"))
    assert config["max_position_embeddings"] == 256
    assert config["rope_scaling"]["original_max_position_embeddings"] == 64
    cfg, params = load_pretrained(str(out))
    assert cfg.position == positions.Rope("yarn", factor=4.0, original_max_position_embeddings=64)
    toks = oracle.tokens(1, 150)
    ours = np.asarray(run_model.forward(cfg, params, jnp.asarray(toks)))
    theirs = oracle.logits(AutoModelForCausalLM.from_pretrained(out), toks)
    assert np.abs(ours - theirs).max() <= 1e-4


def test_extend_hf_grows_an_existing_scaling_instead_of_replacing_it(tmp_path, capsys):
    """A Phi-3's LongRoPE (searched factor lists, L0 16, 4x) extended to 8x keeps its lists and L0; YaRN on
    top of it would have discarded them, and is refused in one line."""
    src = oracle.save(oracle.phi3())
    out = tmp_path / "phi3-8x"
    assert cli.main(["extend-hf", src, "--out", str(out), "--factor", "8"]) == 0
    assert "64 -> 128 tokens" in capsys.readouterr().out
    before, _ = load_pretrained(src)
    cfg, params = load_pretrained(str(out))
    assert cfg.position == before.position.replace(factor=8.0)
    toks = oracle.tokens(1, 100)
    ours = np.asarray(run_model.forward(cfg, params, jnp.asarray(toks)))
    assert np.abs(ours - oracle.logits(AutoModelForCausalLM.from_pretrained(out), toks)).max() <= 1e-4
    yarn = ["--rope-type", "yarn", "--factor", "8"]
    assert cli.main(["extend-hf", src, "--out", str(tmp_path / "x"), *yarn]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' progress bars
    assert err.startswith("ctxjax extend-hf: error: the model already uses longrope RoPE scaling (factor 4, "
                          "original context 16); yarn would replace it: extend it with longrope (its factor "
                          "becomes 8)")
    assert not os.path.exists(tmp_path / "x")


def test_extend_hf_widens_a_sliding_window(tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    src = oracle.save(MistralForCausalLM(MistralConfig(**oracle.LLAMA, sliding_window=7)).eval())
    out = tmp_path / "wide"
    assert cli.main(["extend-hf", src, "--out", str(out), "--rope-type", "linear", "--factor", "2",
                     "--sliding-window", "128"]) == 0
    config = json.load(open(out / "config.json"))
    assert config["architectures"] == ["MistralForCausalLM"] and config["sliding_window"] == 128
    cfg, params = load_pretrained(str(out))
    toks = oracle.tokens(1, 40)
    ours = np.asarray(run_model.forward(cfg, params, jnp.asarray(toks)))
    assert np.abs(ours - oracle.logits(AutoModelForCausalLM.from_pretrained(out), toks)).max() <= 1e-4
    narrow = np.asarray(run_model.forward(cfg.replace(sliding_window=7), params, jnp.asarray(toks)))
    assert np.abs(ours - narrow).max() > 1e-3  # the wider window is what the export computes


def test_extend_hf_grows_a_gpt2_position_table(tmp_path):
    src = oracle.save(oracle.gpt2())
    out = tmp_path / "gpt2"
    assert cli.main(["extend-hf", src, "--out", str(out), "--positions", "128", "--method", "copy"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_positions == 128
    table = model.transformer.wpe.weight.detach().numpy()
    np.testing.assert_array_equal(table[64:], table[:64])


def test_bad_flags_exit_2_with_one_line(tmp_path, capsys):
    src = oracle.save(oracle.gpt2())
    capsys.readouterr()
    yarn = ["--rope-type", "yarn", "--factor", "2"]
    assert cli.main(["extend-hf", src, "--out", str(tmp_path / "x"), *yarn]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctxjax extend-hf: error:") and "--positions" in err and "\n" not in err
    assert cli.main(["extend-hf", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_console_script_is_installed_and_reads_a_model():
    src = oracle.save(oracle.llama(oracle.ROPE_CASES["llama3"]))
    script = os.path.join(os.path.dirname(sys.executable), "ctxjax")  # installed by `pip install -e .`
    done = subprocess.run([script, "info", src], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rope_type='llama3'" in done.stdout and "parameters: 74,176" in done.stdout
    assert "exports as: LlamaForCausalLM" in done.stdout
