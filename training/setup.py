"""What a training run is built from, shared by training, the benchmark and the tests: the
device mesh, the model, the optimizer and its schedule, the state's shardings and the jitted
train step, all derived from one (resolved) config."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from model import Transformer, TransformerConfig
from training import configuration, partitioning
from training import state as train_state
from training.errors import ConfigError
from training.steps import TrainStep, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """Everything about a run that does not change while it trains."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model_config: TransformerConfig
    model: Transformer
    schedule: optax.Schedule  # update count (0-based) -> learning rate
    optimizer: optax.GradientTransformation
    shardings: train_state.TrainState  # a NamedSharding per leaf of the state
    train_step: TrainStep

    def fresh_state(self) -> train_state.TrainState:
        """A new state from config.seed, created directly in its sharded layout."""
        init_key = jax.random.fold_in(jax.random.key(self.config.seed), 0)
        state, _ = train_state.create_train_state(self.model, self.optimizer, self.mesh, init_key)
        return state

    def learning_rate(self, step: int) -> float:
        """The rate used by train step `step` (1-based; the schedule counts updates)."""
        return float(self.schedule((step - 1) // self.config.grad_accum_steps))


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Both batch sizes split evenly over the mesh's batch shards and the processes."""
    ways = partitioning.batch_axis_size(mesh)
    for name in ("batch_size", "eval_batch_size"):
        rows = config[name]
        if rows % ways or rows % jax.process_count():
            raise ConfigError(
                f"{name}={rows} must be divisible by the {ways} batch shards of the mesh "
                f"{dict(mesh.shape)} and by the {jax.process_count()} processes; pick a "
                "multiple, or set --config.mesh_shape."
            )


def build(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> TrainingSetup:
    """The set-up of `config` (its vocabulary size already the tokenizer's) over `devices`
    (default: every device of every host)."""
    mesh = partitioning.make_mesh(config.mesh_shape, devices)
    check_batch_sizes(config, mesh)
    model_config = configuration.model_config(config)
    model = Transformer(model_config)
    schedule = train_state.learning_rate_schedule(config)
    optimizer = train_state.make_optimizer(config, schedule)
    shardings = train_state.state_shardings(model, optimizer, mesh)
    train_step = make_train_step(
        model,
        optimizer,
        mesh,
        shardings,
        label_smoothing=config.label_smoothing,
        dropout_seed=config.seed + 1,
    )
    return TrainingSetup(
        config=config,
        mesh=mesh,
        model_config=model_config,
        model=model,
        schedule=schedule,
        optimizer=optimizer,
        shardings=shardings,
        train_step=train_step,
    )
