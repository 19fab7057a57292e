"""`train_and_evaluate(config, workdir)`: the whole run, resumable at any step.

    validate config, work directory and export target (before anything is compiled)
    -> mesh -> start (newest readable checkpoint | imported model | fresh) -> for each step:
        stage boundary? (new shapes / positional overrides / learned table growth: new compiled step)
        batch from the data pipeline -> jitted step (sharded, donated state)
        every log_every: one host sync for metrics;  every checkpoint.every_steps, at stage ends, at the end,
        on SIGTERM and on Ctrl-C: an Orbax checkpoint with the data-iterator state and both configs
        at a stage end, after its checkpoint: the evaluation (eval_at_stage_end), then the stage's gates
        (train/gates.py): go on, train the stage longer, or stop
    -> export (config.export_dir)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import flax.linen as nn
import jax
import numpy as np

from ctxjax import flops
from ctxjax.attention.ring import zigzag_batch
from ctxjax.checkpoint import (Checkpointer, checkpoint_dir, checkpoint_meta, replace_tokenizer,
                               tokenizer_dir)
from ctxjax.compile_cache import enable_compilation_cache
from ctxjax.config import ModelConfig
from ctxjax.data import as_data_config, eval_source_spec, find_tokenizer_file, make_global_batch
from ctxjax.errors import InputError, TrainingDiverged
from ctxjax.evaluate import run_evaluation
from ctxjax.evaluate.progress import Progress
from ctxjax.fs import ensure_writable_directory, refuse_url
from ctxjax.hf.tokenizer import exportable_tokenizer
from ctxjax.lora import merge_adapters
from ctxjax.model import Transformer
from ctxjax.schedule import stage_at, total_steps
from ctxjax.sharding import LOGICAL_RULES, batch_sharding, make_mesh
from ctxjax.train import gates
from ctxjax.train.configs import check_objective, execution_config, validate, zigzag_shards
from ctxjax.train.cost import flops_per_token
from ctxjax.train.data_wait import IdleClock
from ctxjax.train.export import check_export, export
from ctxjax.train.metrics import MetricsWriter
from ctxjax.train.resume import Start, model_config_for_stage, start_run, with_extensions
from ctxjax.train.stage_data import StageData
from ctxjax.train.state import grow_positions, state_shardings
from ctxjax.train.step import jit_train_step, position_buckets
from ctxjax.train.stopping import StopRequests

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageSetup:
    """What changes at a stage boundary: the stage's model, the state's layout and the compiled step."""

    cfg: ModelConfig
    shardings: object
    step_fn: object
    flops_per_token: float  # for the MFU count: frozen matmul weights have no weight gradient


def train_and_evaluate(config, workdir: str, *, devices=None, stop_after: int | None = None) -> dict:
    """Run (or resume) the training described by `config` in `workdir`; returns a summary dict.

    devices: the devices of the mesh (default all); stop_after: save and stop once this global step is
    done, as a preemption would (rerunning resumes)."""
    refuse_url(workdir, "the work directory")  # before abspath, which would make gs://b/run a local path
    enable_compilation_cache()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    devices = list(devices if devices is not None else jax.devices())
    validate(config, len(devices))
    ensure_writable_directory(workdir, "the work directory")
    ensure_writable_directory(checkpoint_dir(workdir), "the checkpoints directory")
    mesh = make_mesh(dict(config.mesh), devices)
    with Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                      async_save=config.checkpoint.async_save) as checkpointer, \
            jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES), StopRequests() as stop:
        start = start_run(config, workdir, checkpointer, mesh)
        # The model trained is the checkpoint's or the imported one, which config.model may not describe.
        check_objective(start.base, config)
        stages = start.stages  # lengthened by the gate extensions its checkpoint records
        run = execution_config(config)
        # All fit, before compiling.
        stage_models = [model_config_for_stage(config, start.base, s) for s in stages]
        check_export(config, workdir, start.meta, stage_models[-1])
        data = StageData(_data_config(config, workdir, start), workdir, stages, start.base.vocab_size,
                         start.data_state)
        # Resumed at a gated stage's end: its evaluation and gate are done again (and logged once).
        metrics = MetricsWriter(workdir, total_steps(stages), start.step,
                                redo_evaluation=gates.gated_end(stages, start.step) is not None)
        clock = IdleClock()
        try:
            summary, state, cfg = _loop(config, workdir, mesh, start, run, data, metrics, checkpointer, stop,
                                        stop_after, clock)
            checkpointer.wait()
        finally:
            clock.close()
            metrics.close()
            data.close()
    if config.export_dir and summary["final_step"] == summary["last_step"]:
        params = merge_adapters(state["params"], start.adaptation)  # what leaves ctxjax is a plain model
        summary["export_dir"] = export(config, cfg, params, workdir, start.meta, start.hf_architecture)
    return summary


def _loop(config, workdir, mesh, start: Start, run, data: StageData, metrics, checkpointer, stop, stop_after,
          clock: IdleClock):
    """The steps from `start.step` to the end (or a stop request); returns (summary, state, last model).
    `clock` measures how long the device waited for batches (data_wait_s in the log)."""
    # Ring attention: rows in zig-zag order give every sequence shard the same causal work.
    zigzag = zigzag_shards(config, mesh.shape["sequence"])
    peak = float(config.peak_flops) or flops.measured_peak_flops()
    stages, schedule = start.stages, start.schedule
    last_step = total_steps(stages)
    buckets = run_position_buckets(config, start.base, stages)
    state, step, stage, setup = start.state, start.step, None, None
    pending, interval_start, interval_tokens, fresh_compile = [], time.perf_counter(), 0, False
    summary = {"workdir": workdir, "start_step": start.step, "last_step": last_step}

    def save(step):
        _raise_if_diverged(state, checkpointer)
        extensions = {"stage_extensions": start.extensions} if start.extensions else {}
        checkpointer.save(step, state, data_state=data.pipe.global_state(), force=True,
                          meta=checkpoint_meta(setup.cfg, adaptation=start.adaptation,
                                               hf_architecture=start.hf_architecture,
                                               train_config=config.to_dict(), stage=stage.index,
                                               base_model_config=start.base.to_dict(),
                                               imported=start.imported, **extensions,
                                               **_provenance(start.meta)))

    def finish_stage(step):
        """The stage-end evaluation and the stage's gates; a failed gate extends the stage (new stages,
        schedule and compiled step) or raises GateFailed (the checkpoint at `step` is saved already)."""
        nonlocal start, stages, schedule, last_step, stage, state, setup
        if not config.eval_at_stage_end:
            return
        results = evaluate_stage(config, setup.cfg, state["params"], start.adaptation, data.tokenizer,
                                 workdir, step)
        metrics.write(step, results)
        summary.update(results)
        if not stage.gates:
            return
        checkpointer.wait()  # the stage end's checkpoint is on disk before a gate may stop the run
        if not gates.decide(stage, results, step, metrics):
            return
        start = with_extensions(config, start, gates.extended(start.extensions, stage))
        stages, schedule = start.stages, start.schedule
        last_step = summary["last_step"] = total_steps(stages)
        metrics.set_total(last_step)
        stage = stages[stage.index]
        state, setup = _enter_stage(config, start, run, stage, state, setup, mesh, buckets)  # the new lr

    resumed_end = gates.gated_end(stages, step)
    if resumed_end is not None:  # resumed at a gated stage's end: decide its gate (it may have changed) first
        stage = resumed_end
        state, setup = _enter_stage(config, start, run, stage, state, None, mesh, buckets)
        pipe = data.enter(stage, step)
        fresh_compile = True
        finish_stage(step)

    while step < last_step:
        if stage is None or step == stage.end:
            stage = stage_at(stages, step)
            state, setup = _enter_stage(config, start, run, stage, state, setup, mesh, buckets)
            pipe = data.enter(stage, step)
            fresh_compile = True
        clock.begin_wait()
        local = pipe.next_batch(stage.batch_size, stage.seq_len)
        if zigzag:
            local = zigzag_batch(local, zigzag)
        batch = make_global_batch(local, mesh, batch_sharding(mesh))
        clock.batch_ready(step + 1)
        state, step_metrics = setup.step_fn(state, batch)
        step += 1
        clock.dispatched(step, step_metrics)
        pending.append(step_metrics)
        if fresh_compile:  # keep compilation out of tokens/s: one sync per new shape
            fresh_compile = False
            jax.block_until_ready(state["step"])
            interval_start, interval_tokens = time.perf_counter(), 0
            clock.reset()
        else:
            interval_tokens += stage.batch_size * stage.seq_len

        at_stage_end = step == stage.end
        if step % int(config.log_every) == 0 or at_stage_end or step == last_step:
            _raise_if_diverged(state, checkpointer)
            values = jax.device_get(pending)
            # The interval ends at this sync: the host's logging after it (the first evaluation of the
            # learning rate schedule compiles its ops, ~0.2 s) is not the steps' time.
            seconds = time.perf_counter() - interval_start
            record = _log_record(values, schedule, step, stage, buckets, longest(config, stages))
            idle = clock.take()
            if interval_tokens:  # an interval holding only a freshly compiled step has no throughput
                record["tokens_per_s"] = interval_tokens / seconds
                record["mfu"] = record["tokens_per_s"] * setup.flops_per_token / peak
                # The device's idle time waiting for batches, per step and as a share of the interval.
                record["data_wait_s"] = idle / (interval_tokens // (stage.batch_size * stage.seq_len))
                record["data_wait_fraction"] = idle / seconds
            metrics.write(step, record)
            metrics.progress(step, record)
            summary.update(record)
            pending, interval_start, interval_tokens = [], time.perf_counter(), 0
        every = int(config.checkpoint.every_steps)
        stopping = stop.requested or step == stop_after
        if at_stage_end or step == last_step or (every and step % every == 0) or stopping:
            save(step)
        if at_stage_end:
            finish_stage(step)
        if stopping:
            summary["stopped_at"] = step
            break
    summary["final_step"] = step
    return summary, state, setup.cfg if setup else model_config_for_stage(config, start.base, stages[-1])


def _enter_stage(config, start: Start, run, stage, state, previous: StageSetup | None, mesh, buckets):
    """The state laid out for `stage`'s model (its positional parameters grown first) and its compiled
    step."""
    cfg = model_config_for_stage(config, start.base, stage)
    if previous is not None:
        state = grow_positions(state, cfg, config.learned_extend_method)
    if previous is None or cfg != previous.cfg:
        _, shardings = state_shardings(cfg, start.tx, mesh, start.adaptation)
        state = jax.device_put(state, shardings)
    else:
        shardings = previous.shardings
    model = Transformer(cfg, run, start.adaptation)
    step_fn = jit_train_step(config, model, start.tx, start.labels, stage, mesh, shardings, buckets)
    per_token = flops_per_token(cfg, stage.seq_len, start.adaptation, start.labels)
    return state, StageSetup(cfg, shardings, step_fn, per_token)


def longest(config, stages) -> int:
    """The most positions the run's stages train at (PoSE's target included)."""
    return max(max(s.seq_len for s in stages), int(config.data.pose_target_len))


def run_position_buckets(config, base: ModelConfig, stages) -> tuple[int, ...]:
    """The loss-by-position buckets of a run: the base model's original context, then each doubling."""
    return position_buckets(base.position.original_context(base.max_seq_len), longest(config, stages))


def _log_record(values, schedule, step: int, stage, buckets: tuple[int, ...], top: int) -> dict:
    record = {"loss": float(np.mean([m["loss"] for m in values])),
              "grad_norm": float(np.mean([m["grad_norm"] for m in values])),
              "lr": float(schedule(step - 1)), "seq_len": stage.seq_len, "batch_size": stage.batch_size,
              "stage": stage.index}
    # Loss by position over the interval: token losses over tokens per bucket (buckets this stage does not
    # reach have no tokens and no value).
    by_position = np.sum([m["loss_by_position"] for m in values], axis=0)
    for (lo, hi), (loss, count) in zip(zip((0, *buckets), (*buckets, top)), by_position):
        if count:
            record[f"loss/pos_{lo}-{hi}"] = float(loss / count)
    return record


def _data_config(config, workdir: str, start: Start):
    """The run's data config. A model taken from an HF directory keeps that directory's tokenizer (import-hf
    has already copied it into WORKDIR/tokenizer, where the pipeline looks first); process 0 copies all its
    files there on a fresh init_from_hf run, as import-hf does. An imported model without any tokenizer is
    refused: a tokenizer trained on the data would not match its embeddings."""
    data_config = as_data_config(config.data)
    if data_config.tokenizer:
        return data_config
    if find_tokenizer_file(tokenizer_dir(workdir)):
        # A resumed or imported model keeps the tokenizer it was trained with, even when the data settings
        # that trained it changed (the pipeline would otherwise train a new one, unrelated to the embeddings).
        return as_data_config(data_config, tokenizer=tokenizer_dir(workdir)) if start.meta else data_config
    if config.init_from_hf and start.meta is None:
        if exportable_tokenizer(config.init_from_hf):
            if jax.process_index() == 0:
                replace_tokenizer(config.init_from_hf, tokenizer_dir(workdir))
            return as_data_config(data_config, tokenizer=config.init_from_hf)
    if start.imported:
        source = config.init_from_hf or (start.meta or {}).get("imported_from", "a Hugging Face model")
        raise InputError(f"{workdir} trains a model imported from {source} that came without a tokenizer, "
                         "and data.tokenizer is empty: a new tokenizer would not match its embeddings; set "
                         "--config.data.tokenizer=PATH (its tokenizer.json or tokenizer.model)")
    return data_config


def _provenance(meta: dict | None) -> dict:
    """What a checkpoint keeps from the one it resumed (where an imported model came from)."""
    return {"imported_from": meta["imported_from"]} if meta and meta.get("imported_from") else {}


def evaluate_stage(config, cfg: ModelConfig, params, adaptation, tokenizer, workdir: str, step: int) -> dict:
    """Evaluate the model as it leaves a stage, with the training sharding (params stay where they are)."""
    eval_config = dict(config.eval)
    eval_config["source"] = eval_config.get("source") or eval_source_spec(as_data_config(config.data))
    out_dir = os.path.join(workdir, "eval", f"step_{step}")
    # With full attention (no adaptation: S²-Attn only approximates it for training; LongLoRA evaluates that
    # way too) and the adapters merged.
    # Its bars (per task and length) sit under the training bar and vanish when done, on process 0 only.
    progress = Progress.on_terminal(leave=False) if jax.process_index() == 0 else None
    return run_evaluation(cfg, merge_adapters(params, adaptation), tokenizer, eval_config, out_dir, step=step,
                          run_name=f"step {step}", progress=progress)


def _raise_if_diverged(state, checkpointer) -> None:
    bad = int(jax.device_get(state["first_bad_step"]))
    if bad >= 0:
        last_good = checkpointer.latest_step()
        raise TrainingDiverged(
            f"loss became NaN/inf at step {bad}; training stopped and the last good checkpoint (step "
            f"{last_good}) is kept: lower the learning rate or raise warmup_steps, then rerun to resume from "
            "it")
