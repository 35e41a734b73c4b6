"""The train state (step, parameters, optimizer state), the optimizer and its schedules.

A "step" is one call of the train step on one batch of `config.batch_size` rows. With
`grad_accum_steps = k`, an update is applied every k steps, equal to the update of one batch
holding all k (training/accumulation.py), and the learning rate schedule counts updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh

from model import Transformer
from model.parameters import init_params
from training import partitioning
from training.accumulation import accumulate_by_tokens

SCHEDULES = ("rsqrt", "cosine", "constant")


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, so jit can shard and donate it."""

    step: jax.Array  # int32 scalar: batches trained on so far
    params: Any  # the model's parameter tree (unboxed arrays)
    opt_state: optax.OptState  # Adam moments, schedule counts, accumulated gradients


def rsqrt_schedule(d_model: int, warmup_steps: int, multiplier: float) -> optax.Schedule:
    """The paper's rate (Vaswani et al. 2017, eq. 3), for update n = count + 1 (1-based):
    multiplier * d_model^-0.5 * min(n^-0.5, n * warmup^-1.5)."""

    def schedule(count: jax.Array) -> jax.Array:
        n = jnp.asarray(count, jnp.float32) + 1.0
        return multiplier * d_model**-0.5 * jnp.minimum(n**-0.5, n * warmup_steps**-1.5)

    return schedule


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """config.schedule -> a function of the update count (0-based).

    'rsqrt': the paper's warm-up then inverse square root; learning_rate is a multiplier.
    'cosine': linear warm-up to learning_rate, then cosine decay to 0 at the last update.
    'constant': linear warm-up to learning_rate, then constant.
    """
    warmup = max(int(config.warmup_steps), 1)
    num_updates = max(int(config.num_train_steps) // int(config.grad_accum_steps), 1)
    if config.schedule == "rsqrt":
        return rsqrt_schedule(config.model.d_model, warmup, config.learning_rate)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup, decay_steps=max(num_updates, warmup + 1)
        )
    if config.schedule == "constant":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, config.learning_rate, warmup),
                optax.constant_schedule(config.learning_rate),
            ],
            [warmup],
        )
    raise ValueError(f"Unknown schedule {config.schedule!r}; choose one of {SCHEDULES}.")


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Adam(b1, b2, eps) on `schedule`, optionally with decoupled weight decay on matrices,
    global-norm clipping before it, and token-weighted gradient accumulation around it.

    Its `update` takes the batch's token count as the extra argument `tokens`."""
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0:
        parts.append(
            optax.adamw(
                schedule,
                b1=config.adam_b1,
                b2=config.adam_b2,
                eps=config.adam_eps,
                weight_decay=config.weight_decay,
                mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
            )
        )
    else:
        parts.append(
            optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
        )
    optimizer = optax.chain(*parts)  # ignores the `tokens` argument
    if config.grad_accum_steps > 1:
        optimizer = accumulate_by_tokens(optimizer, config.grad_accum_steps)
    return optimizer


def _init_fn(
    model: Transformer, optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
    """rng -> a fresh TrainState whose parameters and moments are flax `LogicallyPartitioned`
    boxes (so that their logical axis names can be read from `jax.eval_shape`)."""

    def init(rng: jax.Array) -> TrainState:
        params = init_params(model, rng)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    return init


def state_shardings(
    model: Transformer, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings for every leaf of the TrainState, from the model's logical axis names
    (optimizer moments follow their parameters; counters are replicated)."""
    abstract = jax.eval_shape(_init_fn(model, optimizer), jax.random.key(0))
    return partitioning.shardings_for(abstract, mesh)


def abstract_train_state(model: Transformer, optimizer: optax.GradientTransformation) -> TrainState:
    """The TrainState's shapes and dtypes (jax.ShapeDtypeStruct leaves), allocating nothing."""
    init = _init_fn(model, optimizer)
    return jax.eval_shape(lambda key: nn.unbox(init(key)), jax.random.key(0))


def create_train_state(
    model: Transformer, optimizer: optax.GradientTransformation, mesh: Mesh, rng: jax.Array
) -> tuple[TrainState, TrainState]:
    """A freshly initialised TrainState created directly in its sharded layout (no device ever
    holds the whole model unless the mesh says so), and its shardings."""
    shardings = state_shardings(model, optimizer, mesh)
    init = _init_fn(model, optimizer)
    create = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=shardings)
    return create(rng), shardings


def parameter_count(params: Any) -> int:
    """Total number of parameter values."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
