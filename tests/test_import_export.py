"""`ctxjax import-hf` and `ctxjax export`: a Hugging Face model goes into a work directory and comes back out
reproducing its logits; training checkpoints export too; bad inputs are one-line errors."""

import json
import os

import hf_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxjax import cli, positions
from ctxjax.checkpoint import Checkpointer, checkpoint_meta, load_for_inference
from ctxjax.data import load_tokenizer
from ctxjax.hf import load_pretrained, save_pretrained


def assert_same_logits(model, out_dir, length=24):
    toks = oracle.tokens(2, length)
    exported = AutoModelForCausalLM.from_pretrained(out_dir)
    assert np.abs(oracle.logits(exported, toks) - oracle.logits(model, toks)).max() <= 1e-4


def one_line_error(capsys, argv, *expected):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctxjax {argv[0]}: error:") and "\n" not in err, err
    for text in expected:
        assert text in err, err


def test_llama_imports_and_exports_reproducing_its_logits_tokenizer_and_special_ids(tmp_path, capsys):
    """The special ids of generation_config.json travel too: transformers' generate stops at its EOS ids (here
    two, as Llama-3 chat models have), and an export without them never stopped."""
    model = oracle.llama(bos_token_id=3, eos_token_id=[4, 5], pad_token_id=0)
    src = oracle.with_tokenizer(oracle.save(model, dtype=torch.bfloat16))  # float32 master weights from bf16
    with open(os.path.join(src, "chat_template.jinja"), "w") as f:  # an instruct model's template travels too
        f.write("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    model = model.to(torch.bfloat16).float()
    work, out = tmp_path / "work", tmp_path / "out"
    assert cli.main(["import-hf", src, "--workdir", str(work)]) == 0
    assert f"wrote {work / 'checkpoints' / '0'}" in capsys.readouterr().out
    assert sorted(os.listdir(work / "tokenizer")) == ["chat_template.jinja", "generation_config.json",
                                                      "tokenizer.json", "tokenizer_config.json"]
    tokenizer = load_tokenizer(str(work / "tokenizer"))
    # EOS "w0", then the config's
    assert tokenizer.encode("w3 w5") == [3, 5] and tokenizer.stop_ids == (0, 4, 5)
    assert Checkpointer(work).saved_shapes()["params"]["embed"]["embedding"].dtype == jnp.float32

    assert cli.main(["export", "--workdir", str(work), "--out", str(out)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert_same_logits(model, out)
    companions = {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"}
    assert companions <= set(os.listdir(out))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).apply_chat_template([{"role": "user", "content": "w3"}],
                                                                  tokenize=False) == "w3"
    exported = AutoModelForCausalLM.from_pretrained(out)
    generation = exported.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (3, [4, 5], 0)
    assert (exported.config.bos_token_id, exported.config.eos_token_id) == (3, [4, 5])


def test_special_ids_of_an_export_without_a_generation_config_come_from_the_tokenizer(tmp_path):
    cfg, params = load_pretrained(oracle.save(oracle.llama()))
    out = save_pretrained(cfg, params, str(tmp_path / "out"), tokenizer=oracle.with_tokenizer(str(tmp_path)))
    config = json.load(open(os.path.join(out, "config.json")))
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 0, None)  # "w0"


def test_gpt2_imports_with_a_grown_position_table_and_exports(tmp_path):
    model = oracle.gpt2()
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["import-hf", oracle.save(model), "--workdir", str(work), "--positions", "128", "--method", "copy"]
    assert cli.main(argv) == 0
    assert cli.main(["export", "--workdir", str(work), "--out", str(out)]) == 0
    assert json.load(open(out / "config.json"))["n_positions"] == 128
    assert_same_logits(model, out, length=64)  # copied rows: the first 64 positions are unchanged


def test_rope_flags_and_param_dtype_flag_reach_the_checkpoint(tmp_path):
    src = oracle.save(oracle.llama(), dtype=torch.bfloat16)
    work = tmp_path / "work"
    argv = ["import-hf", src, "--workdir", str(work), "--rope-type", "yarn", "--factor", "4",
            "--param-dtype", "checkpoint"]
    assert cli.main(argv) == 0
    cfg, params, tokenizer_dir, hf_architecture = load_for_inference(str(work))
    assert cfg.position == positions.Rope("yarn", factor=4.0, original_max_position_embeddings=64)
    assert cfg.max_seq_len == 256 and tokenizer_dir is None and hf_architecture == "LlamaForCausalLM"
    assert params["embed"]["embedding"].dtype == jnp.bfloat16


def test_a_training_checkpoint_exports(tmp_path):
    model = oracle.llama(seed=1)
    cfg, params = load_pretrained(oracle.save(model))
    params = jax.tree.map(jnp.asarray, params)
    state = {"step": jnp.asarray(7), "params": params, "opt_state": optax.adamw(1e-3).init(params)}
    work, out = tmp_path / "work", tmp_path / "out"
    with Checkpointer(work, async_save=False) as ckpt:
        ckpt.save(7, state, data_state={"document": 3}, meta=checkpoint_meta(cfg), force=True)
        zeros = jax.tree.map(jnp.zeros_like, state)
        ckpt.save(9, zeros, data_state={}, meta=checkpoint_meta(cfg), force=True)
    assert cli.main(["export", "--workdir", str(work), "--step", "7", "--out", str(out)]) == 0
    assert_same_logits(model, out)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    src = oracle.save(oracle.gpt2())
    missing = tmp_path / "missing"
    one_line_error(capsys, ["export", "--workdir", str(missing), "--out", str(tmp_path / "o")],
                   "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["export", "--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                   "has no checkpoints", "import-hf")

    work = tmp_path / "work"
    assert cli.main(["import-hf", src, "--workdir", str(work)]) == 0
    one_line_error(capsys, ["import-hf", src, "--workdir", str(work)], "already holds checkpoints",
                   "--workdir")
    one_line_error(capsys, ["export", "--workdir", str(work), "--step", "5", "--out", str(tmp_path / "o")],
                   "no checkpoint at step 5; available steps: [0]")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    one_line_error(capsys, ["export", "--workdir", str(work), "--out", str(busy)], "not empty", "--overwrite")
    one_line_error(capsys, ["export", "--workdir", str(work), "--out", str(busy), "--overwrite"],
                   "is not an unchanged ctxjax export")  # a directory ctxjax did not write is never replaced
    assert (busy / "file").read_text() == "x"
    assert cli.main(["export", "--workdir", str(work), "--out", str(tmp_path / "o")]) == 0
    assert cli.main(["export", "--workdir", str(work), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    with pytest.raises(SystemExit):  # argparse: an unknown dtype is a usage error
        cli.main(["import-hf", src, "--workdir", str(tmp_path / "w2"), "--param-dtype", "int8"])
