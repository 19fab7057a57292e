"""Abstract TPU devices of a topology, from libtpu, on a host without a TPU.

libtpu is optional (the `tpu` and `test` extras install it): without it this raises one line with the
install command. It expects a TPU VM's environment and logs warnings about what it misses (accelerator type,
worker host names); the settings below are what a one-host slice of that topology would have, set before
libtpu loads, so a user sees none of that. A user's own settings win. libtpu also takes a lock file that
keeps a second process from loading it (a training on this TPU VM, another plan, a parallel test): a plan
uses no chip, so it does not take the lock.
"""

from __future__ import annotations

import os

import jax

from ctxjax.errors import InputError
from ctxjax.plan.chips import Topology
from ctxjax.tpu_plugin import libtpu_available

LIBTPU_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "TPU_STDERR_LOG_LEVEL": "3", "TPU_MIN_LOG_LEVEL": "3",
                      "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def install_command() -> str:
    return f'pip install "jax[tpu]=={jax.__version__}"'


def tpu_devices(topology: Topology) -> list:
    """The devices of `topology`, in the order `ctxjax.sharding.make_mesh` lays out."""
    if not libtpu_available():
        raise InputError(f"compiling for {topology.name} needs libtpu, which is not installed: "
                         f"{install_command()}")
    for key, value in {**LIBTPU_ENVIRONMENT, "TPU_ACCELERATOR_TYPE": topology.accelerator_type}.items():
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=topology.topology_name, chip_config_name=topology.chip.chip_config,
            chips_per_host_bounds=topology.host_bounds, num_slices=1)
    except Exception as error:  # a libtpu that does not match jax, or a shape it does not know
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"libtpu cannot describe {topology.name} ({topology.topology_name}): {first[:300]}; "
                         f"the libtpu matching this jax comes with {install_command()}") from None
    return list(description.devices)
