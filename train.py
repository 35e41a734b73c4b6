"""Train the Transformer: `python train.py --config=configs/default.py --workdir=runs/default`.

Override any config field with --config.FIELD=VALUE (e.g. --config.num_train_steps=100).
Running again with the same --workdir resumes from its newest checkpoint. Multi-host: start
one process per host with --coordinator_address/--num_processes/--process_id, or none of them
on TPU VMs and SLURM, where JAX finds the cluster itself. See training/loop.py.
"""

from __future__ import annotations

from training.host_memory import use_huge_pages

if __name__ == "__main__":
    use_huge_pages()  # before JAX loads: may re-execute this program (training/host_memory.py)

import contextlib
import logging as pylogging
import sys
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, e.g. configs/default.py; fields can be overridden with --config.FIELD=VALUE.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard events, tokenizer."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0's coordinator service."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: total number of processes (one per host)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index in [0, num_processes)."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "Multi-host: seconds to wait for every process to join before giving up with an error.",
)
_LIBRARY_LOGS = flags.DEFINE_bool(
    "library_logs", False, "Also show the INFO messages of libraries (orbax, TFDS, JAX)."
)


class _HideLibraryInfo(pylogging.Filter):
    """Keeps INFO messages of this project and warnings/errors of everyone."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "site-packages" not in record.pathname


def initialize_distributed() -> None:
    """Joins the other processes, from the flags or from the cluster's environment."""
    if _COORDINATOR.value is not None:
        if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
            raise app.UsageError(
                "--coordinator_address needs --num_processes and --process_id as well."
            )
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            initialization_timeout=_INIT_TIMEOUT.value,
        )
        return
    # TPU VMs, SLURM, Open MPI, ...: JAX reads the cluster's environment. A ValueError means
    # no cluster was found: a single process.
    with contextlib.suppress(ValueError):
        jax.distributed.initialize(initialization_timeout=_INIT_TIMEOUT.value)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing, with a one-line error for a misspelt --config.FIELD override."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        message = str(error).strip("'\"").replace("\\n", " ").replace("'", "")
        sys.exit(f"train.py: error: unknown config field in a --config override: {message}")
    except flags.Error as error:
        sys.exit(f"train.py: error: {error}\nPass --helpfull to see the flags.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required.")
    if not _LIBRARY_LOGS.value:
        logging.get_absl_handler().addFilter(_HideLibraryInfo())
    initialize_distributed()

    from input_pipeline import DataError
    from training.errors import ConfigError, TrainingDivergedError
    from training.loop import train_and_evaluate

    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataError, TrainingDivergedError) as error:
        sys.exit(f"train.py: error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
