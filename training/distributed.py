"""Joining the other processes of a multi-host job (`jax.distributed.initialize`), loudly.

Three outcomes, each logged with the reason:
- the flags name a coordinator: join it, or fail with the reason;
- JAX finds a cluster in the environment (TPU pod, SLURM, Open MPI...): join it;
- no cluster found: one process. But if the environment says this process is one of several
  (SLURM_NTASKS=4, OMPI_COMM_WORLD_SIZE=8, a TPU pod's host list...) and JAX could not join them,
  that is an error: running on would make every host train alone as process 0 of 1, all of
  them into the same workdir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

from training.errors import DistributedSetupError

# Variables that launchers set for each process of a job, with the number of processes.
PROCESS_COUNT_VARIABLES = {
    "SLURM_NTASKS": "SLURM",
    "SLURM_NPROCS": "SLURM",
    "OMPI_COMM_WORLD_SIZE": "Open MPI",
    "PMI_SIZE": "MPI (PMI)",
    "WORLD_SIZE": "a torchrun-style launcher",
}
# Comma-separated host lists of TPU pod slices (Cloud TPU VMs, GKE).
TPU_HOST_LIST_VARIABLES = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def cluster_in_environment(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """(what says so, how many processes) if `environ` describes a job of several processes,
    else None."""
    for variable, launcher in PROCESS_COUNT_VARIABLES.items():
        value = environ.get(variable, "")
        if value.strip().isdigit() and int(value) > 1:
            return f"{launcher}: {variable}={value.strip()}", int(value)
    for variable in TPU_HOST_LIST_VARIABLES:
        hosts = [host for host in environ.get(variable, "").split(",") if host.strip()]
        if len(hosts) > 1:
            return f"TPU pod: {variable} lists {len(hosts)} hosts", len(hosts)
    return None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:500]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: int = 300,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Joins the job's other processes (module docstring); returns the mode, also logged.

    Raises DistributedSetupError with a one-line reason when joining fails."""
    environ = os.environ if environ is None else environ
    if coordinator_address is not None:
        if num_processes is None or process_id is None:
            raise DistributedSetupError(
                "--coordinator_address needs --num_processes and --process_id as well."
            )
        _join(
            "--coordinator_address",
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_seconds,
        )
        return _log_joined(f"coordinator {coordinator_address} from the flags")
    cluster = cluster_in_environment(environ)
    try:
        jax.distributed.initialize(initialization_timeout=timeout_seconds)
    except ValueError as error:  # JAX found no cluster it knows
        if cluster is not None:
            raise DistributedSetupError(
                f"The environment says this is one of several processes ({cluster[0]}), but "
                f"JAX could not join them: {_one_line(error)}. Pass --coordinator_address, "
                "--num_processes and --process_id, or launch a single process outside the "
                "cluster's launcher."
            ) from None
        mode = (
            "single process: no cluster in the environment (TPU pod, SLURM, Open MPI); for "
            "several hosts pass --coordinator_address, --num_processes and --process_id"
        )
        logging.info("Distributed: %s.", mode)
        return mode
    except RuntimeError as error:
        raise DistributedSetupError(
            f"Joining the cluster found in the environment failed: {_one_line(error)}"
        ) from None
    if cluster is not None and jax.process_count() != cluster[1]:
        raise DistributedSetupError(
            f"JAX joined {jax.process_count()} process(es) but the environment says "
            f"{cluster[1]} ({cluster[0]}). Pass --coordinator_address, --num_processes and "
            "--process_id."
        )
    return _log_joined("found by JAX in the environment" + (f" ({cluster[0]})" if cluster else ""))


def _join(source: str, **arguments) -> None:
    try:
        jax.distributed.initialize(**arguments)
    except (ValueError, RuntimeError) as error:
        raise DistributedSetupError(
            f"Could not join the processes named by {source}: {_one_line(error)}"
        ) from None


def _log_joined(how: str) -> str:
    mode = f"process {jax.process_index()} of {jax.process_count()}, {how}"
    logging.info("Distributed: %s.", mode)
    return mode
