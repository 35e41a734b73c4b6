"""Gradient accumulation equal to one big batch.

With `every = k`, k micro-batches make one update, and that update is the one a single batch
holding all k of them would make: the gradient of the token-summed loss divided by the number
of non-padding target tokens of the whole accumulated batch. (optax.MultiSteps averages the
micro-batches' mean-loss gradients instead, which weights a micro-batch of few tokens as much
as a full one.)

The accumulated sum lives in the optimizer state, so it is checkpointed with it and a resumed
run continues mid-accumulation exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AccumulationState(NamedTuple):
    micro_steps: jax.Array  # int32: micro-batches accumulated since the last update
    gradient_sum: Any  # like the params: sum of d(token loss sum)/d(params) over them
    tokens: jax.Array  # float32: their non-padding target tokens
    inner: optax.OptState  # the wrapped optimizer's state


def accumulate_by_tokens(
    inner: optax.GradientTransformation, every: int
) -> optax.GradientTransformationExtraArgs:
    """`inner` applied once every `every` micro-batches to their token-weighted mean gradient.

    `update(grads, state, params, tokens=t)` takes a micro-batch's *mean* loss gradient and its
    token count t (so grads * t is its token-sum gradient). Between updates it returns zero
    updates and leaves `inner`'s state (and so its schedule count) alone.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}.")

    def empty(gradient_like: Any, inner_state: optax.OptState) -> AccumulationState:
        return AccumulationState(
            micro_steps=jnp.zeros((), jnp.int32),
            gradient_sum=jax.tree.map(jnp.zeros_like, gradient_like),
            tokens=jnp.zeros((), jnp.float32),
            inner=inner_state,
        )

    def init(params: Any) -> AccumulationState:
        return empty(params, inner.init(params))

    def update(
        grads: Any, state: AccumulationState, params: Any = None, *, tokens: jax.Array, **extra
    ) -> tuple[Any, AccumulationState]:
        tokens = jnp.asarray(tokens, jnp.float32)
        gradient_sum = jax.tree.map(lambda s, g: s + g * tokens, state.gradient_sum, grads)
        total = state.tokens + tokens

        def apply(_: None) -> tuple[Any, AccumulationState]:
            mean = jax.tree.map(lambda s: s / jnp.maximum(total, 1.0), gradient_sum)
            updates, inner_state = optax.with_extra_args_support(inner).update(
                mean, state.inner, params, **extra
            )
            return updates, empty(gradient_sum, inner_state)

        def hold(_: None) -> tuple[Any, AccumulationState]:
            updates = jax.tree.map(jnp.zeros_like, grads)
            held = AccumulationState(state.micro_steps + 1, gradient_sum, total, state.inner)
            return updates, held

        return jax.lax.cond(state.micro_steps + 1 >= every, apply, hold, None)

    return optax.GradientTransformationExtraArgs(init, update)
