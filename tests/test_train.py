"""Training end to end at tiny size: every recipe compiles, staged growth runs and exports, a resumed run
equals the uninterrupted one, sharded runs equal the single-device run, bad configs fail before compiling."""

import dataclasses
import glob
import json
import os
import re

import jax
import numpy as np
import pytest

from ctxjax.train import TrainingDiverged, apply_overrides, load_config, train_and_evaluate
from ctxjax.train.aot import compile_stages
from ctxjax.train.configs import zigzag_shards

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def tiny(name="demo", **overrides):
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py:tiny"))
    config.log_every = 1
    return apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_compiles_every_stage_at_tiny_size_on_8_devices(path):
    rows = compile_stages(load_config(f"{path}:tiny"), jax.devices())
    assert [r["stage"] for r in rows] == list(range(len(rows)))
    assert all(r["temp_bytes"] is None or r["temp_bytes"] > 0 for r in rows)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one-device"))
    config = tiny(**{"eval_at_stage_end": True, "eval.lengths": (16, 64), "eval.target_tokens": 8})
    summary = train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    return workdir, summary


def test_staged_demo_trains_checkpoints_and_exports(one_device_run):
    workdir, summary = one_device_run
    assert summary["final_step"] == 7
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evaluations = [r for r in records if "loss" not in r]
    records = [r for r in records if "loss" in r]
    assert [r["seq_len"] for r in records] == [16, 16, 16, 32, 32, 64, 64]
    assert [r["stage"] for r in records] == [0, 0, 0, 1, 1, 2, 2]
    # Loss by position: the original context (16), then each doubling, as far as each stage reaches.
    assert [sorted(k for k in r if k.startswith("loss/pos_")) for r in records][::2] == [
        ["loss/pos_0-16"], ["loss/pos_0-16"], ["loss/pos_0-16", "loss/pos_16-32"],
        ["loss/pos_0-16", "loss/pos_16-32", "loss/pos_32-64"]]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert any("tokens_per_s" in r and "mfu" in r for r in records)
    # The device's idle time waiting for batches is logged beside the throughput.
    assert all(r["data_wait_s"] >= 0 and 0 <= r["data_wait_fraction"] <= 1 for r in records
               if "tokens_per_s" in r)
    # Evaluation at every stage end: perplexity of the same targets with 16 and 64 tokens of context.
    assert [r["step"] for r in evaluations] == [3, 5, 7]
    assert all(np.isfinite(r["eval/ppl/fixed_target/64"]) for r in evaluations)
    assert sorted(os.listdir(os.path.join(workdir, "eval"))) == ["step_3", "step_5", "step_7"]
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "5", "7"]  # every stage end
    config = json.load(open(os.path.join(workdir, "hf", "config.json")))
    # The last stage ran YaRN at 4x the base context of 16 tokens.
    assert config["rope_scaling"]["rope_type"] == "yarn" and config["rope_scaling"]["factor"] == 4.0
    assert config["max_position_embeddings"] == 64
    # The byte tokenizer has no Hugging Face form: nothing names token ids the exported directory lacks.
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (None, None, None)


def test_extension_table_puts_the_first_stage_end_beside_the_last(one_device_run, capsys):
    from ctxjax import cli

    workdir, _ = one_device_run
    assert cli.main(["extension-table", workdir]) == 0
    summary = open(os.path.join(workdir, "summary.md")).read()
    assert summary in capsys.readouterr().out
    before, after = [line for line in summary.splitlines()
                     if line.startswith("| before") or line.startswith("| after")]
    # No passkey asked at stage ends.
    assert before.startswith("| before extension (step 3, trained at 16) | – |")
    assert after.startswith("| after extension (step 7, trained to 64) |")
    assert "fixed-target ppl 64 (4×)" in summary
    assert cli.main(["extension-table", str(os.path.dirname(workdir))]) == 2  # no checkpoints: one-line error


def test_rerunning_the_same_command_resumes_exactly(one_device_run, tmp_path, caplog):
    reference, _ = one_device_run
    workdir = str(tmp_path)
    first = train_and_evaluate(tiny(), workdir, devices=jax.devices()[:1], stop_after=4)  # mid-stage 1
    assert first["stopped_at"] == 4 and "4" in os.listdir(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:  # as if killed after logging steps 5 and 6
        f.write('{"step": 5, "loss": 99.0}\n{"step": 6, "loss": 99.0}\n')
    # Step 4 is inside stage 1 (YaRN over 16 tokens): another scaling there is refused, not switched to.
    with pytest.raises(ValueError,
                       match="stopped inside stage 1, trained with positions Rope\\(rope_type='yarn'"):
        train_and_evaluate(tiny(rope_scaling="linear"), workdir, devices=jax.devices()[:1])
    # A model field the resumed run cannot apply (the model comes from the checkpoint) is named, not silently
    # dropped; the losses below show it had no effect.
    second = train_and_evaluate(tiny(**{"model.norm_eps": 1e-3}), workdir, devices=jax.devices()[:1])
    assert "resumes with the model of its checkpoint: model.norm_eps changed" in caplog.text
    assert second["start_step"] == 4 and second["final_step"] == 7
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    # each step once, the resumed copy
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 8))
    want, got = losses(reference), losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6)


def test_prefetching_thread_resumes_at_the_exact_next_batch(one_device_run, tmp_path):
    """With the background thread on (it has prepared batches beyond the checkpoint when the run stops), the
    resumed run trains on the batches the uninterrupted run without the thread trained on."""
    reference, _ = one_device_run
    workdir = str(tmp_path)
    train_and_evaluate(tiny(**{"data.prefetch": 2}), workdir, devices=jax.devices()[:1], stop_after=4)
    train_and_evaluate(tiny(**{"data.prefetch": 2}), workdir, devices=jax.devices()[:1])
    want, got = losses(reference), losses(workdir)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6)


def test_data_fsdp_tensor_mesh_on_8_devices_matches_one_device(one_device_run, tmp_path):
    reference, _ = one_device_run
    config = tiny(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    # Stop in stage 1, then resume the 8-device checkpoint on a single device.
    train_and_evaluate(config, str(tmp_path), stop_after=4)
    train_and_evaluate(tiny(), str(tmp_path), devices=jax.devices()[:1])
    want, got = losses(reference), losses(str(tmp_path))
    np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], atol=1e-5)


def test_ring_attention_over_a_sequence_axis_in_zigzag_order_matches_one_device(one_device_run, tmp_path):
    reference, _ = one_device_run
    config = tiny(**{"mesh.data": 2, "mesh.fsdp": 1, "mesh.sequence": 4, "execution.attention": "ring",
                     "execution.attention_block_k": 4})
    train_and_evaluate(config, str(tmp_path), stop_after=4)
    want, got = losses(reference), losses(str(tmp_path))
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], atol=1e-5)
    # A ring-trained checkpoint exports, under the training mesh (as at the end of a run) and without one.
    from ctxjax import cli, hf
    from ctxjax.checkpoint import load_for_inference, load_params

    # How it ran (ring, its tiles) is no part of the model: the checkpoint runs anywhere with any kernel.
    meta, _ = load_params(str(tmp_path))
    assert "attention" not in meta["model_config"] and "attention_block_k" not in meta["model_config"]
    cfg, params, _, _ = load_for_inference(str(tmp_path))
    with jax.set_mesh(jax.make_mesh((2, 4), ("data", "sequence"))):
        hf.save_pretrained(cfg, params, str(tmp_path / "under-mesh"))
    assert cli.main(["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "exported")]) == 0


def test_ulysses_attention_over_a_sequence_axis_matches_one_device(one_device_run, tmp_path):
    """Ulysses in plain order (zig-zag is ring's), its 2 K/V heads copied to the axis' 4 devices."""
    reference, _ = one_device_run
    config = tiny(**{"mesh.data": 2, "mesh.fsdp": 1, "mesh.sequence": 4, "execution.attention": "ulysses",
                     "execution.attention_block_k": 4})
    assert zigzag_shards(config, 4) == 0 and zigzag_shards(tiny(**{"execution.attention": "ring"}), 4) == 4
    train_and_evaluate(config, str(tmp_path), stop_after=4)
    want, got = losses(reference), losses(str(tmp_path))
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], atol=1e-5)


def test_an_imported_sliding_window_is_kept_unless_the_config_sets_one():
    from ctxjax import ModelConfig
    from ctxjax.train.resume import base_model_config

    imported = ModelConfig(sliding_window=7, d_model=32)
    meta = {"model_config": imported.to_dict(), "params_only": True, "step": 0}
    assert base_model_config(tiny(), meta, "w").sliding_window == 7
    widened = base_model_config(tiny(**{"model.sliding_window": 64}), meta, "w")
    assert widened.sliding_window == 64 and widened.d_model == 32


def test_learned_positions_grow_at_the_stage_boundary_and_export(tmp_path):
    summary = train_and_evaluate(tiny("gpt2_extend"), str(tmp_path), devices=jax.devices()[:1])
    config = json.load(open(os.path.join(summary["export_dir"], "config.json")))
    assert config["n_positions"] == 128 and config["architectures"] == ["GPT2LMHeadModel"]


def test_incompatible_work_directory_is_refused(one_device_run, tmp_path):
    workdir, _ = one_device_run
    with pytest.raises(ValueError, match="holds another model's checkpoint.*d_model 32 -> 64.*new --workdir"):
        train_and_evaluate(tiny(**{"model.d_model": 64}), workdir, devices=jax.devices()[:1])


def test_nan_stops_the_run_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    config = tiny()
    # Adam: ~1e30 steps
    config.stages = [dict(steps=2, seq_len=16, lr=1e-3), dict(steps=2, seq_len=16, lr=1e30)]
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 2.*last good checkpoint \\(step 2\\)"):
        train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert os.listdir(os.path.join(tmp_path, "checkpoints")) == ["2"]


@pytest.mark.parametrize("overrides, message", [
    ({"mesh.data": 3}, "cannot fill 8 devices"),
    ({"mesh.sequence": 2}, "set execution.attention='ring' or 'ulysses'"),
    ({"tokens_per_step": 500}, "tokens_per_step=500 is not divisible by seq_len=16"),
    ({"stages": [dict(steps=2, lr=1e-3)]}, r"stage 0: missing field\(s\) \['seq_len'\]"),
    ({"stages": [dict(steps=2, seq_len=16, lr=1e-3, position={"rope_tpye": "yarn"})]}, "no field"),
    ({"rope_scaling": "xpos"}, "rope_scaling='xpos' is unknown"),
    ({"eval_at_stage_end": True, "data.source": "mix:1*stdlib;1*text:/docs/*.txt"},
     "no held-out split is known for data.source='text:/docs/\\*.txt'; set data.eval_source"),
    ({"model.position": {"name": "alibi"}}, "no Hugging Face equivalent.*set --config.export_dir=''"),
])
def test_bad_configs_fail_before_compiling(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny(**overrides), str(tmp_path))
    assert not glob.glob(os.path.join(tmp_path, "checkpoints", "*"))  # nothing trained


def test_unknown_override_keys_are_refused():
    with pytest.raises(ValueError, match="unknown config field 'model.d_modle'"):
        tiny(**{"model.d_modle": 3})
    with pytest.raises(ValueError, match="unknown config field 'execution.atention'"):
        tiny(**{"execution.atention": "xla"})
    with pytest.raises(ValueError, match=r"dict\(...\) and other calls are not; write \{'key': value\}"):
        apply_overrides(tiny(), ["stages=[dict(steps=2, seq_len=16, lr=1e-3)]"])


def test_execution_fields_under_their_old_model_names():
    """An override of a field that moved out of config.model lands in its section; a recipe that still sets
    one in config.model is refused in one line naming the new place, before anything is compiled."""
    config = tiny(**{"model.attention": "blockwise", "model.remat": "full", "model.dtype": "bfloat16"})
    run = config.execution
    assert (run.attention, run.remat, run.dtype) == ("blockwise", "full", "bfloat16")
    assert "attention" not in config.model and "remat" not in config.model
    old_recipe = tiny()
    old_recipe.model.attention = "blockwise"
    with pytest.raises(ValueError, match=re.escape("model.attention is no longer a model field: set "
                                                   "execution.attention in the recipe")) as error:
        compile_stages(old_recipe, jax.devices()[:1])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gemma2"])
def test_imported_hf_model_trains_through_llama_extend_and_exports_what_transformers_reproduces(
        arch, tmp_path):
    """Gemma 3: the stage's YaRN goes to its global layers (plain RoPE here), its local layers keep theirs.
    Gemma 2 trains through its soft-capped logits."""
    import hf_oracle as oracle
    import jax.numpy as jnp
    import run_model
    from transformers import AutoModelForCausalLM

    from ctxjax import cli
    from ctxjax.checkpoint import load_for_inference

    unscaled = {"rope_parameters": {**oracle.GEMMA3["rope_parameters"],
                                    "full_attention": {"rope_type": "default"}}}
    model = getattr(oracle, arch)(vocab_size=258, max_position_embeddings=16,
                                  **(unscaled if arch == "gemma3" else {}))
    workdir = str(tmp_path / "run")
    assert cli.main(["import-hf", oracle.save(model), "--workdir", workdir]) == 0
    summary = train_and_evaluate(tiny("llama_extend"), workdir)  # restored straight into an 8-way FSDP layout
    assert summary["start_step"] == 0 and summary["final_step"] == 2
    cfg, params, _, _ = load_for_inference(workdir)
    assert cfg.d_model == 64 and cfg.position.rope_type == "yarn" and cfg.position.factor == 4.0
    exported = AutoModelForCausalLM.from_pretrained(summary["export_dir"])
    assert type(exported) is type(model)
    toks = oracle.tokens(1, 64, vocab=258)
    ours = np.asarray(run_model.forward(cfg, params, jnp.asarray(toks)))
    assert np.abs(oracle.logits(exported, toks) - ours).max() <= 1e-4
    assert np.abs(oracle.logits(model, toks) - ours).max() > 1e-3  # it did train


def test_rope_scaling_of_a_stage_grows_an_already_scaled_model_and_refuses_another_type():
    """Llama 3.1 comes with llama3 scaling (here 4x over 16 tokens): a longer stage raises its factor and
    keeps its original context and bands; a recipe asking for YaRN would silently have dropped them."""
    from ctxjax import ModelConfig, positions
    from ctxjax.schedule import Stage, model_config_for

    rope = positions.Rope("llama3", factor=4.0, original_max_position_embeddings=16, low_freq_factor=2.0,
                          high_freq_factor=8.0)
    base = ModelConfig(max_seq_len=64, position=rope)
    stage = Stage(index=0, start=0, steps=1, seq_len=256, batch_size=1, lr=1e-3, warmup_steps=0,
                  min_lr_ratio=0.1, position=())
    assert model_config_for(base, stage, "llama3").position == rope.replace(factor=16.0)
    with pytest.raises(ValueError, match="already uses llama3 RoPE scaling.*extend it with llama3"):
        model_config_for(base, stage, "yarn")
    unscaled = model_config_for(base.replace(position=positions.Rope()), stage, "yarn").position
    assert unscaled == positions.Rope("yarn", factor=4.0, original_max_position_embeddings=64)
    # PoSE trains 16-token rows whose positions reach 256: the model is scaled for 256.
    short = dataclasses.replace(stage, seq_len=16)
    pose = model_config_for(base.replace(position=positions.Rope()), short, "yarn", pose_target_len=256)
    assert pose.position == unscaled and pose.max_seq_len == 256


def test_sequence_axis_must_divide_every_stage_length():
    from ctxjax.train.configs import validate

    ring = {"mesh.fsdp": 1, "execution.attention": "ring"}
    config = tiny(**ring, **{"mesh.sequence": 3, "tokens_per_step": 768})
    with pytest.raises(ValueError,
                       match="stage 0: seq_len=16 is not divisible by the sequence mesh axis \\(3\\)"):
        validate(config, 3)
    config = tiny(**ring, **{"mesh.sequence": 16, "tokens_per_step": 1024})
    with pytest.raises(ValueError,
                       match="stage 0: seq_len=16 is not a multiple of 2 x sequence = 32.*ring_zigzag"):
        validate(config, 16)
    validate(apply_overrides(config, ["ring_zigzag=False"]), 16)


def test_init_from_hf_starts_from_the_hf_weights_and_keeps_its_tokenizer(tmp_path):
    import hf_oracle as oracle

    from ctxjax.data import load_tokenizer

    src = oracle.with_tokenizer(oracle.save(oracle.llama(vocab_size=258, max_position_embeddings=16)))
    config = tiny("llama_extend", init_from_hf=src, **{"data.tokenizer": ""})  # "": the model's own tokenizer
    summary = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert summary["final_step"] == 2
    assert load_tokenizer(str(tmp_path / "tokenizer")).encode("w3 w5") == [3, 5]
    assert json.load(open(os.path.join(summary["export_dir"], "config.json")))["hidden_size"] == 64
    # The export at the end of training copies the tokenizer as `ctxjax export` does: with its own config.
    assert (json.load(open(os.path.join(summary["export_dir"], "tokenizer_config.json")))
            == json.load(open(os.path.join(src, "tokenizer_config.json"))))


def test_mixed_precision_and_remat_train(tmp_path):
    """bfloat16 compute with float32 parameters and optimizer state, blocks rematerialised."""
    config = tiny(**{"execution.dtype": "bfloat16", "execution.remat": "dots_no_batch", "export_dir": "",
                     "stages": [dict(steps=2, seq_len=16, lr=3e-3)]})
    summary = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    assert np.isfinite(summary["loss"]) and summary["final_step"] == 2
    from ctxjax.checkpoint import load_for_inference

    _, params, _, _ = load_for_inference(str(tmp_path))
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
