"""`train_and_evaluate(config, workdir)`: the whole run, resumable at any step.

    validate config -> mesh -> (restore | import | init) state -> for each step:
        stage boundary? (new shapes / positional overrides / learned table growth: new compiled step)
        batch from the data pipeline -> jitted step (sharded, donated state)
        every log_every: one host sync for metrics;  every checkpoint.every_steps, at stage ends, at the end
        and on SIGTERM: an Orbax checkpoint with the data-iterator state and both configs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import flax.linen as nn
import jax
import numpy as np

from ctxjax import flops, hf, lora, positions
from ctxjax.checkpoint import (Checkpointer, check_compatible, checkpoint_meta, model_config_of, replace_tokenizer,
                               tokenizer_dir)
from ctxjax.config import ModelConfig
from ctxjax.data import as_data_config, make_global_batch, make_pipeline
from ctxjax.hf.tokenizer import exportable_tokenizer
from ctxjax.optimizer import make_optimizer, trainable_labels
from ctxjax.attention.ring import zigzag_batch
from ctxjax.schedule import learning_rate_schedule, model_config_for, stage_at, total_steps
from ctxjax.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from ctxjax.train.configs import model_config, validate
from ctxjax.train.metrics import MetricsWriter
from ctxjax.train.state import (abstract_params, grow_learned_table, init_state, param_shardings, place_params,
                                state_shardings)
from ctxjax.train.step import jit_train_step

log = logging.getLogger(__name__)

# ModelConfig fields a run may change between restarts without changing any parameter shape.
RUNTIME_FIELDS = ("attention", "attention_block_q", "attention_block_k", "remat", "scan_unroll", "dtype",
                  "shifted_sparse_group")
# What training adds to an imported model: LoRA adapters (a resumed run must keep them as they were).
ADAPTER_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


class TrainingDiverged(ValueError):
    """The loss became NaN or inf; raised at the next sync point, naming the step."""


class _Preemption:
    """SIGTERM (preemptible TPU VMs) sets a flag; the loop saves at the next step and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, as in notebooks
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def architecture_imported(config, checkpoint_meta) -> bool:
    """Whether the run's architecture came from a Hugging Face model (import-hf, init_from_hf) rather than from
    `config.model`; training checkpoints record it (older ones did not: then init_from_hf decides)."""
    if checkpoint_meta is None:
        return bool(config.init_from_hf)
    if checkpoint_meta.get("params_only"):
        return True
    return checkpoint_meta.get("imported", bool(config.init_from_hf))


def base_model_config(config, checkpoint_meta, workdir: str) -> ModelConfig:
    """The architecture of the run: the checkpoint's if the work directory has one (imported or resumed),
    else the HF directory's (`init_from_hf`), else `config.model`; runtime and adapter fields always from config,
    and the sliding window from config when it sets one (0 keeps the base model's).
    A resumed run whose config asks for other parameter shapes is refused, never overwritten: for a model built
    from `config.model` any architecture field counts; for an imported one (whose shapes the recipe does not
    describe) only the LoRA adapters that training added."""
    requested = model_config(config)
    runtime = {f: getattr(requested, f) for f in RUNTIME_FIELDS + ADAPTER_FIELDS}
    if requested.sliding_window:  # set in the config: replaces the base model's window (e.g. widened)
        runtime["sliding_window"] = requested.sliding_window
    if checkpoint_meta is not None:
        saved = ModelConfig.from_dict(checkpoint_meta.get("base_model_config") or checkpoint_meta["model_config"])
        if not checkpoint_meta.get("params_only"):
            imported = architecture_imported(config, checkpoint_meta)
            wanted = saved.replace(**{f: runtime[f] for f in ADAPTER_FIELDS}) if imported else requested
            check_compatible({"model_config": saved.to_dict(), "step": checkpoint_meta.get("step")}, wanted,
                             workdir=workdir)
            _check_same_training(config, checkpoint_meta, saved, wanted, workdir)
        return saved.replace(**runtime)
    if config.init_from_hf:
        hf_config = hf.read_hf_config(config.init_from_hf)
        return hf.model_config_from_hf(hf_config, param_dtype=requested.param_dtype, **runtime)
    return requested


def _check_same_stage_positions(checkpoint_meta, stage, cfg: ModelConfig, start: int, workdir: str) -> None:
    """A run stopped inside a stage resumes it with the rotation it trained with: a changed rope_scaling, stage
    position or model.position would otherwise switch the scheme mid-stage without a word."""
    if checkpoint_meta is None or checkpoint_meta.get("params_only") or start == stage.start:
        return
    saved = model_config_of(checkpoint_meta).position
    if saved != cfg.position:
        raise ValueError(f"{workdir} stopped inside stage {stage.index}, trained with positions {saved}; the config now "
                         f"gives {cfg.position}: resume with the same rope_scaling / stage position / model.position "
                         "(--config.FIELD=VALUE) or choose a new --workdir")


def _check_same_training(config, checkpoint_meta, saved: ModelConfig, wanted: ModelConfig, workdir: str) -> None:
    """What a resumed run cannot change although no shape changes: which parameters train (the optimizer state
    holds moments for exactly those) and the adapters' scale (the stored adapters were trained with it)."""
    changes = []
    saved_groups = checkpoint_meta.get("train_config", {}).get("optimizer", {}).get("trainable")
    if saved_groups is not None and saved_groups != config.optimizer.trainable:
        changes.append(f"optimizer.trainable={saved_groups!r}")
    if saved.lora_rank and float(saved.lora_alpha) != float(wanted.lora_alpha):
        changes.append(f"model.lora_alpha={saved.lora_alpha!r}")
    if changes:
        raise ValueError(f"{workdir} was trained with {' and '.join(changes)}; resume with the same "
                         "(--config.FIELD=VALUE) or choose a new --workdir")


def _warn_ignored_model_changes(config, checkpoint_meta, workdir: str) -> None:
    """A resumed run keeps the checkpoint's model; `config.model` supplies only the runtime and adapter fields
    (and a window). Any other model field changed since the checkpoint was saved has no effect: say so, since
    e.g. a new model.position would otherwise look applied."""
    saved = (checkpoint_meta or {}).get("train_config", {}).get("model")
    if not saved or checkpoint_meta.get("params_only"):
        return
    now = json.loads(json.dumps(config.model.to_dict()))  # as stored: tuples become lists
    applied = set(RUNTIME_FIELDS + ADAPTER_FIELDS + ("sliding_window",))
    ignored = [f"model.{k}" for k in sorted(now) if k not in applied and k in saved and saved[k] != now[k]]
    if ignored:
        log.warning("%s resumes with the model of its checkpoint: %s changed since it was saved and has no "
                    "effect (change positions at a stage boundary with stages[i].position or rope_scaling, or "
                    "choose a new --workdir)", workdir, ", ".join(ignored))


def stage_model_config(config, base: ModelConfig, stage) -> ModelConfig:
    """The model a stage trains (schedule.model_config_for with the run's rope_scaling and PoSE target)."""
    return model_config_for(base, stage, config.rope_scaling, config.data.pose_target_len)


def check_exportable(config, base: ModelConfig, stages) -> None:
    """A run that ends in an export must be able to write it: refused before training rather than after."""
    if config.export_dir:
        try:
            hf.hf_config_from_model(stage_model_config(config, base, stages[-1]))
        except ValueError as error:
            raise ValueError(f"{error} (the export at the end of training; --config.export_dir='' trains "
                             "without one)") from None


def train_and_evaluate(config, workdir: str, *, devices=None, stop_after: int | None = None) -> dict:
    """Run (or resume) the training described by `config` in `workdir`; returns a summary dict.

    devices: the devices of the mesh (default all); stop_after: save and stop once this global step is
    done, as a preemption would (rerunning resumes)."""
    os.makedirs(workdir, exist_ok=True)
    devices = list(devices if devices is not None else jax.devices())
    _, stages, _ = validate(config, len(devices))
    checkpointer = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                async_save=config.checkpoint.async_save)
    latest = checkpointer.latest_step()
    meta = checkpointer.restore_meta(latest) if latest is not None else None
    base = base_model_config(config, meta, workdir)
    _warn_ignored_model_changes(config, meta, workdir)
    check_exportable(config, base, stages)
    imported = architecture_imported(config, meta)
    if base.lora_rank and not imported:
        raise ValueError(f"model.lora_rank={base.lora_rank} trains adapters on a pretrained model, but {workdir} "
                         "holds none: run `ctxjax import-hf HF_DIR --workdir` on it first or set "
                         "--config.init_from_hf=HF_DIR")
    mesh = make_mesh(dict(config.mesh), devices)
    # Ring attention: rows in zig-zag order give every sequence shard the same causal work.
    zigzag_shards = mesh.shape["sequence"] if config.ring_zigzag and mesh.shape["sequence"] > 1 else 0
    schedule = learning_rate_schedule(stages)
    last_step = total_steps(stages)
    start = latest or 0

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES), _Preemption() as preemption:
        stage = stage_at(stages, start)
        cfg = stage_model_config(config, base, stage)
        _check_same_stage_positions(meta, stage, cfg, start, workdir)
        tx = make_optimizer(config.optimizer, schedule, abstract_params(cfg))
        abstract, shardings = state_shardings(cfg, tx, mesh)
        data_state = None
        if meta is None:
            if config.init_from_hf:
                _, params = hf.load_pretrained(config.init_from_hf, **{f: getattr(base, f) for f in
                                                                     ("param_dtype", *RUNTIME_FIELDS)})
                state = place_params(_prepare_imported(params, cfg, config), tx, shardings)
            else:
                state = init_state(cfg, tx, jax.random.PRNGKey(config.seed), shardings)
        elif meta.get("params_only"):  # imported: fresh optimizer state around the stored params
            # Read straight into the layout of the stored (base) model, never whole on one host.
            stored = with_shardings(checkpointer.saved_shapes(latest)["params"],
                                    param_shardings(base.replace(lora_rank=0), mesh))
            restored, _, _ = checkpointer.restore({"params": stored}, latest)
            state = place_params(_prepare_imported(restored["params"], cfg, config), tx, shardings)
        else:
            state, data_state, _ = checkpointer.restore(with_shardings(abstract, shardings), latest)

        # A model taken from an HF directory keeps that directory's tokenizer (import-hf has already copied
        # it into WORKDIR/tokenizer, where the pipeline looks first). Every process reads it from there; process 0
        # (which exports) first copies all its files, as import-hf does (config, chat template, generation ids).
        data_config = as_data_config(config.data)
        if meta is None and config.init_from_hf and not data_config.tokenizer:
            if jax.process_index() == 0 and exportable_tokenizer(config.init_from_hf):
                replace_tokenizer(config.init_from_hf, tokenizer_dir(workdir))
            data_config = as_data_config(data_config, tokenizer=config.init_from_hf)
        pipe = make_pipeline(data_config, workdir, model_vocab_size=cfg.vocab_size)
        if data_state:
            pipe.restore(data_state)
        metrics = MetricsWriter(workdir, last_step, start)
        peak = float(config.peak_flops) or flops.measured_peak_flops()
        train_step, fresh_compile = None, False
        pending, interval_start, interval_tokens = [], time.perf_counter(), 0
        summary = {"workdir": workdir, "start_step": start, "last_step": last_step}
        step = start

        def save(step, force=False):
            _raise_if_diverged(state, checkpointer)
            checkpointer.save(step, state, data_state=pipe.global_state(), force=force,
                              meta=checkpoint_meta(cfg, train_config=config.to_dict(), stage=stage.index,
                                                   base_model_config=base.to_dict(), imported=imported))

        try:
            while step < last_step:
                new_stage = stage_at(stages, step)
                if new_stage.index != stage.index or train_step is None:
                    stage = new_stage
                    new_cfg = stage_model_config(config, base, stage)
                    if new_cfg.position.name == "learned" and new_cfg.max_seq_len > cfg.max_seq_len:
                        state = grow_learned_table(state, new_cfg.max_seq_len, config.learned_extend_method)
                    if new_cfg != cfg or train_step is None:
                        cfg = new_cfg
                        _, shardings = state_shardings(cfg, tx, mesh)
                        state = jax.device_put(state, shardings)
                    train_step, fresh_compile = jit_train_step(config, cfg, tx, stage, mesh, shardings), True
                    # MFU counts no weight gradient for frozen matmul weights (LoRA, optimizer.trainable).
                    shapes = abstract_params(cfg)
                    labels = trainable_labels(shapes, config.optimizer.trainable)
                    frozen = flops.frozen_matmul_params(cfg, shapes, labels)
                local = pipe.next_batch(stage.batch_size, stage.seq_len)
                if zigzag_shards:
                    local = zigzag_batch(local, zigzag_shards)
                batch = make_global_batch(local, mesh, batch_sharding(mesh))
                state, step_metrics = train_step(state, batch)
                step += 1
                pending.append(step_metrics)
                if fresh_compile:  # keep compilation out of tokens/s: one sync per new shape
                    fresh_compile = False
                    jax.block_until_ready(state["step"])
                    interval_start, interval_tokens = time.perf_counter(), 0
                else:
                    interval_tokens += stage.batch_size * stage.seq_len

                at_stage_end = step == stage.end
                if step % int(config.log_every) == 0 or at_stage_end or step == last_step:
                    values = jax.device_get(pending)
                    _raise_if_diverged(state, checkpointer)
                    elapsed = time.perf_counter() - interval_start
                    record = {
                        "loss": float(np.mean([m["loss"] for m in values])),
                        "grad_norm": float(np.mean([m["grad_norm"] for m in values])),
                        "lr": float(schedule(step - 1)), "seq_len": stage.seq_len, "batch_size": stage.batch_size,
                        "stage": stage.index,
                    }
                    if interval_tokens:  # an interval holding only a freshly compiled step has no throughput
                        record["tokens_per_s"] = interval_tokens / elapsed
                        step_flops = flops.flops_per_token(cfg, stage.seq_len, frozen)
                        record["mfu"] = record["tokens_per_s"] * step_flops / peak
                    metrics.write(step, record)
                    metrics.progress(step, record)
                    summary.update(record)
                    pending, interval_start, interval_tokens = [], time.perf_counter(), 0
                every = int(config.checkpoint.every_steps)
                stopping = preemption.requested or step == stop_after
                if at_stage_end or step == last_step or (every and step % every == 0) or stopping:
                    save(step, force=True)
                if at_stage_end and config.eval_at_stage_end:
                    results = evaluate_stage(config, cfg, state["params"], pipe.tokenizer, workdir, step)
                    metrics.write(step, results)
                    summary.update(results)
                if stopping:
                    summary["stopped_at"] = step
                    break
            checkpointer.wait()
        finally:
            metrics.close()
            pipe.close()
            checkpointer.close()

        summary["final_step"] = step
        if config.export_dir and step == last_step:
            out = os.path.join(workdir, config.export_dir)  # an absolute export_dir stays as it is
            summary["export_dir"] = export(cfg, state["params"], out, workdir)
    return summary


def export(cfg: ModelConfig, params, out_dir: str, workdir: str) -> str:
    """Write the trained model as a Hugging Face directory (process 0; parameters gathered to the host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params)
    if jax.process_index() != 0:
        return out_dir
    tokenizer = exportable_tokenizer(os.path.join(workdir, "tokenizer"))  # what `ctxjax export` would copy
    return hf.save_pretrained(cfg, jax.device_get(params), out_dir, tokenizer=tokenizer, overwrite=True)


def evaluate_stage(config, cfg: ModelConfig, params, tokenizer, workdir: str, step: int) -> dict:
    """Evaluate the model as it leaves a stage, with the training sharding (params stay where they are)."""
    from ctxjax.data.config import as_data_config
    from ctxjax.data.sources import eval_source_spec
    from ctxjax.evaluate import run_evaluation

    eval_config = dict(config.eval)
    eval_config["source"] = eval_config.get("source") or eval_source_spec(as_data_config(config.data))
    out_dir = os.path.join(workdir, "eval", f"step_{step}")
    # Always with full attention: S²-Attn only approximates it for training (LongLoRA evaluates that way too).
    return run_evaluation(cfg.replace(shifted_sparse_group=0), params, tokenizer, eval_config, out_dir, step=step,
                          run_name=f"step {step}")


def _raise_if_diverged(state, checkpointer) -> None:
    bad = int(jax.device_get(state["first_bad_step"]))
    if bad >= 0:
        last_good = checkpointer.latest_step()
        raise TrainingDiverged(
            f"loss became NaN/inf at step {bad}; training stopped and the last good checkpoint (step {last_good}) "
            "is kept: lower the learning rate or raise warmup_steps, then rerun to resume from it")


def _prepare_imported(params, cfg: ModelConfig, config):
    """Imported weights made ready to train: a GPT-2 table shorter than the stage's context grows, and LoRA
    adapters are added (starting as no change) when the config asks for them."""
    params = lora.add_adapters(params, cfg, jax.random.PRNGKey(config.seed))
    if cfg.position.name == "learned":
        rows = params["pos_embed"]["embedding"].shape[0]
        if rows < cfg.max_seq_len:
            params = positions.extend(params, cfg.max_seq_len, method=config.learned_extend_method)
    return params


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
