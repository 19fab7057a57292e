"""Per-device numbers of a compiled train step, read from the TPU compiler's memory and cost analyses, set
against the chip's HBM and bf16 peak."""

from __future__ import annotations

import math

import jax

from ctxjax.plan.chips import GIB, Topology
from ctxjax.plan.evaluation import CompiledProgram
from ctxjax.train.aot import FIT_HINT, CompiledStage, StepDoesNotFit
from ctxjax.train.cost import flops_per_token


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(tree))


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def memory_plan(compiled, topology: Topology) -> dict:
    """Bytes per device of a compiled program. `total_bytes` is what it holds at its peak: arguments +
    outputs not aliased to them (a train step donates its state) + temporaries + code."""
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    return {"argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
            "alias_bytes": memory.alias_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
            "code_bytes": memory.generated_code_size_in_bytes, "total_bytes": total,
            "hbm_bytes": topology.chip.hbm_bytes_per_device}


def program_plan(p: CompiledProgram, topology: Topology) -> dict:
    """Bytes per device of one evaluation program (ctxjax/plan/evaluation.py)."""
    return {"program": p.name, "seq_len": p.seq_len, "batch_size": p.batch_size,
            "params_bytes": per_device_bytes(p.params), **memory_plan(p.compiled, topology)}


def stage_plan(c: CompiledStage, topology: Topology) -> dict:
    """Bytes (`memory_plan`) and FLOPs per device of one stage's train step."""
    cost = _cost(c.compiled)
    chip, stage = topology.chip, c.stage
    compiled_flops = float(cost.get("flops", 0.0))
    tokens = stage.batch_size * stage.seq_len
    model_flops = flops_per_token(c.model.config, stage.seq_len, c.model.adaptation, c.labels) * tokens
    model_flops /= topology.devices
    # XLA's FLOP count sees each loop body once (the scans over layers and micro-batches, ring hops, block
    # loops) and nothing inside a Mosaic kernel (splash): on the pod recipe it is 200x short of the model's
    # count. So the step time comes from the model's FLOPs at the chip's peak (MFU 100%, a lower bound).
    step_s = model_flops / chip.peak_flops_per_device
    return {
        "stage": stage.index, "seq_len": stage.seq_len, "batch_size": stage.batch_size,
        "attention": c.model.execution.attention, "remat": c.model.execution.remat,
        "params_bytes": per_device_bytes(c.state["params"]),
        "optimizer_bytes": per_device_bytes(c.state["opt_state"]),
        **memory_plan(c.compiled, topology),
        "compiled_flops": compiled_flops, "model_flops": model_flops,
        "xla_roofline_seconds": float(cost.get("optimal_seconds", 0.0)), "step_seconds_at_peak": step_s,
        "tokens_per_second_per_device_at_peak": tokens / topology.devices / step_s if step_s else None,
    }


def check_fits(row: dict, topology: Topology, budget: int | None = None) -> None:
    """Raise when a stage or evaluation program needs more than `budget` bytes per device (default: the
    chip's HBM)."""
    budget = budget or row["hbm_bytes"]
    if row["total_bytes"] > budget:
        where = (f"{topology.chip.name}'s {gib(budget)}" if budget == row["hbm_bytes"]
                 else f"the {gib(budget)} planned for")
        what = f"stage {row['stage']}" if "stage" in row else f"evaluation program {row['program']!r}"
        raise StepDoesNotFit(
            f"{what} (seq_len {row['seq_len']}, batch {row['batch_size']}) needs "
            f"{gib(row['total_bytes'])} per device of {where} "
            f"(temporaries {gib(row['temp_bytes'])}, state and batch {gib(row['argument_bytes'])}); "
            f"{FIT_HINT}")


def gib(n: float) -> str:
    """Bytes in GiB, or MiB below one GiB (a tiny test model's numbers are not all zero)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


COLUMNS = (("stage", "stage", str), ("seq_len", "seq_len", str), ("batch", "batch_size", str),
           ("params", "params_bytes", gib), ("optimizer", "optimizer_bytes", gib),
           ("arguments", "argument_bytes", gib), ("outputs", "output_bytes", gib),
           ("temporaries", "temp_bytes", gib), ("code", "code_bytes", gib), ("total", "total_bytes", gib),
           ("of HBM", "total_bytes", None), ("XLA TFLOP", "compiled_flops", lambda f: f"{f / 1e12:.3g}"),
           ("model TFLOP", "model_flops", lambda f: f"{f / 1e12:.3g}"),
           ("step s at MFU 100%", "step_seconds_at_peak", lambda s: f"{s:.3g}"),
           ("at MFU 50%", "step_seconds_at_peak", lambda s: f"{2 * s:.3g}"))


PROGRAM_COLUMNS = (("evaluation program", "program", str), ("seq_len", "seq_len", str),
                   ("batch", "batch_size", str), ("params", "params_bytes", gib),
                   ("arguments", "argument_bytes", gib), ("outputs", "output_bytes", gib),
                   ("temporaries", "temp_bytes", gib), ("code", "code_bytes", gib),
                   ("total", "total_bytes", gib), ("of HBM", "total_bytes", None))


def markdown_table(rows: list[dict], topology: Topology) -> str:
    """One line per stage, bytes and FLOPs per device."""
    chip = topology.chip
    return (f"{topology.name} = {topology.topology_name}: {topology.devices} devices of "
            f"{gib(chip.hbm_bytes_per_device)} HBM and {chip.peak_flops_per_device / 1e12:.4g} TFLOP/s bf16; "
            "bytes, FLOPs and times per device and step\n\n" + _table(rows, COLUMNS))


def program_table(rows: list[dict]) -> str:
    """One line per evaluation program, bytes per device."""
    return _table(rows, PROGRAM_COLUMNS)


def _table(rows: list[dict], columns) -> str:
    header = [name for name, _, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{100 * row['total_bytes'] / row['hbm_bytes']:.0f}%" if fmt is None else fmt(row[key])
                 for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def length_table(rows: list[dict], budget: int) -> str:
    """The longest-context search's plans, by length: memory per device against the budget."""
    lines = ["| seq_len | batch | total per device | of budget | fits |", "|---|---|---|---|---|"]
    for row in rows:
        total = row["total_bytes"]
        lines.append(f"| {row['seq_len']} | {row.get('batch_size', '–')} | "
                     f"{gib(total) if total is not None else 'refused by the compiler'} | "
                     f"{f'{100 * total / budget:.0f}%' if total is not None else '–'} | "
                     f"{'yes' if row['fits'] else 'no'} |")
    return "\n".join(lines)


def comparison_table(summaries: list[dict], budget: int) -> str:
    """`--compare`'s alternatives side by side: the longest length each fits, and its plan at that length."""
    lines = ["| plan | longest seq_len | batch | total per device | of budget | model TFLOP | "
             "step s at MFU 50% | note |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        plan = s["plan"]
        if plan is None:
            lines.append(f"| {s['name']} | – | – | – | – | – | – | {s['reason']} |")
            continue
        lines.append(f"| {s['name']} | {s['longest']} | {plan['batch_size']} | {gib(plan['total_bytes'])} | "
                     f"{100 * plan['total_bytes'] / budget:.0f}% | {plan['model_flops'] / 1e12:.3g} | "
                     f"{2 * plan['step_seconds_at_peak']:.3g} | {s['reason']} |")
    return "\n".join(lines)
