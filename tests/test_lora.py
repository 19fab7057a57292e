"""LoRA adapters: fresh ones change nothing, trained ones merge exactly, only adapters (and the named groups)
train, frozen weights cost no weight gradients, and a LongLoRA run (adapters + norms + S²-Attn) from a Hugging
Face model exports a plain model that transformers loads with the trained model's full-attention logits."""

import collections
import contextlib
import io
import json
import os
import re

import hf_oracle as oracle
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.ad_checkpoint import print_saved_residuals
from peft import PeftModel
from test_train import tiny
from test_train_step import batch
from transformers import AutoModelForCausalLM

from ctxjax import ModelConfig
from ctxjax.adaptation import AdaptationConfig
from ctxjax.execution import ExecutionConfig
from ctxjax.flops import flops_per_token, frozen_matmul_params, matmul_params
from ctxjax import cli
from ctxjax.checkpoint import Checkpointer, adaptation_of, load_for_inference
from ctxjax.hf import architecture_of, load_pretrained
from ctxjax.hf.peft import save_peft_adapter
from ctxjax.lora import add_adapters, merge_adapters, split_adapters
from ctxjax.model import Transformer, init_params
from ctxjax.optimizer import trainable_labels
from ctxjax.train import apply_overrides, train_and_evaluate
from ctxjax.train.state import abstract_params, init_state, state_shardings
from ctxjax.sharding import make_mesh
from ctxjax.train.step import make_train_step

CFG = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
LORA = AdaptationConfig(lora_rank=4, lora_targets=("q", "v", "o", "gate", "down"))
NONE = AdaptationConfig()
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 50, (2, 16)))


def logits(cfg, params, adaptation=LORA):
    return np.asarray(Transformer(cfg, adaptation=adaptation).apply({"params": params}, TOKENS))


def with_random_b(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape)
        if path[-1].key == "lora_b" else x, params)


def test_fresh_adapters_change_nothing_and_trained_ones_merge_into_the_kernels():
    params = init_params(CFG, jax.random.PRNGKey(0), adaptation=LORA)
    assert params["layers"]["attn"]["o"]["lora_a"].shape == (2, 4, 8, 4)  # o contracts (heads, head_dim)
    assert "lora_a" not in params["layers"]["attn"]["k"] and "lora_a" not in params["layers"]["mlp"]["up"]
    base = merge_adapters(params, LORA)
    assert not split_adapters(base)[1] and "lora_a" not in base["layers"]["attn"]["q"]
    np.testing.assert_array_equal(logits(CFG, params), logits(CFG, base, NONE))
    assert merge_adapters(base, NONE) is base  # a plain model comes back as it is

    trained = with_random_b(params)
    assert np.abs(logits(CFG, trained) - logits(CFG, params)).max() > 0.1
    for host in (False, True):  # jax arrays, and numpy arrays as checkpoints and export give them
        merged = merge_adapters(jax.device_get(trained) if host else trained, LORA)
        assert isinstance(merged["layers"]["attn"]["q"]["kernel"], np.ndarray) == host
        np.testing.assert_allclose(logits(CFG, merged, NONE), logits(CFG, trained), atol=1e-5)

    for wrong in (0, 2 * LORA.lora_rank):  # alpha / rank would scale the update wrongly (or divide by zero)
        with pytest.raises(ValueError, match=f"rank \\[{LORA.lora_rank}\\] but the adaptation says "
                                             f"lora_rank={wrong}"):
            merge_adapters(trained, LORA.replace(lora_rank=wrong))

    # Imported weights get fresh adapters where the adaptation wants them: the same tree, the same outputs.
    imported = add_adapters(base, CFG, LORA, jax.random.PRNGKey(1))
    assert jax.tree.structure(imported) == jax.tree.structure(params)
    np.testing.assert_array_equal(logits(CFG, imported), logits(CFG, base, NONE))
    assert add_adapters(base, CFG, NONE, jax.random.PRNGKey(1)) is base  # no rank: nothing to add


def test_imported_weights_get_fresh_adapters_that_change_nothing_and_load_pretrained_refuses_a_lora_rank():
    model = oracle.llama()
    src = oracle.save(model)
    with pytest.raises(ValueError, match=re.escape(
            "lora_rank is not part of what a model is but of AdaptationConfig: give it as "
            "ctxjax.lora.add_adapters(params, cfg, AdaptationConfig(lora_rank=...), rng)")) as error:
        load_pretrained(src, lora_rank=4)
    assert "\n" not in str(error.value)
    cfg, params = load_pretrained(src)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))  # host arrays, as before
    adaptation = AdaptationConfig(lora_rank=4)
    params = add_adapters(params, cfg, adaptation, jax.random.PRNGKey(0))
    assert params["layers"]["attn"]["q"]["lora_a"].shape[-1] == 4
    toks = oracle.tokens(1, 12)
    ours = np.asarray(Transformer(cfg, adaptation=adaptation).apply({"params": params}, jnp.asarray(toks)))
    assert np.abs(ours - oracle.logits(model, toks)).max() <= 1e-4


def saved_activations(cfg, execution, adaptation):
    """Shapes of the activations the backward pass keeps from the forward (e.g. 'f32[2,16,32]'), as a
    Counter."""
    model = Transformer(cfg, execution, adaptation)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda p: model.apply({"params": p}, TOKENS, return_hidden=True).sum(),
                              init_params(cfg, jax.random.PRNGKey(0), adaptation=adaptation))
    lines = out.getvalue().splitlines()
    return collections.Counter(line.split()[0] for line in lines if " output of " in line)


@pytest.mark.parametrize("remat", ["dots_no_batch", "dots"])
def test_remat_policies_recompute_adapter_outputs_instead_of_keeping_them(remat):
    """Matmul-keeping policies would keep each adapter's (x A) B beside x W; only the rank-wide x A is
    kept."""
    run = ExecutionConfig(remat=remat)
    with_adapters, without = saved_activations(CFG, run, LORA), saved_activations(CFG, run, NONE)
    extra = with_adapters - without
    # Only x A of the 5 targets, [layers, batch x length, rank]: no (x A) B of [.., d_out].
    assert not without - with_adapters and extra == {"f32[2,32,4]": 5}, extra


def _fresh_state(tx):
    _, shardings = state_shardings(CFG, tx, make_mesh({}, jax.devices()[:1]), LORA)
    return init_state(CFG, tx, jax.random.PRNGKey(0), shardings, LORA)


def test_only_adapters_and_named_groups_train_and_frozen_weights_get_no_weight_gradient():
    labels = trainable_labels(abstract_params(CFG, LORA), "final_norm")
    assert labels["layers"]["attn"]["q"] == {"kernel": "freeze", "lora_a": "train", "lora_b": "train"}
    assert labels["final_norm"]["scale"] == "train" and labels["embed"]["embedding"] == "freeze"
    tx = optax.multi_transform({"train": optax.adam(1e-2), "freeze": optax.set_to_zero()}, labels)
    before = _fresh_state(tx)
    before["params"] = with_random_b(before["params"])  # else A's first gradient is 0 (B = 0), as in any LoRA
    model = Transformer(CFG, adaptation=LORA)
    with_labels = jax.jit(make_train_step(model, tx, labels=labels))
    after, metrics = with_labels(jax.tree.map(jnp.copy, before), batch(length=16))
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before["params"], after["params"])
    assert jax.tree.map(lambda label, did: did == (label == "train"), labels, changed) == jax.tree.map(
        lambda _: True, labels)

    # Differentiating only the trainable leaves gives the same step as zeroing the others' updates...
    plain, _ = jax.jit(make_train_step(model, tx))(jax.tree.map(jnp.copy, before), batch(length=16))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain["params"], after["params"])
    # ...without computing the frozen weights' gradients: the compiled step does fewer FLOPs.
    flops = [f.lower(before, batch(length=16)).compile().cost_analysis()["flops"]
             for f in (with_labels, jax.jit(make_train_step(model, tx)))]
    assert flops[0] < 0.9 * flops[1], flops
    # MFU counts 4 FLOPs per token for each frozen matmul weight (forward + input gradient), not 6.
    for cfg in (CFG, CFG.replace(tie_embeddings=True)):  # tied: the frozen embedding is the output projection
        shapes = abstract_params(cfg, LORA)
        frozen = frozen_matmul_params(cfg, shapes, trainable_labels(shapes, "final_norm"))
        assert frozen == matmul_params(cfg)  # every matmul weight but the adapters is frozen
    assert flops_per_token(CFG, 16, frozen) == flops_per_token(CFG, 16) - 2 * matmul_params(CFG)


def test_lora_fine_tune_of_an_imported_model_resumes_and_exports_a_plain_model_with_its_logits(tmp_path):
    src, work = oracle.save(oracle.llama(vocab_size=258, max_position_embeddings=16)), str(tmp_path / "work")
    assert cli.main(["import-hf", src, "--workdir", work]) == 0
    # LongLoRA's recipe at toy size, as the README's command line gives it: adapters (here on q and v),
    # trainable norms, S²-Attn in groups of 8 positions. The recipe's own model fields describe another model:
    # ignored.
    overrides = ["adaptation.lora_rank=4", "adaptation.lora_targets=q,v", "optimizer.trainable=norm",
                 "adaptation.shifted_sparse_group=8"]
    config = apply_overrides(tiny("llama_extend"), overrides)
    assert train_and_evaluate(config, work, devices=jax.devices()[:1], stop_after=1)["stopped_at"] == 1
    # Other adapters (their shapes), other trained groups (the optimizer state holds exactly theirs) or
    # another adapter scale: refused, naming what the checkpoint was trained with.
    for change, named in (("adaptation.lora_rank=8", "adaptation.lora_rank=4"),
                          ("optimizer.trainable=embed,norm", "optimizer.trainable='norm'"),
                          ("adaptation.lora_alpha=32.0", "adaptation.lora_alpha=16.0")):
        with pytest.raises(ValueError, match=re.escape(f"was trained with {named}; resume with the same")):
            train_and_evaluate(apply_overrides(tiny("llama_extend"), [*overrides, change]), work)
    summary = train_and_evaluate(config, work, devices=jax.devices()[:1])  # the same command resumes
    assert (summary["start_step"], summary["final_step"]) == (1, 2)

    with Checkpointer(work, read_only=True) as checkpointer:
        state, _, meta = checkpointer.restore(checkpointer.saved_shapes(), summary["final_step"])
    assert meta["adaptation"]["lora_rank"] == 4 and meta["adaptation"]["shifted_sparse_group"] == 8
    assert "lora_rank" not in meta["model_config"] and "shifted_sparse_group" not in meta["model_config"]
    inference = load_for_inference(work)  # adapters merged: a plain model, run with full attention
    assert not split_adapters(inference.params)[1] and inference.hf_architecture == "LlamaForCausalLM"
    params, (_, imported) = state["params"], load_pretrained(src, param_dtype="float32")
    for frozen in (("embed", "embedding"), ("layers", "attn", "q", "kernel"),
                   ("layers", "mlp", "up", "kernel")):
        np.testing.assert_array_equal(_at(params, frozen), _at(imported, frozen))
    assert np.abs(params["layers"]["attn"]["v"]["lora_b"]).max() > 0
    assert np.any(params["layers"]["attn_norm"]["scale"] != imported["layers"]["attn_norm"]["scale"])
    # Adam keeps moments for the adapters and norms only: far fewer numbers than the model has.
    moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if getattr(x, "ndim", 0) > 0)
    assert moments < 0.2 * sum(x.size for x in jax.tree.leaves(params))

    hf_dir = summary["export_dir"]
    assert json.load(open(os.path.join(hf_dir, "config.json")))["architectures"] == ["LlamaForCausalLM"]
    exported = AutoModelForCausalLM.from_pretrained(hf_dir)
    toks = oracle.tokens(2, 24, vocab=258)
    trained_cfg = ModelConfig.from_dict(meta["model_config"])
    full_attention = adaptation_of(meta).replace(shifted_sparse_group=0)
    trained = Transformer(trained_cfg, adaptation=full_attention)
    ours = np.asarray(trained.apply({"params": params}, jnp.asarray(toks)))
    merged = np.asarray(Transformer(inference.cfg).apply({"params": inference.params}, jnp.asarray(toks)))
    np.testing.assert_allclose(merged, ours, atol=1e-4)
    np.testing.assert_allclose(oracle.logits(exported, toks), ours, atol=1e-4)

    # Or the adapters apart, as PEFT loads them on top of the rest (here with the trained norms).
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    assert cli.main(["export", "--workdir", work, "--out", base_dir, "--peft-adapter", adapter_dir]) == 0
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                             adapter_dir).eval()
    np.testing.assert_allclose(oracle.logits(with_adapter, toks), ours, atol=1e-4)
    adapter_config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    assert adapter_config["target_modules"] == ["q_proj", "v_proj"]
    # The imported step-0 checkpoint has no adapters: refused in one line, nothing written.
    assert cli.main(["export", "--workdir", work, "--step", "0", "--out", str(tmp_path / "x"),
                     "--peft-adapter", str(tmp_path / "y")]) == 2
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


@pytest.mark.parametrize("arch", ["phi3", "gemma3"])
def test_peft_adapters_of_phi3s_fused_projections_and_of_gemma3_reproduce_the_model(arch, tmp_path):
    """Phi-3's qkv_proj and gate_up_proj take one adapter each: the parts' A's stacked, B's block-diagonal,
    the rank and alpha raised together (rank_pattern, alpha_pattern); k has no adapter here, so its rows get
    no update. Gemma 3 names its projections as Llama does."""
    from ctxjax.hf import save_pretrained

    model = getattr(oracle, arch)()
    src = oracle.save(model)
    adaptation = AdaptationConfig(lora_rank=4, lora_targets=("q", "v", "o", "up", "gate"))
    cfg, params = load_pretrained(src)
    params = jax.device_get(with_random_b(add_adapters(params, cfg, adaptation, jax.random.PRNGKey(0))))
    base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
    architecture = architecture_of(src)  # Phi-3 stays Phi-3 (fused projections), as the imported model was
    with pytest.raises(ValueError, match="the params hold LoRA adapters: merge them first"):
        save_pretrained(cfg, params, base_dir, architecture=architecture)
    save_pretrained(cfg, split_adapters(params)[0], base_dir, architecture=architecture)
    save_peft_adapter(cfg, params, adaptation, adapter_dir, base_model=base_dir, architecture=architecture)
    config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    if arch == "phi3":
        assert config["rank_pattern"] == {"qkv_proj": 8, "gate_up_proj": 8}
        assert config["alpha_pattern"]["qkv_proj"] == 32
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                             adapter_dir).eval()
    toks = oracle.tokens(2, 24)
    ours = np.asarray(Transformer(cfg, adaptation=adaptation).apply({"params": params}, jnp.asarray(toks)))
    without = np.asarray(Transformer(cfg).apply({"params": split_adapters(params)[0]}, jnp.asarray(toks)))
    assert np.abs(ours - without).max() > 1e-3  # the adapters matter
    np.testing.assert_allclose(oracle.logits(with_adapter, toks), ours, atol=1e-4)


def test_peft_export_refuses_gpt2s_fused_projections(tmp_path):
    cfg = ModelConfig(family="gpt2", vocab_size=50, d_model=32, n_layers=1, n_heads=4)
    adaptation = AdaptationConfig(lora_rank=2)
    params = init_params(cfg, jax.random.PRNGKey(0), adaptation=adaptation)
    with pytest.raises(ValueError,
                       match="Llama-family and Gemma models only; GPT-2 fuses q, k, v.*export the merged"):
        save_peft_adapter(cfg, params, adaptation, str(tmp_path / "a"), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a")


def test_lora_needs_a_pretrained_model_and_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="adaptation.lora_rank=4 trains adapters on a pretrained model.*"
                                         "ctxjax import-hf"):
        train_and_evaluate(tiny("demo", **{"adaptation.lora_rank": 4}), str(tmp_path))
    with pytest.raises(ValueError, match=r"--config.adaptation.lora_rank=four does not fit the field's "
                                         r"type \(int"):
        apply_overrides(tiny("demo"), ["adaptation.lora_rank=four"])
    with pytest.raises(ValueError, match="stage 0: seq_len=16 is not longer than "
                                         "adaptation.shifted_sparse_group=16"):
        train_and_evaluate(tiny("demo", **{"adaptation.shifted_sparse_group": 16}), str(tmp_path))
    # The names from before the split: an override lands in its new section, a recipe setting one in
    # config.model is refused naming the new place.
    moved = apply_overrides(tiny("demo"), ["model.lora_rank=4", "model.shifted_sparse_group=8"]).adaptation
    assert (moved.lora_rank, moved.shifted_sparse_group) == (4, 8)
    old_recipe = tiny("demo")
    old_recipe.model.lora_rank = 4
    with pytest.raises(ValueError, match=re.escape("model.lora_rank is no longer a model field: set "
                                                   "adaptation.lora_rank in the recipe")):
        train_and_evaluate(old_recipe, str(tmp_path))
    assert not list((tmp_path / "checkpoints").glob("*"))  # nothing trained


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize("fields, message", [
    (dict(lora_rank=-1), "AdaptationConfig: lora_rank=-1 must be an int >= 0"),
    (dict(lora_rank=4, lora_targets=("q", "x")), "names ['x']; choose from"),
    (dict(lora_rank=4, lora_targets=("gate",)), "gpt2 model: ('q', 'k', 'v', 'o', 'up', 'down')"),
    (dict(lora_rank=4, lora_targets="qv"), "AdaptationConfig: lora_targets='qv' must name projections"),
    (dict(lora_rank=4, lora_alpha=0.0), "AdaptationConfig: lora_alpha=0.0 must be > 0"),
    (dict(shifted_sparse_group=3), "AdaptationConfig: shifted_sparse_group=3 must be an even int >= 0"),
])
def test_bad_lora_settings_are_one_line_errors(fields, message):
    """Settings wrong in themselves fail at construction; targets a model lacks when given to that model."""
    gpt2 = ModelConfig(family="gpt2", vocab_size=50, d_model=32, n_layers=1, n_heads=4, max_seq_len=16)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        adaptation = AdaptationConfig(**fields)
        adaptation.check(gpt2)
    assert "\n" not in str(error.value)
    if "choose from" in message or "gpt2 model" in message:  # the model refuses it too, before any init
        with pytest.raises(ValueError, match=re.escape(message)):
            init_params(gpt2, jax.random.PRNGKey(0), adaptation=adaptation)


def test_longlora_compiles_on_the_pod_layout_of_8_devices():
    """Adapters sharded like their projections (fsdp x tensor) and S²-Attn on the ring kernel (sequence 2)."""
    from ctxjax.train import load_config
    from ctxjax.train.aot import compile_stages

    pod = os.path.join(os.path.dirname(__file__), "..", "configs", "tpu_pod.py:tiny")
    config = apply_overrides(load_config(pod), ["adaptation.lora_rank=4", "optimizer.trainable=embed,norm",
                                                "adaptation.shifted_sparse_group=16"])
    rows = compile_stages(config, jax.devices())
    assert [(r["seq_len"], r["attention"]) for r in rows] == [(64, "ring"), (128, "ring")]
