"""Checkpoint averaging: the mean of the parameters of the last N checkpoints of a run.

The paper decodes with the average of the last 5 checkpoints (base) or 20 (big), written every
10 minutes: a cheap ensemble that smooths the noise of the last updates. The mean is a running
mean in float32 (one tree of parameters in memory besides the one being read, whatever N), cast
back to the parameters' own dtype at the end. Averaging copies of one checkpoint gives that
checkpoint back exactly.

`save_average` writes the result as a checkpoint that `translate.py --checkpoint=` and
`training.restoring.restore_for_translation` read: DIR/checkpoints/<step>/ with the items
params, config and tokenizer (no optimizer state: it is for decoding, not for resuming), and
DIR/average.json saying which checkpoints were averaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from training import checkpointing

AVERAGE_INFO_FILE = "average.json"


@jax.jit
def _running_mean_update(mean: Any, params: Any, count: jax.Array) -> Any:
    """mean_k = mean_{k-1} + (x_k - mean_{k-1}) / k, leaf by leaf, in float32."""
    return jax.tree.map(lambda m, x: m + (x.astype(jnp.float32) - m) / count, mean, params)


def average_params(trees: Iterable[Any]) -> Any:
    """The element-wise mean of parameter trees of one structure (shardings kept).

    `trees` may be a generator that restores one checkpoint at a time: only the running mean
    and the current tree are alive at once."""
    mean, dtypes = None, None
    for count, params in enumerate(trees, start=1):
        if mean is None:
            dtypes = jax.tree.map(lambda x: x.dtype, params)
            mean = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
        else:
            mean = _running_mean_update(mean, params, jnp.float32(count))
    if mean is None:
        raise ValueError("No parameters to average: give at least one checkpoint.")
    return jax.tree.map(lambda m, dtype: m.astype(dtype), mean, dtypes)


def save_average(
    directory: str | Path,
    step: int,
    params: Any,
    config: ml_collections.ConfigDict,
    tokenizer_bytes: bytes,
    averaged_steps: list[int],
    source: str | Path,
) -> Path:
    """Writes `params` as checkpoint `step` of DIR=`directory` and returns the checkpoint's
    folder DIR/checkpoints/<step>. Refuses a DIR that already holds checkpoints."""
    directory = Path(directory).absolute()
    checkpoints = directory / checkpointing.CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise FileExistsError(
            f"{checkpoints} already holds checkpoints: give --save_average an empty or new "
            "directory."
        )
    manager = ocp.CheckpointManager(
        epath.Path(checkpoints),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_names=("params", "config", "tokenizer"),
    )
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            config=ocp.args.JsonSave(checkpointing.config_to_json(config)),
            tokenizer=checkpointing.FileBytesSave(tokenizer_bytes),
        ),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
    info = {"source": str(source), "averaged_steps": list(averaged_steps)}
    (directory / AVERAGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return checkpoints / str(step)
