"""Training one run on several processes (hosts): joining a `jax.distributed` job.

`qresnet train` calls `initialize` before anything touches JAX. With a coordinator given (flags,
or $QRESNET_COORDINATOR, $QRESNET_NUM_PROCESSES, $QRESNET_PROCESS_ID: on Kubernetes, from an
indexed Job's completion index) it joins that job; under SLURM with several tasks or Open MPI it
lets `jax.distributed.initialize()` read the cluster; otherwise it does nothing and the run is a
single process.

In a multi-process run every process builds the same global mesh over all devices, the batch is
split over the devices (BN statistics and activation bounds are taken over the global batch, or
per replica, as on one host), every process takes part in each Orbax checkpoint, and only
process 0 holds the workdir's lock and writes config.json, metrics, TensorBoard events and
result.json. A restart of all processes resumes from the last checkpoint.
"""

from __future__ import annotations

import os

import jax
import numpy as np


class DistributedError(ValueError):
    """Options that do not describe a multi-process job; the message names the fix."""


def _cluster() -> str:
    """The cluster manager that started several processes of this job, if any ("" if none)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    return ""


def _env_int(var: str) -> int | None:
    value = os.environ.get(var)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"${var}={value!r} is not an integer; set it to this job's number or unset it") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> str:
    """Joins the job if there is one (module doc); returns how ("" for a single process).

    Raises:
      DistributedError: a coordinator without the process count and id, or an id out of range.
    """
    coordinator = coordinator or os.environ.get("QRESNET_COORDINATOR") or None
    num_processes = _env_int("QRESNET_NUM_PROCESSES") if num_processes is None else num_processes
    process_id = _env_int("QRESNET_PROCESS_ID") if process_id is None else process_id
    # Collectives between CPU processes (tests, CPU clusters) go through Gloo; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--coordinator {coordinator} needs --num-processes N and --process-id I with 0 <= I < N "
                f"(got {num_processes}, {process_id})"
            )
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
        return f"process {process_id} of {num_processes} (coordinator {coordinator})"
    if num_processes is not None or process_id is not None:
        raise DistributedError("--num-processes and --process-id go with --coordinator HOST:PORT")
    manager = _cluster()
    if manager:
        jax.distributed.initialize()
        return f"process {jax.process_index()} of {jax.process_count()} ({manager})"
    return ""


def primary() -> bool:
    """Whether this process writes the run's records (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across the job's processes (nothing in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def put_replicated(x, sharding):
    """`jax.device_put(x, sharding)` for a value every process holds the same copy of (a host array
    or a PRNG key): with several processes JAX places host values only, not local device arrays."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put_replicated(jax.random.key_data(x), sharding))
    return jax.device_put(np.asarray(x), sharding)


def put_local(x, sharding):
    """The global array whose rows on this process's devices are `x`, this process's rows of a
    batch split over every process (`jax.make_array_from_process_local_data`)."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
