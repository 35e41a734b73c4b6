"""Checkpoints with orbax: WORKDIR/checkpoints/<step>/ holding everything a run or a user needs.

Items of one checkpoint (each a sub-directory):
- `params/`     the model parameters (sharded arrays, restorable onto any device layout);
- `optimizer/`  the step counter and optimizer state (Adam moments, accumulated gradients);
- `data/`       the input iterator's position, one JSON file per host;
- `config/`     the run's config as JSON;
- `tokenizer/`  `spm.model`, the sentencepiece model (loadable by sentencepiece directly).

So a checkpoint alone is enough to decode. Reading checkpoints (decoding, averaging, resuming
training) is training/restoring.py's job; this module is the format and the saving.

Saving is asynchronous: `save` returns once arrays are copied off the devices, and the files
are written in the background. A checkpoint directory only gets its final name once every
item of every host is written, so a run killed mid-save leaves no half checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from training.state import TrainState

CHECKPOINTS_DIR = "checkpoints"
TOKENIZER_FILE = "spm.model"


# ------------------------------------------------------------------ small custom items


class ProcessJsonHandler(ocp.CheckpointHandler):
    """A JSON value per process (each host's data iterator is at its own position):
    `process_<i>-of-<n>.json`."""

    def save(self, directory: epath.Path, args: ProcessJsonSave) -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(args.item))

    def restore(self, directory: epath.Path, args: ProcessJsonRestore | None = None) -> Any:
        """This process's value; if the checkpoint was written by a different number of
        processes, the list of all their values in process order (the data iterator maps
        them onto this host count); None if there is none."""
        path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if path.exists():
            return json.loads(path.read_text())
        saved = {int(p.name.split("_")[1].split("-")[0]): p for p in directory.glob("process_*")}
        return [json.loads(saved[i].read_text()) for i in sorted(saved)] or None


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass


class FileBytesHandler(ocp.CheckpointHandler):
    """One opaque file written by process 0 (the sentencepiece model)."""

    def save(self, directory: epath.Path, args: FileBytesSave) -> None:
        if jax.process_index() == 0:
            (directory / TOKENIZER_FILE).write_bytes(args.data)

    def restore(self, directory: epath.Path, args: FileBytesRestore | None = None) -> bytes:
        return (directory / TOKENIZER_FILE).read_bytes()


@ocp.args.register_with_handler(FileBytesHandler, for_save=True)
@dataclasses.dataclass
class FileBytesSave(ocp.args.CheckpointArgs):
    data: bytes


@ocp.args.register_with_handler(FileBytesHandler, for_restore=True)
@dataclasses.dataclass
class FileBytesRestore(ocp.args.CheckpointArgs):
    pass


# ------------------------------------------------------------------ training side


def checkpoint_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
    """An asynchronous manager of WORKDIR/checkpoints keeping the newest `keep` checkpoints."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
        create=True,
    )
    return ocp.CheckpointManager(
        epath.Path(workdir).absolute() / CHECKPOINTS_DIR,
        options=options,
        item_names=("params", "optimizer", "data", "config", "tokenizer"),
    )


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (references resolved, tuples as lists)."""
    return json.loads(config.to_json_best_effort())


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    data_state: Any,
    config: ml_collections.ConfigDict,
    tokenizer_bytes: bytes,
) -> None:
    """Starts an asynchronous save of everything at `state.step`; every process must call it.
    The caller makes sure the parameters are finite (see loop.py)."""
    step = int(jax.device_get(state.step))
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
            data=ProcessJsonSave(data_state),
            config=ocp.args.JsonSave(config_to_json(config)),
            tokenizer=FileBytesSave(tokenizer_bytes),
        ),
        force=True,
    )


def restore_target(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying the target `shardings`: what orbax
    restores into (training/restoring.py reads checkpoints)."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


def saved_model_config(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The `model` section of the config stored with checkpoint `step`."""
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"][
        "model"
    ]


def find_checkpoint(path: str | Path) -> tuple[Path, int]:
    """(checkpoints directory, step) for a workdir, its checkpoints/ folder (newest step), or
    one step's folder. Raises FileNotFoundError with what was looked for."""
    path = Path(path).absolute()
    if (path / CHECKPOINTS_DIR).is_dir():
        path = path / CHECKPOINTS_DIR
    if path.name.isdigit() and (path / "params").is_dir():
        return path.parent, int(path.name)
    steps = (
        sorted(
            int(child.name) for child in path.glob("*") if child.name.isdigit() and child.is_dir()
        )
        if path.is_dir()
        else []
    )
    if not steps:
        raise FileNotFoundError(
            f"No checkpoint found at {path}: pass a training workdir, its checkpoints/ folder "
            "or one checkpoint's folder (checkpoints/<step>)."
        )
    return path, steps[-1]
