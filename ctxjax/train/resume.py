"""Where a run starts: the newest readable checkpoint of the work directory, else the model of an HF
directory (`init_from_hf`), else a fresh initialisation — and the model it trains (`base_model_config`).

A damaged latest checkpoint costs a warning and the steps since the previous one: the newest step that reads
is used, and the damaged ones are moved into WORKDIR/damaged_checkpoints (never deleted) so that the resumed
run can save those step numbers again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax

from ctxjax import hf, lora
from ctxjax.adaptation import AdaptationConfig
from ctxjax.checkpoint import Checkpointer, adaptation_of, check_compatible, model_config_of
from ctxjax.config import ModelConfig
from ctxjax.errors import InputError
from ctxjax.optimizer import make_optimizer, trainable_labels
from ctxjax.schedule import Stage, learning_rate_schedule, model_config_for, stage_at
from ctxjax.train.configs import adaptation_config, model_config, run_stages
from ctxjax.train.gates import gated_end
from ctxjax.train.state import abstract_params, init_state, param_shardings, place_params, state_shardings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Start:
    """What the loop starts from."""

    step: int
    meta: dict | None  # the checkpoint's metadata (None: a fresh run)
    base: ModelConfig  # the run's model before any stage's positional overrides
    adaptation: AdaptationConfig  # the run's LoRA adapters and S²-Attn groups
    hf_architecture: str  # the Hugging Face class the model came from ("" if none): what its export writes
    imported: bool  # the architecture came from a Hugging Face model
    state: Any  # sharded train state
    data_state: dict | None  # the data iterator's position (None: from the start)
    tx: Any  # the optimizer
    labels: Any  # 'train' / 'freeze' per parameter (optimizer.trainable_labels): what the step differentiates
    stages: list[Stage]  # the config's stages, lengthened by the gate extensions done so far
    schedule: Any  # their learning-rate schedule (the optimizer's)
    extensions: dict  # the checkpoint's `stage_extensions` ({} when none): what lengthened the stages


def start_run(config, workdir: str, checkpointer: Checkpointer, mesh) -> Start:
    """The newest readable checkpoint's state (damaged newer ones set aside), or a fresh or imported one.
    The stages are laid out with the gate extensions that checkpoint records."""
    if not checkpointer.all_steps():
        return _fresh(config, workdir, mesh)
    step, start = checkpointer.newest_readable(
        lambda step: _restore(config, workdir, checkpointer, mesh, step))
    damaged = [s for s in checkpointer.all_steps() if s > step]
    if damaged:  # one process moves them; every process then sees the same steps (saves are collective)
        _barrier("ctxjax: every process has read the checkpoints")
        moved = [checkpointer.set_aside(s) for s in damaged] if jax.process_index() == 0 else []
        _barrier("ctxjax: the damaged checkpoints are set aside")
        checkpointer.reload()
        log.warning("resuming from step %d; the damaged step(s) %s were moved to %s (nothing was deleted)",
                    step, damaged, ", ".join(moved) or "damaged_checkpoints")
    _warn_ignored_model_changes(config, start.meta, workdir)
    return start


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _optimizer(config, cfg: ModelConfig, adaptation: AdaptationConfig, schedule):
    """(optimizer, trainable labels) of the run, computed once: the parameters' tree is the same at every
    stage."""
    labels = trainable_labels(abstract_params(cfg, adaptation), config.optimizer.trainable)
    return make_optimizer(config.optimizer, schedule, labels), labels


def with_extensions(config, start: Start, extensions: dict) -> Start:
    """`start` with the stages lengthened by `extensions` and an optimizer following their schedule (the
    optimizer state is unchanged: only the learning rate after the extended stage's end moves)."""
    stages = run_stages(config, extensions)
    schedule = learning_rate_schedule(stages)
    tx = make_optimizer(config.optimizer, schedule, start.labels)
    return dataclasses.replace(start, stages=stages, schedule=schedule, extensions=extensions, tx=tx)


def _fresh(config, workdir: str, mesh) -> Start:
    stages = run_stages(config)
    schedule = learning_rate_schedule(stages)
    base = base_model_config(config, None, workdir)
    adaptation, imported = adaptation_config(config), bool(config.init_from_hf)
    _check_adaptation(base, adaptation, imported, workdir)
    cfg = model_config_for_stage(config, base, stages[0])
    tx, labels = _optimizer(config, cfg, adaptation, schedule)
    _, shardings = state_shardings(cfg, tx, mesh, adaptation)
    if config.init_from_hf:
        _, params = hf.load_pretrained(config.init_from_hf, param_dtype=base.param_dtype)
        state = place_params(prepare_imported(params, cfg, adaptation, config), tx, shardings)
        architecture = hf.architecture_of(config.init_from_hf)
    else:
        state = init_state(cfg, tx, jax.random.PRNGKey(config.seed), shardings, adaptation)
        architecture = ""
    return Start(0, None, base, adaptation, architecture, imported, state, None, tx, labels, stages, schedule,
                 {})


def _restore(config, workdir: str, checkpointer: Checkpointer, mesh, step: int) -> Start:
    """Step `step`: CheckpointDamaged when it cannot be read (the caller tries an older one); InputError when
    the config cannot resume it (another model, say), which no older step would change."""
    meta = checkpointer.restore_meta(step)
    extensions = dict(meta.get("stage_extensions") or {})
    stages = run_stages(config, extensions)
    schedule = learning_rate_schedule(stages)
    base = base_model_config(config, meta, workdir)
    adaptation, imported = adaptation_config(config), architecture_imported(config, meta)
    _check_adaptation(base, adaptation, imported, workdir)
    _check_same_training(config, meta, adaptation, workdir)
    # At a gated stage's end the loop decides its gate first, with that stage's model.
    stage = gated_end(stages, step) or stage_at(stages, step)
    cfg = model_config_for_stage(config, base, stage)
    _check_same_stage_positions(meta, stage, cfg, step, workdir)
    tx, labels = _optimizer(config, cfg, adaptation, schedule)
    abstract, shardings = state_shardings(cfg, tx, mesh, adaptation)
    architecture = meta.get("hf_architecture", "")
    if meta.get("params_only"):  # imported: fresh optimizer state around the stored params
        # Read straight into the layout of the stored (base) model, never whole on one host.
        stored = with_shardings(checkpointer.saved_shapes(step)["params"], param_shardings(base, mesh))
        restored, _, _ = checkpointer.restore({"params": stored}, step)
        state = place_params(prepare_imported(restored["params"], cfg, adaptation, config), tx, shardings)
        return Start(step, meta, base, adaptation, architecture, imported, state, None, tx, labels, stages,
                     schedule, extensions)
    state, data_state, _ = checkpointer.restore(with_shardings(abstract, shardings), step)
    return Start(step, meta, base, adaptation, architecture, imported, state, data_state, tx, labels, stages,
                 schedule, extensions)


def model_config_for_stage(config, base: ModelConfig, stage) -> ModelConfig:
    """The model a stage trains (schedule.model_config_for with the run's rope_scaling and PoSE target); a
    positional setting that does not fit is one line naming the stage."""
    try:
        return model_config_for(base, stage, config.rope_scaling, config.data.pose_target_len)
    except InputError as error:
        raise InputError(f"stage {stage.index} (seq_len {stage.seq_len}): {error}") from None


def architecture_imported(config, checkpoint_meta) -> bool:
    """Whether the run's architecture came from a Hugging Face model (import-hf, init_from_hf) rather than
    from `config.model`; training checkpoints record it (older ones did not: then init_from_hf decides)."""
    if checkpoint_meta is None:
        return bool(config.init_from_hf)
    if checkpoint_meta.get("params_only"):
        return True
    return checkpoint_meta.get("imported", bool(config.init_from_hf))


def base_model_config(config, checkpoint_meta, workdir: str) -> ModelConfig:
    """The architecture of the run: the checkpoint's if the work directory has one (imported or resumed),
    else the HF directory's (`init_from_hf`), else `config.model`; the sliding window from config when it sets
    one (0 keeps the base model's). A resumed run whose `config.model` asks for other parameter shapes is
    refused, never overwritten (an imported model's shapes come from its checkpoint, which the recipe does not
    describe)."""
    requested = model_config(config)
    # Set in the config: replaces the base model's window (e.g. widened for a longer context).
    window = {"sliding_window": requested.sliding_window} if requested.sliding_window else {}
    if checkpoint_meta is not None:
        saved = ModelConfig.from_dict(checkpoint_meta.get("base_model_config")
                                      or checkpoint_meta["model_config"])
        if not checkpoint_meta.get("params_only") and not architecture_imported(config, checkpoint_meta):
            check_compatible({"model_config": saved.to_dict(), "step": checkpoint_meta.get("step")},
                             requested, workdir=workdir)
        return saved.replace(**window)
    if config.init_from_hf:
        hf_config = hf.read_hf_config(config.init_from_hf)
        return hf.model_config_from_hf(hf_config, where=os.path.join(config.init_from_hf, "config.json"),
                                       param_dtype=requested.param_dtype, **window)
    return requested


def _check_adaptation(base: ModelConfig, adaptation: AdaptationConfig, imported: bool, workdir: str) -> None:
    adaptation.check(base)
    if adaptation.lora_rank and not imported:
        raise InputError(f"adaptation.lora_rank={adaptation.lora_rank} trains adapters on a pretrained "
                         f"model, but {workdir} holds none: run `ctxjax import-hf HF_DIR --workdir` on it "
                         "first or set --config.init_from_hf=HF_DIR")


def _check_same_stage_positions(checkpoint_meta, stage, cfg: ModelConfig, start: int, workdir: str) -> None:
    """A run stopped inside a stage resumes it with the rotation it trained with: a changed rope_scaling,
    stage position or model.position would otherwise switch the scheme mid-stage without a word."""
    if checkpoint_meta is None or checkpoint_meta.get("params_only") or start == stage.start:
        return
    saved = model_config_of(checkpoint_meta).position
    if saved != cfg.position:
        raise InputError(f"{workdir} stopped inside stage {stage.index}, trained with positions {saved}; the "
                         f"config now gives {cfg.position}: resume with the same rope_scaling / stage "
                         "position / model.position (--config.FIELD=VALUE) or choose a new --workdir")


def _check_same_training(config, checkpoint_meta, adaptation: AdaptationConfig, workdir: str) -> None:
    """What a resumed run cannot change: which parameters train (the optimizer state holds moments for exactly
    those) and the LoRA adapters its checkpoint holds (their shapes, and the scale they were trained with). An
    imported (params-only) checkpoint has neither yet."""
    if checkpoint_meta.get("params_only"):
        return
    changes = []
    saved_groups = checkpoint_meta.get("train_config", {}).get("optimizer", {}).get("trainable")
    if saved_groups is not None and saved_groups != config.optimizer.trainable:
        changes.append(f"optimizer.trainable={saved_groups!r}")
    saved = adaptation_of(checkpoint_meta)
    for name in ("lora_rank", "lora_targets", "lora_alpha"):
        if (saved.lora_rank or adaptation.lora_rank) and getattr(saved, name) != getattr(adaptation, name):
            changes.append(f"adaptation.{name}={getattr(saved, name)!r}")
    if changes:
        raise InputError(f"{workdir} was trained with {' and '.join(changes)}; resume with the same "
                         "(--config.FIELD=VALUE) or choose a new --workdir")


def _warn_ignored_model_changes(config, checkpoint_meta, workdir: str) -> None:
    """A resumed run keeps the checkpoint's model (a window set in `config.model` aside). Any other model
    field changed since the checkpoint was saved has no effect: say so, since e.g. a new model.position would
    otherwise look applied."""
    saved = (checkpoint_meta or {}).get("train_config", {}).get("model")
    if not saved or checkpoint_meta.get("params_only"):
        return
    now = json.loads(json.dumps(config.model.to_dict()))  # as stored: tuples become lists
    ignored = [f"model.{k}" for k in sorted(now) if k != "sliding_window" and k in saved
               and saved[k] != now[k]]
    if ignored:
        log.warning("%s resumes with the model of its checkpoint: %s changed since it was saved and has no "
                    "effect (change positions at a stage boundary with stages[i].position or rope_scaling, "
                    "or choose a new --workdir)", workdir, ", ".join(ignored))


def prepare_imported(params, cfg: ModelConfig, adaptation: AdaptationConfig, config):
    """Imported weights made ready to train: a position table shorter than the stage's context grows
    (GPT-2's), and LoRA adapters are added (starting as no change) when the config asks for them."""
    params = lora.add_adapters(params, cfg, adaptation, jax.random.PRNGKey(config.seed))
    return cfg.position.extend(params, cfg.max_seq_len, method=config.learned_extend_method)


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
