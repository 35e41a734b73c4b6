"""Restoring checkpoints: the one path from a checkpoint to parameters on devices.

- `restore_for_translation(path, ...)`: what decoding needs (translate.py, the server, the
  export, scripts/exact_match.py). From a training workdir (its newest checkpoint) or one
  checkpoint folder `checkpoints/<step>`, it reads
  - the config: the one saved with the checkpoint, or one the caller gives (then the parameter
    shapes are checked against it: a mismatch names the first parameter that does not fit);
  - the tokenizer: the one saved with the checkpoint, or a sentencepiece file the caller gives;
  - the parameters only (never the optimizer state), of that checkpoint or the mean of the last
    N checkpoints up to it (training/averaging.py).
- `restore_train_state(...)`: training's resume; the same parameter restore, plus the
  optimizer state and the data iterator's position.

Both read parameters with `restore_params` into a `param_target`: the model's parameter shapes
(model/parameters.py) placed on this host's first device or sharded over a mesh. The layout
used in training does not matter. The format is the one training/checkpointing.py writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import linen as nn
from jax.sharding import Mesh, SingleDeviceSharding

from data.errors import DataError
from input_pipeline import Tokenizer
from model import Transformer
from model.parameters import abstract_params
from training import averaging, checkpointing, partitioning
from training.configuration import model_config
from training.errors import ConfigError
from training.state import TrainState


class RestoreError(ValueError):
    """A checkpoint cannot be used as asked; the message is one line saying what to do."""


@dataclasses.dataclass
class Restored:
    """A model ready to decode."""

    config: ml_collections.ConfigDict  # the run's config (plain values)
    model: Transformer
    params: Any  # unboxed parameter tree, on one device or sharded over a mesh
    tokenizer: Tokenizer
    checkpoints_dir: Path  # WORKDIR/checkpoints
    steps: list[int]  # the checkpoint(s) read: one, or those averaged (oldest first)


def checkpoint_steps(checkpoints_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a checkpoints/ folder, oldest first."""
    return sorted(
        int(child.name)
        for child in checkpoints_dir.iterdir()
        if child.name.isdigit() and (child / "params").is_dir()
    )


def steps_to_read(checkpoints_dir: Path, step: int, average_last: int) -> list[int]:
    """The `average_last` newest steps up to and including `step`."""
    if average_last < 1:
        raise RestoreError(f"--average_last must be at least 1, got {average_last}.")
    available = [s for s in checkpoint_steps(checkpoints_dir) if s <= step]
    if len(available) < average_last:
        raise RestoreError(
            f"Cannot average the last {average_last} checkpoints: {checkpoints_dir} has only "
            f"{len(available)} up to step {step} ({available}); lower --average_last or keep "
            "more checkpoints in training (config.keep_checkpoints)."
        )
    return available[-average_last:]


def saved_config(step_dir: Path) -> ml_collections.ConfigDict:
    """The config stored with one checkpoint."""
    if not (step_dir / "config").is_dir():
        raise RestoreError(
            f"{step_dir} has no saved config (config/): pass --config=FILE with the config the "
            "model was trained with."
        )
    saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(epath.Path(step_dir / "config"))
    return ml_collections.ConfigDict(saved)


def load_tokenizer(step_dir: Path, tokenizer_file: str | Path | None, vocab_size: int) -> Tokenizer:
    """The tokenizer given as a file, else the one saved with the checkpoint."""
    saved = step_dir / "tokenizer" / checkpointing.TOKENIZER_FILE
    path = Path(tokenizer_file) if tokenizer_file else saved
    if not path.is_file():
        if tokenizer_file:
            raise RestoreError(f"Tokenizer file {path} not found: check the --tokenizer path.")
        workdir = step_dir.parent.parent  # WORKDIR/checkpoints/<step>
        hint = workdir / "tokenizer" / checkpointing.TOKENIZER_FILE
        raise RestoreError(
            f"{step_dir} has no tokenizer ({saved.relative_to(step_dir)}): pass "
            f"--tokenizer=SPM_MODEL, the sentencepiece model the run trained with "
            f"(training writes it to WORKDIR/tokenizer/spm.model"
            + (f", e.g. {hint}" if hint.is_file() else "")
            + ")."
        )
    try:
        tokenizer = Tokenizer.load(path)
    except (DataError, RuntimeError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RestoreError(f"{path} is not a usable sentencepiece model: {first_line}.") from None
    if tokenizer.vocab_size > vocab_size:
        raise RestoreError(
            f"The tokenizer {path} has {tokenizer.vocab_size} pieces but the model's vocabulary "
            f"has {vocab_size}: use the tokenizer the checkpoint was trained with."
        )
    return tokenizer


def _shapes_by_name(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(x.shape) for path, x in flat
    }


def check_shapes(step_dir: Path, expected: Any) -> None:
    """Raises RestoreError naming the first parameter whose presence or shape in the
    checkpoint differs from `expected` (an unboxed tree of shapes)."""
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / "params"))
    saved = _shapes_by_name(metadata.tree)
    wanted = _shapes_by_name(expected)
    advice = (
        "decode with the config saved in the checkpoint (drop --config and its overrides) or "
        "pick a checkpoint of this model."
    )
    for name in sorted(set(saved) | set(wanted)):
        if name not in saved:
            problem = f"the config has parameter {name} {wanted[name]} that the checkpoint lacks"
        elif name not in wanted:
            problem = f"the checkpoint has parameter {name} {saved[name]} the config lacks"
        elif saved[name] != wanted[name]:
            problem = f"{name} is {saved[name]} in the checkpoint but {wanted[name]} in the config"
        else:
            continue
        raise RestoreError(f"{step_dir} does not fit the model config: {problem}; {advice}")


def param_target(model: Transformer, mesh: Mesh | None = None) -> Any:
    """What parameters are restored into: `model`'s parameter shapes as ShapeDtypeStructs,
    each on this host's first device, or, given a `mesh`, sharded over it by the model's
    logical axis names (training/partitioning.py)."""
    boxed = abstract_params(model)
    shapes = nn.unbox(boxed)
    if mesh is None:
        device = SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, shapes)
    else:
        shardings = partitioning.shardings_for(boxed, mesh)
    return checkpointing.restore_target(shapes, shardings)


def restore_params(checkpoints_dir: Path, steps: list[int], target: Any) -> Any:
    """The parameters of checkpoint `steps[0]`, or the mean of those of all `steps`, restored
    into `target` (see `param_target`). Every checkpoint's shapes are checked first."""
    for step in steps:
        check_shapes(checkpoints_dir / str(step), target)

    def read(step: int) -> Any:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(epath.Path(checkpoints_dir / str(step) / "params"), target)

    if len(steps) == 1:
        return read(steps[0])
    return averaging.average_params(read(step) for step in steps)


def restore_for_translation(
    path: str | Path,
    *,
    average_last: int = 1,
    config: ml_collections.ConfigDict | None = None,
    tokenizer_file: str | Path | None = None,
    mesh: Mesh | None = None,
) -> Restored:
    """Config, model, parameters (averaged over the last `average_last` checkpoints up to the
    one `path` names) and tokenizer, on this host's first device or sharded over `mesh`.
    `config` replaces the saved config; `tokenizer_file` the saved tokenizer. Raises
    RestoreError (one line) when something does not fit."""
    try:
        checkpoints_dir, step = checkpointing.find_checkpoint(path)
    except FileNotFoundError as error:
        raise RestoreError(str(error)) from None
    steps = steps_to_read(checkpoints_dir, step, average_last)
    newest = checkpoints_dir / str(steps[-1])
    if config is None:
        config = saved_config(newest)
    try:
        model = Transformer(model_config(config))
    except (ConfigError, KeyError, AttributeError) as error:
        raise RestoreError(f"The model config of {newest} is not usable: {error}") from None
    tokenizer = load_tokenizer(newest, tokenizer_file, model.config.vocab_size)
    params = restore_params(checkpoints_dir, steps, param_target(model, mesh))
    logging.info("Restored the parameters of steps %s from %s.", steps, checkpoints_dir)
    return Restored(config, model, params, tokenizer, checkpoints_dir, steps)


def restore_train_state(
    manager: ocp.CheckpointManager, step: int, abstract_state: TrainState, shardings: TrainState
) -> tuple[TrainState, Any]:
    """Training's resume from checkpoint `step` of `manager`: (the TrainState laid out by
    `shardings`, the data iterator state as `checkpointing.ProcessJsonHandler` restores it:
    this process's, the list of every process's when the process count changed, or None)."""
    checkpoints_dir = Path(str(manager.directory))
    params_target = checkpointing.restore_target(abstract_state.params, shardings.params)
    params = restore_params(checkpoints_dir, [step], params_target)
    optimizer_target = checkpointing.restore_target(
        {"step": abstract_state.step, "opt_state": abstract_state.opt_state},
        {"step": shardings.step, "opt_state": shardings.opt_state},
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            optimizer=ocp.args.StandardRestore(optimizer_target),
            data=checkpointing.ProcessJsonRestore(),
        ),
    )
    optimizer = restored["optimizer"]
    state = TrainState(step=optimizer["step"], params=params, opt_state=optimizer["opt_state"])
    return state, restored["data"]
