"""`ctxjax plan --find-max-seq-len --compare`: the longest-context search run for variations of a config that
change where memory goes but not the model, side by side, so that a user picks a plan before paying.

An alternative is a name and a list of `FIELD=VALUE` overrides. Without names given, `default_alternatives`
offers what applies to the config: the memory-saving remat policies it does not use; with a sequence axis,
the other sequence-parallel kernel (ring <-> ulysses); fsdp against tensor parallelism (the tensor axis folded
into fsdp, or a tensor axis of 4 taken from fsdp). An alternative the config cannot take (heads that do not
split over a Ulysses axis, a mesh that does not divide) is reported with its one-line reason, not fatal.
"""

from __future__ import annotations

from typing import Callable

from ctxjax.errors import InputError
from ctxjax.plan.chips import Topology
from ctxjax.plan.search import longest_context, mesh_sizes
from ctxjax.train.configs import apply_overrides

# The policies that trade compute for activation memory, from least to most recomputation.
MEMORY_SAVING_REMAT = ("attention", "dots_no_batch", "full")


def default_alternatives(config, n_devices: int) -> list[tuple[str, list[str]]]:
    """(name, overrides) of the config as it is and of each variation that applies to it."""
    out: list[tuple[str, list[str]]] = [("as configured", [])]
    out += [(f"remat={policy}", [f"execution.remat={policy}"])
            for policy in MEMORY_SAVING_REMAT if policy != config.execution.remat]
    sizes = mesh_sizes(config, n_devices)
    if sizes["sequence"] > 1:
        other = "ulysses" if config.execution.attention == "ring" else "ring"
        out.append((f"attention={other}", [f"execution.attention={other}"]))
    if sizes["tensor"] > 1:
        fsdp = sizes["fsdp"] * sizes["tensor"]
        out.append((f"fsdp={fsdp}, tensor=1", [f"mesh.fsdp={fsdp}", "mesh.tensor=1"]))
    elif sizes["fsdp"] % 4 == 0 and sizes["fsdp"] > 4:
        fsdp = sizes["fsdp"] // 4
        out.append((f"fsdp={fsdp}, tensor=4", [f"mesh.fsdp={fsdp}", "mesh.tensor=4"]))
    return out


def parse_alternatives(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`--compare 'execution.remat=full' 'mesh.fsdp=16 mesh.tensor=1'`: each argument is one alternative of
    space-separated overrides, named by them; the config as it is comes first."""
    out = [("as configured", [])]
    for spec in specs:
        overrides = spec.replace(",", " ").split() if "=" in spec else []
        if not overrides or any("=" not in item for item in overrides):
            raise InputError(f"--compare {spec!r}: give each alternative as FIELD=VALUE overrides separated "
                             "by spaces, e.g. --compare 'execution.remat=full' 'mesh.fsdp=16 mesh.tensor=1'")
        out.append((" ".join(overrides), [item.removeprefix("--config.") for item in overrides]))
    return out


def compare_plans(config, devices, topology: Topology, alternatives, budget: int,
                  log: Callable[[str, dict], None] = lambda name, row: None) -> list[dict]:
    """One summary per alternative: the longest length that fits and its plan there, or why none."""
    summaries = []
    for name, overrides in alternatives:
        try:
            variant = apply_overrides(config.copy_and_resolve_references(), overrides)
            longest, rows = longest_context(variant, devices, topology, budget,
                                            log=lambda row, name=name: log(name, row))
        except InputError as error:  # a variant the config or the kernels cannot take
            summaries.append({"name": name, "longest": 0, "plan": None, "reason": str(error)})
            continue
        plan = next((row for row in rows if row["seq_len"] == longest), None)
        reason = "" if longest else f"nothing fits down to {rows[0]['seq_len']} tokens"
        summaries.append({"name": name, "longest": longest, "plan": plan, "reason": reason})
    return summaries
