"""Running the study: each arm trains in its own work directory under the study's output (resuming where it
stopped; a finished arm is not trained again), is evaluated once (results.json kept), and leaves its cost in
cost.json. Rerunning the study skips everything already done and renders the report again."""

from __future__ import annotations

import json
import os
import time

import jax

from ctxjax.checkpoint import checkpoint_dir, load_for_inference, tokenizer_dir
from ctxjax.errors import InputError, read_json
from ctxjax.fs import write_atomically
from ctxjax.evaluate import run_evaluation
from ctxjax.evaluate.report import RESULTS_FILE, load_results
from ctxjax.study.arms import Arm, Scale, arms, base_config
from ctxjax.train import train_and_evaluate
from ctxjax.train.configs import apply_overrides
from ctxjax.train.cost import planned_cost

COST_FILE = "cost.json"


def run_study(out: str, scale: Scale, *, only: tuple[str, ...] = (), devices=None, log=print) -> dict:
    """Train and evaluate every arm (or those in `only`, with what they derive from); returns
    {arm name: {"arm": Arm, "cost": {...}, "results": {length or "all": results dict}}} for the arms done (all
    of them, unless a training was stopped by SIGTERM: it checkpointed, and the arms from it on are left for a
    rerun)."""
    devices = list(devices if devices is not None else jax.devices()[:1])
    table = {arm.name: arm for arm in arms(scale)}
    unknown = sorted(set(only) - set(table))
    if unknown:
        raise InputError(f"unknown study arm(s) {unknown}; the arms are {sorted(table)}")
    wanted = _with_parents(only or tuple(table), table)
    done = {}
    for name in table:
        if name not in wanted:
            continue
        arm = table[name]
        workdir = os.path.join(out, arm.name)
        cost = _train(arm, workdir, out, scale, devices, log) if arm.trains else _load_cost(workdir)
        if not cost.get("finished", True):  # stopped (SIGTERM: preemption): checkpointed, resumes on a rerun
            log(f"study: {arm.name} stopped before its last step; rerun the same command to resume it")
            break
        started = time.perf_counter()
        results, evaluated = _evaluate(arm, workdir, out, scale, devices, log)
        if evaluated:
            cost["eval_s"] = cost.get("eval_s", 0.0) + time.perf_counter() - started
            _save_cost(workdir, cost)
        done[name] = {"arm": arm, "cost": cost, "results": results}
    return done


def _load_cost(workdir: str) -> dict:
    path = os.path.join(workdir, COST_FILE)
    return read_json(path, "the study's cost record") if os.path.exists(path) else {}


def _save_cost(workdir: str, cost: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    write_atomically(os.path.join(workdir, COST_FILE), json.dumps(cost, indent=2).encode())


def _with_parents(names, table) -> set[str]:
    """`names` and what they start from: a parent's export, and the RoPE arm's tokenizer for every arm."""
    return set(names) | {table[name].parent for name in names if table[name].parent} | {"rope"}


def arm_config(arm: Arm, out: str, scale: Scale):
    """The training recipe of `arm`: the base recipe, its overrides, and where its model and tokenizer come
    from (a fine-tune starts from its parent's export; every arm shares the first pretraining's tokenizer)."""
    config = base_config(scale)
    overrides = dict(arm.overrides)
    if arm.parent:
        overrides["init_from_hf"] = os.path.join(out, arm.parent, "hf")
    elif arm.name != "rope" and not config.data.tokenizer:
        overrides["data.tokenizer"] = tokenizer_dir(os.path.join(out, "rope"))
    return apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])


def _train(arm: Arm, workdir: str, out: str, scale: Scale, devices, log) -> dict:
    cost = {"wall_s": 0.0, **_load_cost(workdir)}
    if cost.get("finished"):
        return cost
    config = arm_config(arm, out, scale)
    log(f"study: training {arm.name} ({arm.title})")
    started = time.perf_counter()
    summary = train_and_evaluate(config, workdir, devices=devices)
    cost["wall_s"] += time.perf_counter() - started
    cost.update(planned_cost(config, workdir), final_loss=summary.get("loss"),
                finished=summary.get("final_step") == summary.get("last_step"))
    _save_cost(workdir, cost)
    return cost


def _evaluate(arm: Arm, workdir: str, out: str, scale: Scale, devices, log) -> dict:
    """{"all": results} for a trained arm; {length: results} for a zero-shot arm, evaluated once per length
    with factor = length / L. Every perplexity shares one fixed target set (the documents long enough for the
    longest study length); retrieval is measured at fewer lengths for trained arms: generation is the slow
    part."""
    source = workdir if arm.trains else os.path.join(out, arm.parent)
    if not os.path.isdir(checkpoint_dir(source)):
        raise InputError(f"study arm {arm.name} needs {source}, which has no checkpoints: run its arm first")
    if arm.trains:
        retrieval = tuple(n for n in scale.eval_lengths if n <= 8 * scale.base_len)
        results, evaluated = _evaluated(os.path.join(workdir, "eval"), source, None, scale.eval_lengths,
                                        retrieval, arm, scale, devices, log)
        return {"all": results}, evaluated
    by_length = {n: _evaluated(os.path.join(workdir, "eval", f"len_{n}"), source, n, (n,), (n,), arm, scale,
                               devices, log)
                 for n in scale.eval_lengths[1:]}
    return {n: r for n, (r, _) in by_length.items()}, any(e for _, e in by_length.values())


def _evaluated(out_dir: str, source: str, length: int | None, ppl_lengths: tuple[int, ...],
               retrieval: tuple[int, ...], arm: Arm, scale: Scale, devices, log) -> dict:
    """The results of one evaluation (perplexity in out_dir/ppl, retrieval in out_dir/retrieval), merged, and
    whether anything had to be evaluated (rather than read back)."""
    parts = {"ppl": dict(tasks=("ppl",), lengths=ppl_lengths,
                         ppl_methods=("nonoverlapping", "sliding", "fixed_target"),
                         fixed_target_context=max(scale.eval_lengths)),
             "retrieval": dict(tasks=("passkey", "multikey"), lengths=retrieval)}
    missing = [name for name in parts if not os.path.exists(os.path.join(out_dir, name, RESULTS_FILE))]
    if missing:
        cfg, params, tokenizer, _ = load_for_inference(source)
        if length is not None:  # zero-shot: the rotation scaled from L to `length`
            cfg = zero_shot_model(cfg, dict(arm.rope), length, scale.base_len)
        for name in missing:
            log(f"study: evaluating {arm.name}" + (f" at {length}" if length else "") + f" ({name})")
            config = dict(parts[name], source="stdlib:eval", max_documents=scale.eval_documents,
                          max_windows=scale.eval_windows, trials=scale.trials,
                          target_tokens=min(128, scale.base_len), stride=scale.base_len // 2)
            with jax.default_device(devices[0]):
                run_evaluation(cfg, params, tokenizer or "bytes", config, os.path.join(out_dir, name),
                               run_name=arm.name)
    ppl, retrieval_results = (load_results(os.path.join(out_dir, name)) for name in parts)
    merged = {**ppl, **{k: v for k, v in retrieval_results.items() if k in ("passkey", "multikey")}}
    return merged, bool(missing)


def zero_shot_model(cfg, rope: dict, length: int, base_len: int):
    """`cfg` with its rotation scaled from `base_len` to `length` as `rope` says ({} : direct
    extrapolation)."""
    if not rope:
        return cfg
    position = cfg.position.stretched(rope.pop("rope_type"), length, base_len).replace(**rope)
    return cfg.replace(position=position, max_seq_len=length)
