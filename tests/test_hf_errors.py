"""Bad Hugging Face inputs fail with one line that names the problem and the fix, and leave nothing
half written."""

import json
import os
import re

import hf_oracle as oracle
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ctxjax import ModelConfig, init_params, positions
from ctxjax.hf import load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def llama_dir():
    return oracle.save(oracle.llama())


def _copy_with(src, tmp_path, config_changes=None, tensors=None):
    out = tmp_path / "model"
    out.mkdir()
    config = json.load(open(f"{src}/config.json"))
    config.update(config_changes or {})
    json.dump(config, open(out / "config.json", "w"))
    weights = load_file(f"{src}/model.safetensors")
    if tensors:
        tensors(weights)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_unsupported_architecture_lists_the_supported_ones(llama_dir, tmp_path):
    t5 = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}
    bad = _copy_with(llama_dir, tmp_path, t5)
    with pytest.raises(ValueError) as e:
        load_pretrained(bad)
    assert "LlamaForCausalLM" in _one_line(e) and "GPT2LMHeadModel" in str(e.value)


def test_missing_weights(llama_dir, tmp_path):
    bad = _copy_with(llama_dir, tmp_path, tensors=lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="lacks 1 weight") as e:
        load_pretrained(bad)
    assert "model.layers.1.mlp.up_proj.weight" in _one_line(e)


def test_extra_weights(llama_dir, tmp_path):
    def add(w):
        w["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)

    bad = _copy_with(llama_dir, tmp_path, tensors=add)
    with pytest.raises(ValueError, match="does not map") as e:
        load_pretrained(bad)
    assert "q_norm" in _one_line(e)


def test_shape_mismatch_names_the_tensor(llama_dir, tmp_path):
    bad = _copy_with(llama_dir, tmp_path, {"intermediate_size": 128})
    with pytest.raises(ValueError,
                       match=r"gate_proj.weight has shape \(96, 64\) but config.json implies \(128, 64\)"):
        load_pretrained(bad)


@pytest.mark.parametrize("changes, message", [
    ({"rope_scaling": {"rope_type": "xpos", "factor": 2.0}}, "unknown rope_type 'xpos'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "factor=0.5 must be >= 1"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 8}}, "beta_fast"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0] * 8}},
     "`short_factor` must list 8 factors"),
    ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
      "hidden_activation": "gelu_pytorch_tanh", "use_bidirectional_attention": True},
     "use_bidirectional_attention=true makes an encoder"),
    ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
      "hidden_activation": "gelu_pytorch_tanh", "sliding_window": None},
     "local .sliding_attention. layers but no sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
])
def test_bad_config_values(llama_dir, tmp_path, changes, message):
    bad = _copy_with(llama_dir, tmp_path, changes)
    with pytest.raises(ValueError, match=message) as e:
        load_pretrained(bad)
    _one_line(e)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_pretrained(str(tmp_path))
    json.dump({"architectures": ["LlamaForCausalLM"], **oracle.LLAMA}, open(tmp_path / "config.json", "w"))
    open(tmp_path / "pytorch_model.bin", "w").close()
    with pytest.raises(ValueError, match="safe_serialization=True"):
        load_pretrained(str(tmp_path))


def test_unknown_override_names_the_valid_fields(llama_dir):
    with pytest.raises(ValueError, match="unknown override"):
        load_pretrained(llama_dir, kernel="flash")
    cfg, _ = load_pretrained(llama_dir, param_dtype="float32", sliding_window=8)
    assert cfg.param_dtype == "float32" and cfg.sliding_window == 8
    with pytest.raises(ValueError, match=r"config.json with the overrides \['vocab_size'\] implies .* an "
                                         "override cannot reshape stored weights") as e:
        load_pretrained(llama_dir, vocab_size=512)
    _one_line(e)


@pytest.mark.parametrize("override, message", [
    (dict(attention="xla"), "attention is not part of what a model is but of ExecutionConfig: give it as "
                            "Transformer(cfg, execution=ExecutionConfig(attention=...))"),
    (dict(dtype="bfloat16", remat="full"), "dtype is not part of what a model is but of ExecutionConfig"),
    (dict(lora_rank=8), "lora_rank is not part of what a model is but of AdaptationConfig: give it as "
                        "ctxjax.lora.add_adapters(params, cfg, AdaptationConfig(lora_rank=...), rng)"),
])
def test_how_a_model_runs_or_is_adapted_is_no_override(llama_dir, override, message):
    """Settings that were ModelConfig fields before the split are refused naming where they went."""
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_pretrained(llama_dir, **override)
    _one_line(e)


def test_save_replaces_only_an_unchanged_ctxjax_export_and_only_when_asked(llama_dir, tmp_path):
    cfg, params = load_pretrained(llama_dir)
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="overwrite=True") as e:
        save_pretrained(cfg, params, str(out))
    _one_line(e)
    with pytest.raises(ValueError,
                       match="is not an unchanged ctxjax export .no readable ctxjax_export.json") as e:
        # a directory ctxjax did not write: never replaced
        save_pretrained(cfg, params, str(out), overwrite=True)
    _one_line(e)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    os.remove(out / "notes.txt")
    save_pretrained(cfg, params, str(out))  # empty: written
    save_pretrained(cfg, params, str(out), overwrite=True)  # its own, unchanged export: replaced
    (out / "notes.txt").write_text("mine")  # the user adds to the export...
    with pytest.raises(ValueError, match="notes.txt added since it was written") as e:
        save_pretrained(cfg, params, str(out), overwrite=True)  # ...and it is theirs now
    assert (out / "notes.txt").read_text() == "mine" and "model.safetensors" in os.listdir(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary directories left behind


def test_failed_save_leaves_nothing_behind(llama_dir, tmp_path):
    cfg, params = load_pretrained(llama_dir)
    params["layers"]["mlp"]["up"]["kernel"] = params["layers"]["mlp"]["up"]["kernel"][:, :, :5]
    with pytest.raises(ValueError, match="pass the matching ModelConfig"):
        save_pretrained(cfg, params, str(tmp_path / "export"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("scheme", [positions.Alibi(), positions.NoPE(), positions.Sinusoidal()])
def test_schemes_without_a_hf_equivalent_are_refused_at_export(scheme, tmp_path):
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, position=scheme)
    with pytest.raises(ValueError, match="no Hugging Face equivalent") as e:
        save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), str(tmp_path / "x"))
    _one_line(e)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fields, message", [
    (dict(family="gpt2", position=positions.Learned(), n_kv_heads=1), "GPT-2 needs biases everywhere"),
    (dict(family="gpt2", position=positions.Learned(), mlp_bias=False), "GPT-2 needs biases everywhere"),
    (dict(sliding_window=8, qkv_bias=True, o_bias=True),
     r"no Hugging Face Llama-family class computes this model \(llama: no sliding window; mistral: no "
     "biases; qwen2: biases on q/k/v only; phi3: no biases"),
    (dict(qkv_bias=True, mlp_bias=True), "qwen2: biases on q/k/v only"),  # Qwen2 would drop the MLP biases
    (dict(position=positions.Rope("linear", factor=2.0, partial_rotary_factor=0.5)),
     "llama: rotates whole heads only.*phi3: default or longrope RoPE only"),
])
def test_layouts_without_a_hf_equivalent_are_refused_at_export(fields, message, tmp_path):
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, **fields)
    with pytest.raises(ValueError, match=message) as e:
        save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), str(tmp_path / "x"))
    _one_line(e)
    assert os.listdir(tmp_path) == []
