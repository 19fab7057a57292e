"""TPU generations, and slice names (`v5e-8`, `v5p-128`, `v4-32`, `v2-8`, `v5e:2x2`) as the topologies
libtpu compiles for; `slice_of(jax.devices())` names the slice a TPU VM has.

HBM and bf16 peak per chip, from the Google Cloud TPU documentation, one page per generation
(https://cloud.google.com/tpu/docs/v2, .../v3, .../v4, .../v5e, .../v5p, .../v6e):

| chip | HBM per chip | bf16 peak per chip | JAX devices per chip | `-N` in a slice name counts |
|------|--------------|--------------------|----------------------|-----------------------------|
| v2   | 16 GiB       | 45 TFLOP/s         | 2 (one per core)     | TensorCores (2 per chip)    |
| v3   | 32 GiB       | 123 TFLOP/s        | 2 (one per core)     | TensorCores (2 per chip)    |
| v4   | 32 GiB       | 275 TFLOP/s        | 1 (megacore)         | TensorCores (2 per chip)    |
| v5e  | 16 GiB       | 197 TFLOP/s        | 1                    | chips                       |
| v5p  | 95 GiB       | 459 TFLOP/s        | 1 (megacore)         | TensorCores (2 per chip)    |
| v6e  | 32 GiB       | 918 TFLOP/s        | 1                    | chips                       |

On v2 and v3 each core is its own device with half the chip's HBM and peak; the plan reports per device.
"""

from __future__ import annotations

import dataclasses
import math
import re

from ctxjax.errors import InputError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_gib: float  # per chip
    peak_tflops: float  # bf16, per chip
    devices_per_chip: int
    name_counts_cores: bool  # v4-8 is 4 chips (8 TensorCores); v5e-8 is 8 chips
    dims: int  # 2: a torus of x*y chips; 3: x*y*z
    chip_config: str  # libtpu's chip_config_name: "megacore" makes v4's two cores one device
    accelerator_type: str  # the prefix Cloud TPU's TPU_ACCELERATOR_TYPE uses (v5e is "v5litepod")

    @property
    def hbm_bytes_per_device(self) -> float:
        return self.hbm_gib * GIB / self.devices_per_chip

    @property
    def peak_flops_per_device(self) -> float:
        return self.peak_tflops * 1e12 / self.devices_per_chip


CHIPS = {c.name: c for c in (
    Chip("v2", 16, 45, 2, True, 2, "default", "v2"),
    Chip("v3", 32, 123, 2, True, 2, "default", "v3"),
    Chip("v4", 32, 275, 1, True, 3, "megacore", "v4"),
    Chip("v5e", 16, 197, 1, False, 2, "default", "v5litepod"),
    Chip("v5p", 95, 459, 1, True, 3, "default", "v5p"),
    Chip("v6e", 32, 918, 1, False, 2, "default", "v6e"),
)}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}
# jax's `device_kind` of each generation's devices: what a TPU VM (or Colab's TPU) reports, and what libtpu's
# devices of a topology report too.
DEVICE_KINDS = {"TPU v2": "v2", "TPU v3": "v3", "TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e",
                "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user gave it
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def devices(self) -> int:
        return self.chips * self.chip.devices_per_chip

    @property
    def topology_name(self) -> str:
        """What `jax.experimental.topologies.get_topology_desc` takes, e.g. "v5e:2x4"."""
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host: 2x2x1 (four chips) on every multi-host slice; smaller slices are one host."""
        padded = tuple(self.shape) + (1,) * (3 - len(self.shape))
        return tuple(min(n, bound) for n, bound in zip(padded, (2, 2, 1)))

    @property
    def accelerator_type(self) -> str:
        count = self.chips * (2 if self.chip.name_counts_cores else 1)
        return f"{self.chip.accelerator_type}-{count}"


def torus(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU gives `chips` chips: 2x4 for 8 v5e chips, 2x2x4 for 16 v4 chips (doubling
    the last of the shortest axes, as 2x2x1 -> 2x2x2 -> 2x2x4 -> 2x4x4 -> 4x4x4)."""
    if chips < 1 or chips & (chips - 1):
        raise InputError(f"a TPU slice has a power-of-two number of chips; got {chips}")
    shape = [1] * dims
    if dims == 3 and chips >= 4:
        shape = [2, 2, 1]
    while math.prod(shape) < chips:
        shortest = min(shape)
        last = max(i for i, n in enumerate(shape) if n == shortest)
        shape[last] *= 2
    return tuple(shape)


def parse_topology(name: str) -> Topology:
    """`v5e-8` (a Cloud TPU accelerator type) or `v5e:2x4` (libtpu's own name) -> Topology."""
    hint = f"use e.g. v5e-8, v5p-128, v4-32, v2-8 or v5e:2x2 (chips: {', '.join(CHIPS)})"
    match = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)*))", name.strip().lower())
    if not match:
        raise InputError(f"unknown TPU topology {name!r}; {hint}")
    generation, count, shape = match.groups()
    chip = CHIPS.get(ALIASES.get(generation, generation))
    if chip is None:
        raise InputError(f"unknown TPU generation {generation!r} in {name!r}; {hint}")
    if shape:
        dims = tuple(int(n) for n in shape.split("x"))
        if len(dims) != chip.dims:
            raise InputError(f"a {chip.name} slice has {chip.dims} axes (e.g. {chip.name}:"
                             f"{'x'.join(['2'] * chip.dims)}); got {name!r}")
        return Topology(name, chip, dims)
    count = int(count)
    if chip.name_counts_cores and count % 2:
        raise InputError(f"{name!r}: the number after {chip.name}- counts TensorCores, two per chip; "
                         "it must be even")
    return Topology(name, chip, torus(count // 2 if chip.name_counts_cores else count, chip.dims))


def slice_of(devices) -> str | None:
    """The slice name of TPU devices, as `--topology` takes it (`jax.devices()` of a Colab v5e: "v5e-1", of a
    v2-8 TPU VM: "v2-8"); None when they are no TPU's (CPU, GPU)."""
    devices = list(devices)
    if not devices or devices[0].platform != "tpu":
        return None
    kind = devices[0].device_kind
    chip = CHIPS.get(DEVICE_KINDS.get(kind, ""))
    if chip is None:
        raise InputError(f"TPU device kind {kind!r} is none of {', '.join(CHIPS)}; name the slice to plan "
                         "for yourself, e.g. v5e-8")
    chips = len(devices) // chip.devices_per_chip
    return f"{chip.name}-{chips * 2 if chip.name_counts_cores else chips}"
