"""ctxjax.checkpoint: save/restore of train state, data state and metadata; retention; async saves; restoring
onto other device layouts; params-only checkpoints; refusal of another run's work directory."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from ctxjax import positions
from ctxjax.adaptation import AdaptationConfig
from ctxjax.checkpoint import (Checkpointer, adaptation_of, check_compatible, checkpoint_meta,
                               load_for_inference, load_params, model_config_of, write_params_checkpoint)
from ctxjax.config import ModelConfig
from ctxjax.lora import merge_adapters, split_adapters
from ctxjax.model import init_params

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
DATA_STATE = {"epoch": 1, "document": 17, "offsets": [3, 5]}


@functools.cache
def model_params(seed=0):
    return jax.tree.map(np.asarray, init_params(CFG, jax.random.PRNGKey(seed)))


@jax.jit
def _one_adamw_step(params):
    optimizer = optax.adamw(1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = optimizer.update(grads, optimizer.init(params), params)
    return {"step": jnp.asarray(3), "params": optax.apply_updates(params, updates), "opt_state": opt_state}


def train_state():
    """{'step', 'params', 'opt_state'} after one adamw update, so mu and nu are not trivially zero."""
    return _one_adamw_step(model_params())


def abstract(tree, sharding_of=lambda leaf: SingleDeviceSharding(jax.devices()[0])):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_optimizer_state_data_state_and_meta(tmp_path):
    state = train_state()
    meta = checkpoint_meta(CFG, train_config={"lr": 1e-2}, stage=1)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(3, state, data_state=DATA_STATE, meta=meta, force=True)
    with Checkpointer(tmp_path) as ckpt:  # a new process resuming
        assert ckpt.latest_step() == 3
        restored, data_state, restored_meta = ckpt.restore(abstract(state))
        assert ckpt.restore_meta() == restored_meta
    assert_trees_equal(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)  # NamedTuples survive
    assert data_state == DATA_STATE
    assert restored_meta == {**meta, "step": 3, "params_only": False}
    assert ModelConfig.from_dict(restored_meta["model_config"]) == CFG


def test_saves_on_interval_keeps_max_to_keep_and_never_overwrites(tmp_path):
    state = {"params": {"w": jnp.zeros(4)}, "step": jnp.asarray(0)}
    meta = checkpoint_meta(CFG)
    with Checkpointer(tmp_path, max_to_keep=2, save_every=2, async_save=False) as ckpt:
        started = [ckpt.save(s, state, data_state={}, meta=meta) for s in range(1, 7)]
        assert started == [False, True, False, True, False, True]
        assert ckpt.all_steps() == [4, 6]
        assert ckpt.save(7, state, data_state={}, meta=meta, force=True)  # e.g. the last step of a run
        assert ckpt.all_steps() == [6, 7]
        assert not ckpt.save(7, state, data_state={}, meta=meta, force=True)
        assert not ckpt.should_save(6) and ckpt.should_save(8)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]  # no temporary leftovers


def test_async_save_survives_deleting_the_state_before_wait(tmp_path):
    state = train_state()
    expected = jax.tree.map(np.asarray, state)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        assert ckpt.save(5, state, data_state=DATA_STATE, meta=checkpoint_meta(CFG), force=True)
        for leaf in jax.tree.leaves(state):  # what buffer donation in the next train step does
            leaf.delete()
        ckpt.wait()
        assert ckpt.all_steps() == [5]
        restored, _, _ = ckpt.restore(abstract(expected))
    assert_trees_equal(restored, expected)


def test_checkpoint_sharded_on_8_devices_restores_on_1_device_and_on_a_2x4_mesh(tmp_path):
    mesh8 = Mesh(np.array(jax.devices()).reshape(8), ("fsdp",))
    state = train_state()

    def shard_rows(x):  # arrays whose first axis divides by 8 are split over all 8 devices
        spec = PartitionSpec("fsdp") if x.ndim and x.shape[0] % 8 == 0 else PartitionSpec()
        return NamedSharding(mesh8, spec)

    sharded = jax.tree.map(lambda x: jax.device_put(x, shard_rows(x)), state)
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(sharded))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, sharded, data_state={}, meta=checkpoint_meta(CFG), force=True)

        on_one, _, _ = ckpt.restore(abstract(state))
        assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(on_one))
        assert_trees_equal(on_one, state)

        mesh24 = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))

        def last_axis(x):
            return NamedSharding(mesh24, PartitionSpec(*([None] * (x.ndim - 1)), "model")
                                 if x.ndim and x.shape[-1] % 4 == 0 else PartitionSpec())

        on_mesh, _, _ = ckpt.restore(abstract(state, last_axis))
        assert on_mesh["params"]["embed"]["embedding"].sharding.spec == PartitionSpec(None, "model")
        assert_trees_equal(on_mesh, state)


def test_params_only_checkpoint_restores_params_alone_and_loads_for_inference(tmp_path):
    params = model_params()
    path = write_params_checkpoint(tmp_path, CFG, params, train_config={"source": "test"},
                                   hf_architecture="LlamaForCausalLM")
    assert path == str(tmp_path / "checkpoints" / "0")
    with Checkpointer(tmp_path) as ckpt:
        meta = ckpt.restore_meta()
        assert meta["params_only"] and meta["step"] == 0 and meta["train_config"] == {"source": "test"}
        restored, data_state, _ = ckpt.restore({"params": abstract(params)})
        assert data_state == {}
        assert_trees_equal(restored["params"], params)
        with pytest.raises(ValueError, match="holds only params.*fresh optimizer state"):
            ckpt.restore(abstract(train_state()))
    cfg, loaded, tokenizer_dir, hf_architecture = load_for_inference(tmp_path)
    assert cfg == CFG and tokenizer_dir is None and hf_architecture == "LlamaForCausalLM"
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded, params)


def test_params_alone_restore_from_a_full_training_checkpoint(tmp_path):
    state = train_state()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state, data_state=DATA_STATE, meta=checkpoint_meta(CFG), force=True)
        restored, data_state, meta = ckpt.restore({"params": abstract(state["params"])})
    assert set(restored) == {"params"} and data_state == DATA_STATE and not meta["params_only"]
    assert_trees_equal(restored["params"], state["params"])
    inference = load_for_inference(tmp_path, step=3)
    assert_trees_equal(inference.params, state["params"])
    assert inference.cfg == CFG and inference.hf_architecture == ""


def test_adapters_are_kept_by_load_params_and_merged_by_load_for_inference(tmp_path):
    adaptation = AdaptationConfig(lora_rank=2, lora_targets=("q", "v"))
    params = jax.device_get(init_params(CFG, jax.random.PRNGKey(0), adaptation=adaptation))
    params["layers"]["attn"]["q"]["lora_b"] = np.full_like(params["layers"]["attn"]["q"]["lora_b"], 0.1)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        meta = checkpoint_meta(CFG, adaptation=adaptation)
        ckpt.save(1, {"params": params}, data_state={}, meta=meta, force=True)
    meta, trained = load_params(tmp_path)
    assert adaptation_of(meta) == adaptation and meta["format"] == 2
    assert_trees_equal(trained, params)
    inference = load_for_inference(tmp_path)
    assert not split_adapters(inference.params)[1]
    assert_trees_equal(inference.params, merge_adapters(params, adaptation))
    q = inference.params["layers"]["attn"]["q"]["kernel"]
    assert not np.array_equal(q, params["layers"]["attn"]["q"]["kernel"])  # the trained adapter is in it


def test_metadata_from_before_the_config_split_is_upgraded_on_read(tmp_path):
    """First-format metadata kept execution, LoRA and export fields inside model_config: they move where they
    belong (how the model ran is dropped), so such checkpoints still restore, resume and export."""
    adaptation = AdaptationConfig(lora_rank=2, lora_alpha=8.0, lora_targets=("q", "v"),
                                  shifted_sparse_group=4)
    old_model_config = {**CFG.to_dict(), "dtype": "bfloat16", "attention": "blockwise",
                        "attention_block_q": 64, "attention_block_k": 64, "remat": "dots", "scan_unroll": 2,
                        "hf_architecture": "Qwen2ForCausalLM", **adaptation.to_dict()}
    old = {"model_config": old_model_config, "base_model_config": old_model_config, "train_config": {},
           "stage": 0}
    params = jax.device_get(init_params(CFG, jax.random.PRNGKey(0), adaptation=adaptation))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(2, {"params": params}, data_state={}, meta=old, force=True)
        meta = ckpt.restore_meta()
        ckpt.check_compatible(CFG)
    assert meta["format"] == 2 and meta["model_config"] == meta["base_model_config"] == CFG.to_dict()
    assert adaptation_of(meta) == adaptation and meta["hf_architecture"] == "Qwen2ForCausalLM"
    assert model_config_of(old) == CFG and adaptation_of(old) == adaptation  # also from the dict as stored
    inference = load_for_inference(tmp_path)
    assert inference.cfg == CFG and inference.hf_architecture == "Qwen2ForCausalLM"
    assert_trees_equal(inference.params, merge_adapters(params, adaptation))


def test_another_models_workdir_is_refused_in_one_line(tmp_path):
    write_params_checkpoint(tmp_path, CFG, model_params())
    with Checkpointer(tmp_path) as ckpt:
        # free: positional scaling, the stored dtype, spelling a default explicitly
        ckpt.check_compatible(CFG.replace(position=positions.Rope("yarn", factor=4.0,
                                                                  original_max_position_embeddings=64),
                                          param_dtype="bfloat16", n_kv_heads=4, max_seq_len=256))
        with pytest.raises(ValueError) as error:
            ckpt.check_compatible(CFG.replace(d_model=64, n_kv_heads=2).to_dict())
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "--workdir" in message
    assert "d_model 32 -> 64" in message and "kv_heads 4 -> 2" in message
    with pytest.raises(ValueError, match="already holds checkpoints.*new --workdir"):
        write_params_checkpoint(tmp_path, CFG, model_params())

    learned = CFG.replace(family="gpt2", position=positions.make("learned"), max_seq_len=64)
    saved = {"model_config": learned.to_dict(), "step": 9}
    check_compatible(saved, learned.replace(max_seq_len=128))  # a stage boundary grows the table
    with pytest.raises(ValueError, match="max_seq_len 64 -> 32"):
        check_compatible(saved, learned.replace(max_seq_len=32))


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_for_inference(tmp_path / "missing")
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(ValueError, match="has no checkpoints"):
            ckpt.restore_meta()
        with pytest.raises(ValueError, match="JSON-able"):
            ckpt.save(1, {"x": jnp.zeros(2)}, data_state={"rng": np.zeros(2)}, meta={}, force=True)
        ckpt.save(2, {"x": jnp.zeros(2)}, data_state={}, meta=checkpoint_meta(CFG), force=True)
        with pytest.raises(ValueError, match=r"no checkpoint at step 5; available steps: \[2\]"):
            ckpt.restore({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}, step=5)
