"""The longest context whose train step fits a TPU slice, found by the TPU compiler itself: the config's last
stage is compiled at growing sequence lengths (doubling from its own, then bisection between the last length
that fits and the first that does not, in steps of `granule` tokens).

At each length the stage keeps the config's tokens per step where it can (fewer, longer rows) and never has
fewer rows than the data-parallel shards (data x fsdp); a config that accumulates gradients runs one row per
shard per micro-batch, the least memory a step can take. A length fits when the compiler accepts the program
and its total per device (report.stage_plan) is within the budget: the chip's HBM, or less to keep headroom.
"""

from __future__ import annotations

import copy
from typing import Callable

from ctxjax.errors import InputError
from ctxjax.plan.chips import Topology
from ctxjax.plan.report import stage_plan
from ctxjax.sharding import MESH_AXES, mesh_shape
from ctxjax.train.aot import StepDoesNotFit, compiled_stages
from ctxjax.train.configs import zigzag_shards

MAX_DOUBLINGS = 24  # 128 tokens doubled 24 times is 2G tokens: nothing fits past that


def config_at_length(config, seq_len: int, batch_ways: int):
    """`config` reduced to its last stage at `seq_len` tokens (rows as described in the module's doc)."""
    out = copy.deepcopy(config)
    last = {k: v for k, v in dict(config.stages[-1]).items() if k != "batch_size"}
    rows = max(int(config.tokens_per_step) // seq_len // batch_ways, 1) * batch_ways
    out.stages = [{**last, "seq_len": seq_len}]
    out.tokens_per_step = rows * seq_len
    if int(config.micro_batch_size):
        out.micro_batch_size = batch_ways
    return out


def plan_at_length(config, devices, topology: Topology, seq_len: int, budget: int) -> dict:
    """The stage plan at `seq_len`, with `fits`; a program the compiler refuses is a plan that does not fit,
    holding the compiler's words in `reason`."""
    try:
        one_stage = config_at_length(config, seq_len, batch_ways(config, devices))
        (compiled,) = compiled_stages(one_stage, devices)
    except StepDoesNotFit as error:
        return {"seq_len": seq_len, "fits": False, "total_bytes": None, "reason": str(error)}
    row = stage_plan(compiled, topology)
    return {**row, "fits": row["total_bytes"] <= budget, "reason": ""}


def longest_context(config, devices, topology: Topology, budget: int | None = None, granule: int = 128,
                    log: Callable[[dict], None] = lambda row: None) -> tuple[int, list[dict]]:
    """(the longest fitting length, every plan tried in order). 0 when even the shortest does not fit."""
    budget = budget or topology.chip.hbm_bytes_per_device
    granule = _granule(config, devices, granule)
    tried: dict[int, dict] = {}

    def fits(n: int) -> bool:
        tried[n] = plan_at_length(config, devices, topology, n, budget)
        log(tried[n])
        return tried[n]["fits"]

    start = max(granule, int(dict(config.stages[-1])["seq_len"]) // granule * granule)
    if not fits(start):  # shrink first: the answer is below the config's own length
        high, low = start, 0
        while low == 0 and high > granule:
            candidate = max(granule, high // 2 // granule * granule)
            (low, high) = (candidate, high) if fits(candidate) else (0, candidate)
        if low == 0:
            return 0, list(tried.values())
    else:
        low, high = start, 0
        for _ in range(MAX_DOUBLINGS):
            if not fits(2 * low):
                high = 2 * low
                break
            low *= 2
        else:
            raise InputError(f"{topology.name}: still fits at {low} tokens; the search stops there")
    while high - low > granule:
        middle = (low + high) // 2 // granule * granule
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, [tried[n] for n in sorted(tried)]


def mesh_sizes(config, n_devices: int) -> dict[str, int]:
    return dict(zip(MESH_AXES, mesh_shape(dict(config.mesh), n_devices)))


def batch_ways(config, devices) -> int:
    """How many ways the config's mesh splits a batch over `devices` (data x fsdp): a step has a multiple of
    it rows."""
    sizes = mesh_sizes(config, len(devices))
    return sizes["data"] * sizes["fsdp"]


def _granule(config, devices, granule: int) -> int:
    """Lengths the mesh can split: multiples of the sequence axis (twice it for ring's zig-zag order)."""
    sequence = mesh_sizes(config, len(devices))["sequence"]
    step = 2 * sequence if zigzag_shards(config, sequence) else sequence
    return (granule + step - 1) // step * step
