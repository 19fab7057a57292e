"""ctxjax logits equal Hugging Face transformers' (PyTorch, float32) for every rope type, GPT-2, and the
architecture variants of the Llama family; both directions of conversion reproduce the oracle."""

import functools
import json
import re

import hf_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import run_model
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from ctxjax import positions
from ctxjax.execution import ExecutionConfig
from ctxjax.hf import architecture_of, load_pretrained, save_pretrained
from ctxjax.hf.config import hf_config_from_model

TOL = 1e-4


def ctxjax_logits(cfg, params, tokens, pos=None, execution=ExecutionConfig()):
    pos = None if pos is None else jnp.asarray(pos)
    return np.asarray(run_model.forward(cfg, params, jnp.asarray(tokens), pos, execution=execution))


@pytest.mark.parametrize("case", sorted(oracle.ROPE_CASES))
def test_every_rope_type_matches_transformers_below_and_above_original_context(case):
    scaling = oracle.ROPE_CASES[case]
    # 80 > max_position_embeddings (64): where HF's dynamic NTK starts rescaling.
    for length in (5, oracle.L0, oracle.L0 + 1, 3 * oracle.L0, 80):
        # A fresh HF model per length: dynamic and longrope keep state between forward calls.
        model = oracle.llama(scaling)
        cfg, params = load_pretrained(oracle.save(model))
        toks = oracle.tokens(2, length)
        diff = np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(model, toks)).max()
        assert diff <= TOL, f"{case} at length {length}: max |diff| {diff}"


@pytest.mark.parametrize("variant", [
    dict(head_dim=32),  # head_dim override: q_proj has H*head_dim != hidden_size outputs
    dict(tie_word_embeddings=True, num_key_value_heads=1),  # tied + multi-query
    dict(attention_bias=True, mlp_bias=True),
    dict(rope_theta=500000.0, num_key_value_heads=4),
])
def test_llama_variants_match(variant):
    model = oracle.llama(**variant)
    cfg, params = load_pretrained(oracle.save(model))
    toks = oracle.tokens(2, 24)
    assert np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(model, toks)).max() <= TOL


@pytest.mark.parametrize("arch, window", [("qwen2", 0), ("mistral", 0), ("qwen3", 0), ("qwen2", 7),
                                          ("mistral", 7), ("qwen3", 7)],
                         ids=["qwen2", "mistral", "qwen3", "qwen2-window", "mistral-window", "qwen3-window"])
def test_llama_family_relatives_load_and_match(arch, window):
    """Windowed models attend to the last 7 positions only: 20 tokens make the window matter, and the export
    must bring it back (as Mistral, or Qwen2/Qwen3 with every layer windowed). Qwen3 normalises each head of q
    and k, and its head_dim defaults to 128 (here 4 x 128 wide q against a hidden size of 64)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    fields = {k: v for k, v in oracle.LLAMA.items()}
    qwen_window = dict(use_sliding_window=bool(window), sliding_window=window or None, max_window_layers=0)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**fields, **qwen_window)).eval()
    elif arch == "qwen3":
        model = oracle.qwen3(**qwen_window)
    else:
        model = MistralForCausalLM(MistralConfig(**fields, sliding_window=window or None)).eval()
    src = oracle.save(model)
    cfg, params = load_pretrained(src)
    assert cfg.use_qkv_bias == (arch == "qwen2") and not cfg.use_o_bias and cfg.sliding_window == window
    assert cfg.qk_norm == (arch == "qwen3") and cfg.dim_per_head == (128 if arch == "qwen3" else 16)
    toks = oracle.tokens(1, 20)
    reference = oracle.logits(model, toks)
    assert np.abs(ctxjax_logits(cfg, params, toks) - reference).max() <= TOL
    if window:  # the window does change the result
        assert np.abs(ctxjax_logits(cfg.replace(sliding_window=0), params, toks) - reference).max() > 1e-3
    exported = save_pretrained(cfg, params, src + "/export", architecture=architecture_of(src))
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    assert type(reloaded).__name__ == type(model).__name__  # a window-less Mistral stays a Mistral
    assert np.abs(oracle.logits(reloaded, toks) - reference).max() <= TOL


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_windows_on_the_upper_layers_only_load_and_export(arch, tmp_path):
    """max_window_layers=1: layer 0 attends to the whole context, layer 1 to the last 7 positions."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    window = dict(use_sliding_window=True, sliding_window=7, max_window_layers=1)

    def make():
        torch.manual_seed(0)
        if arch == "qwen2":
            return Qwen2ForCausalLM(Qwen2Config(**oracle.LLAMA, **window)).eval()
        return oracle.qwen3(**window)

    src = oracle.save(make())
    cfg, params = load_pretrained(src)
    assert cfg.sliding_window == 7 and cfg.full_attention_layers == (0,)
    toks = oracle.tokens(1, 20)
    reference = oracle.logits(make(), toks)
    assert np.abs(ctxjax_logits(cfg, params, toks) - reference).max() <= TOL
    for uniform in (dict(full_attention_layers=()), dict(sliding_window=0)):  # both kinds of layer matter
        assert np.abs(ctxjax_logits(cfg.replace(**uniform), params, toks) - reference).max() > 1e-3
    out = save_pretrained(cfg, params, str(tmp_path / "export"), architecture=architecture_of(src))
    assert json.load(open(f"{out}/config.json"))["layer_types"] == ["full_attention", "sliding_attention"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == f"{arch.capitalize()}ForCausalLM"
    assert np.abs(oracle.logits(reloaded, toks) - reference).max() <= TOL


PHI3_CASES = {
    "longrope": dict(),
    "partial-window": dict(partial_rotary_factor=0.5, longrope=False, sliding_window=7),
    "longrope-partial-tied": dict(partial_rotary_factor=0.75, tie_word_embeddings=True),
}


@pytest.mark.parametrize("case", sorted(PHI3_CASES))
def test_phi3_loads_matches_below_and_above_its_original_context_and_exports_as_phi3(case, tmp_path):
    """Phi-3 fuses q/k/v and gate/up, rotates part of each head and switches LongRoPE's factor lists past
    L0."""
    make = functools.partial(oracle.phi3, **PHI3_CASES[case])
    src = oracle.save(make())
    cfg, params = load_pretrained(src)
    assert architecture_of(src) == "Phi3ForCausalLM"
    for length in (5, oracle.L0, oracle.L0 + 1, 40):
        toks = oracle.tokens(2, length)  # a fresh HF model per length: LongRoPE keeps state between calls
        assert np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(make(), toks)).max() <= TOL, length
    out = save_pretrained(cfg, params, str(tmp_path / "export"), architecture=architecture_of(src))
    before, after = load_file(f"{src}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert sorted(before) == sorted(after) and all(np.array_equal(before[k], after[k]) for k in before)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == "Phi3ForCausalLM"
    toks = oracle.tokens(2, 40)
    assert np.abs(oracle.logits(reloaded, toks) - oracle.logits(make(), toks)).max() <= TOL


GEMMA3_YARN = {"full_attention": {"rope_type": "yarn", "factor": 4.0,
                                  "original_max_position_embeddings": oracle.L0, "rope_theta": 1e6},
               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
GEMMA_CASES = {
    "gemma3-local-global-local": (oracle.gemma3, dict()),
    "gemma3-yarn-biases-untied": (oracle.gemma3, dict(rope_parameters=GEMMA3_YARN, attention_bias=True,
                                                      tie_word_embeddings=False)),
    # Gemma 3 1B's layout: no layer_types, every sixth layer global (sliding_window_pattern's default).
    "gemma3-pattern-of-six": (oracle.gemma3, dict(num_hidden_layers=7, layer_types=None)),
    # transformers' Gemma 3 ignores an attention cap in its config (and caps the logits): ctxjax does the
    # same.
    "gemma3-caps": (oracle.gemma3, dict(attn_logit_softcapping=0.05, final_logit_softcapping=0.5)),
    # Gemma 2: soft caps on attention scores and logits, every other layer local by default, one RoPE.
    "gemma2-soft-caps": (oracle.gemma2, dict()),
    "gemma2-yarn-untied": (oracle.gemma2,
                           dict(rope_parameters={**GEMMA3_YARN["full_attention"], "rope_theta": 1e4},
                                tie_word_embeddings=False, layer_types=None)),
}


def _legacy_gemma3_config(hf_dir: str) -> None:
    """Rewrite config.json as transformers 4.x wrote Gemma 3 (rope_theta, rope_scaling, rope_local_base_freq,
    sliding_window_pattern) to check that ctxjax reads those too."""
    path = f"{hf_dir}/config.json"
    config = json.load(open(path))
    per_type = config.pop("rope_parameters")
    full, local = dict(per_type["full_attention"]), per_type["sliding_attention"]
    config.update(rope_theta=full.pop("rope_theta"), rope_local_base_freq=local["rope_theta"],
                  rope_scaling=full)
    json.dump(config, open(path, "w"))


@pytest.mark.parametrize("case", sorted(GEMMA_CASES))
def test_gemma_matches_inside_and_past_its_window_and_round_trips(case, tmp_path):
    """Gemma 3 alternates windowed local layers (RoPE base 1e4) with global ones (1e6, scaled), normalises q,
    k and each branch's output with (1 + w) RMSNorms and scales embeddings by sqrt(d); Gemma 2 has no q/k
    norms, one RoPE and soft caps."""
    maker, overrides = GEMMA_CASES[case]
    make = functools.partial(maker, **overrides)
    src = oracle.save(make())
    cfg, params = load_pretrained(src)
    architecture = "Gemma3ForCausalLM" if case.startswith("gemma3") else "Gemma2ForCausalLM"
    assert cfg.family == "gemma" and architecture_of(src) == architecture and cfg.sliding_window == 8
    assert cfg.full_attention_layers == ((5,) if case.endswith("pattern-of-six") else (1,))
    for length in (8, oracle.L0 + 1, 40):  # at, past the window; past L0
        toks = oracle.tokens(2, length)
        assert np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(make(), toks)).max() <= TOL, length
    blockwise = ExecutionConfig(attention="blockwise", attention_block_q=16, attention_block_k=16)
    ours = ctxjax_logits(cfg, params, toks, execution=blockwise)
    assert np.abs(ours - oracle.logits(make(), toks)).max() <= TOL
    out = save_pretrained(cfg, params, str(tmp_path / "export"))  # the class follows from the model
    before, after = load_file(f"{src}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert sorted(before) == sorted(after) and all(np.array_equal(before[k], after[k]) for k in before)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == architecture
    assert np.abs(oracle.logits(reloaded, toks) - oracle.logits(make(), toks)).max() <= TOL
    if architecture == "Gemma3ForCausalLM":
        _legacy_gemma3_config(src)
        assert load_pretrained(src)[0] == cfg


@pytest.mark.parametrize("kind", ["sliding_attention", "full_attention"])
def test_gemma3_with_layers_of_one_kind_rotates_them_with_that_kinds_rope(kind, tmp_path):
    make = functools.partial(oracle.gemma3, layer_types=[kind] * 3)
    cfg, params = load_pretrained(oracle.save(make()))
    assert cfg.local_position is None and cfg.position.theta == (1e4 if kind == "sliding_attention" else 1e6)
    toks = oracle.tokens(2, 40)
    assert np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(make(), toks)).max() <= TOL
    reloaded = AutoModelForCausalLM.from_pretrained(save_pretrained(cfg, params, str(tmp_path / "export")))
    assert np.abs(oracle.logits(reloaded, toks) - oracle.logits(make(), toks)).max() <= TOL


def test_a_multimodal_gemma3s_language_model_imports_and_exports_as_a_text_model(tmp_path):
    """Gemma 3's 128k models ship with a vision tower: ctxjax reads the language model and writes it back as a
    text-only Gemma3ForCausalLM that computes what the original does on text."""
    src = oracle.save(oracle.gemma3_multimodal())
    cfg, params = load_pretrained(src)
    assert cfg.family == "gemma" and cfg.full_attention_layers == (1,)
    assert architecture_of(src) == "Gemma3ForConditionalGeneration"
    toks = oracle.tokens(2, 40, vocab=90)  # below the image tokens
    reference = oracle.logits(oracle.gemma3_multimodal(), toks)
    assert np.abs(ctxjax_logits(cfg, params, toks) - reference).max() <= TOL
    reloaded = AutoModelForCausalLM.from_pretrained(save_pretrained(cfg, params, str(tmp_path / "text")))
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    assert np.abs(oracle.logits(reloaded, toks) - reference).max() <= TOL


def test_gemma_only_features_keep_a_model_from_exporting_as_llama():
    """A Llama-family class scales scores by 1/sqrt(head_dim) and caps nothing, Gemma 3 caps no attention
    scores: such models are refused, not exported with silently other logits."""
    cfg, params = load_pretrained(oracle.save(oracle.llama()))
    for change, reason in ((dict(query_pre_attn_scalar=4.0), "scores scaled by 1/sqrt(head_dim) only"),
                           (dict(attn_logit_softcapping=5.0), "no soft caps")):
        with pytest.raises(ValueError, match=f"llama: {re.escape(reason)}"):
            hf_config_from_model(cfg.replace(**change))
    gemma3, _ = load_pretrained(oracle.save(oracle.gemma3()))
    with pytest.raises(ValueError, match="Gemma 3 .q/k norms. caps no attention scores"):
        hf_config_from_model(gemma3.replace(attn_logit_softcapping=30.0))


def test_gemma3_extends_its_global_layers_only():
    """Context extension rescales the global layers' RoPE (the local ones never look past their window), and a
    Gemma 3 export keeps local and global settings apart."""
    cfg, params = load_pretrained(oracle.save(oracle.gemma3()))
    stretched = cfg.replace(position=cfg.position.stretched("linear", 256, cfg.max_seq_len), max_seq_len=256)
    assert stretched.position.factor == 16.0 and stretched.local_position == cfg.local_position
    config = hf_config_from_model(stretched)
    assert config["rope_parameters"]["full_attention"]["factor"] == 16.0
    assert config["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 1e4}
    assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]


@pytest.mark.parametrize("position, own_class, want", [
    (positions.Rope("yarn", factor=4.0, original_max_position_embeddings=oracle.L0), "Phi3ForCausalLM",
     "LlamaForCausalLM"),
    (positions.Rope("default", partial_rotary_factor=0.5), "", "Phi3ForCausalLM"),
], ids=["phi3-after-yarn-as-llama", "partial-rotary-as-phi3"])
def test_export_picks_a_class_that_computes_the_model(position, own_class, want, tmp_path):
    """Phi-3 cannot express YaRN, so an imported Phi-3 rescaled with it exports as Llama; Llama rotates whole
    heads, so a model of no particular class that rotates part of each head exports as Phi-3 (as Llama its
    logits were silently wrong)."""
    cfg, params = load_pretrained(oracle.save(oracle.phi3(longrope=False)), position=position)
    out = save_pretrained(cfg, params, str(tmp_path / "export"), architecture=own_class)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded).__name__ == want
    toks = oracle.tokens(2, 40)
    assert np.abs(oracle.logits(reloaded, toks) - ctxjax_logits(cfg, params, toks)).max() <= TOL


def test_explicit_positions_match_transformers_position_ids():
    model = oracle.llama(oracle.ROPE_CASES["yarn"])
    cfg, params = load_pretrained(oracle.save(model))
    toks = oracle.tokens(2, 12)
    pos = np.stack([np.arange(12) + 7, np.arange(12) * 3])
    diff = np.abs(ctxjax_logits(cfg, params, toks, pos) - oracle.logits(model, toks, pos)).max()
    assert diff <= TOL


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_matches(tied):
    model = oracle.gpt2(tie_word_embeddings=tied)
    cfg, params = load_pretrained(oracle.save(model))
    assert cfg.family == "gpt2" and cfg.position.name == "learned" and cfg.tied == tied
    toks = oracle.tokens(2, 64)
    assert np.abs(ctxjax_logits(cfg, params, toks) - oracle.logits(model, toks)).max() <= TOL


@pytest.mark.parametrize("method", ["interpolate", "copy"])
def test_gpt2_with_extended_position_table_exports_new_n_positions(method, tmp_path):
    model = oracle.gpt2()
    cfg, params = load_pretrained(oracle.save(model))
    params = positions.extend(params, 256, method=method)
    cfg = cfg.replace(max_seq_len=256)
    toks = oracle.tokens(1, 200)
    ours = ctxjax_logits(cfg, params, toks)
    out = save_pretrained(cfg, params, str(tmp_path / "gpt2-256"))
    assert json.load(open(f"{out}/config.json"))["n_positions"] == 256
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert np.abs(oracle.logits(reloaded, toks) - ours).max() <= TOL


@pytest.mark.parametrize("make", [
    lambda: oracle.llama(oracle.ROPE_CASES["llama3"], tie_word_embeddings=True),
    lambda: oracle.llama(oracle.ROPE_CASES["longrope"], attention_bias=True),
    lambda: oracle.llama(oracle.ROPE_CASES["dynamic"]),
    lambda: oracle.qwen3(oracle.ROPE_CASES["yarn"], attention_bias=True),
    lambda: oracle.gpt2(),
], ids=["llama3-tied", "longrope-bias", "dynamic", "qwen3-yarn-bias", "gpt2"])
def test_round_trip_hf_to_ctxjax_to_hf_is_bit_identical_and_reproduces_logits(make, tmp_path):
    model = make()
    src = oracle.save(model)
    cfg, params = load_pretrained(src)
    out = save_pretrained(cfg, params, str(tmp_path / "export"))
    before, after = load_file(f"{src}/model.safetensors"), load_file(f"{out}/model.safetensors")
    before = {k.removeprefix("transformer."): v for k, v in before.items() if not k.endswith(".attn.bias")}
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and np.array_equal(before[name], after[name]), name
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    # dynamic/longrope: fresh models on both sides, one forward each, at a length past L0.
    toks = oracle.tokens(2, 3 * oracle.L0)
    assert np.abs(oracle.logits(reloaded, toks) - oracle.logits(make(), toks)).max() <= TOL


def test_sharded_checkpoints_load_and_export(tmp_path):
    model = oracle.llama()
    src = oracle.save(model, max_shard_size="50KB")
    assert any(f.endswith(".index.json") for f in oracle.files(src))
    cfg, params = load_pretrained(src)
    out = save_pretrained(cfg, params, str(tmp_path / "sharded"), max_shard_bytes=60_000)
    assert "model.safetensors.index.json" in oracle.files(out)
    toks = oracle.tokens(1, 10)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert np.abs(oracle.logits(reloaded, toks) - oracle.logits(model, toks)).max() <= TOL


def test_bfloat16_checkpoint_round_trips_as_bfloat16(tmp_path):
    import torch

    model = oracle.llama()
    src = oracle.save(model, dtype=torch.bfloat16)
    cfg, params = load_pretrained(src)
    assert cfg.param_dtype == "bfloat16" and params["embed"]["embedding"].dtype == jnp.bfloat16
    out = save_pretrained(cfg, params, str(tmp_path / "bf16"))
    tensors = load_file(f"{out}/model.safetensors")
    assert all(str(t.dtype) == "bfloat16" for t in tensors.values())
    assert json.load(open(f"{out}/config.json"))["torch_dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    # float32 params saved under a bfloat16 config are written as bfloat16, as config.json then says.
    as_float32 = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    out = save_pretrained(cfg, as_float32, str(tmp_path / "cast"))
    assert all(str(t.dtype) == "bfloat16" for t in load_file(f"{out}/model.safetensors").values())
