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

import logging as pylogging
import sys
import sysconfig
import traceback
from collections.abc import Sequence
from pathlib import Path

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


def config_file_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of `error`'s traceback in a file of ours (a config file, or a module
    it imports), not in Python, an installed package or this file; None if there is none."""
    paths = sysconfig.get_paths()
    library = tuple({paths["stdlib"], paths["purelib"], paths["platlib"]})
    ours = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith((*library, "<"))
        and Path(frame.filename).resolve() != Path(__file__).resolve()
    ]
    return ours[-1] if ours else None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing, with one-line errors for an exception inside a config file and for a
    misspelt --config.FIELD override."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:
        frame = config_file_frame(error)
        if frame is not None:
            sys.exit(
                f"train.py: error: the config raised {type(error).__name__}: {error} "
                f"({frame.filename}, line {frame.lineno}); fix that line."
            )
        if isinstance(error, AttributeError | KeyError):
            message = str(error).strip("'\"").replace("\\n", " ").replace("'", "")
            sys.exit(f"train.py: error: unknown config field in a --config override: {message}")
        if isinstance(error, flags.Error):
            sys.exit(f"train.py: error: {error}\nPass --helpfull to see the flags.")
        raise


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required.")
    if not _LIBRARY_LOGS.value:
        logging.get_absl_handler().addFilter(_HideLibraryInfo())

    from input_pipeline import DataError
    from training import distributed, errors
    from training.loop import train_and_evaluate

    try:
        distributed.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value
        )
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (
        DataError,
        errors.ConfigError,
        errors.DistributedSetupError,
        errors.TrainingDivergedError,
        errors.WorkdirLockedError,
    ) as error:
        sys.exit(f"train.py: error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
