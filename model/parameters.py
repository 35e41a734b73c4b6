"""The model's parameters: initialising them, and their shapes without computing anything.

`init_params` is the one place that calls `Transformer.init`. Training creates its state with
it; `abstract_params` traces it (`jax.eval_shape`, nothing allocated) to give every
parameter's shape, dtype and logical axis names, which checkpoint restoring, sharding and the
parameter table read.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from model.transformer import Transformer

# The dummy batch [1, SAMPLE_LENGTH] the initialisation runs on; parameter shapes do not
# depend on it (positions are tables of max_length rows).
SAMPLE_LENGTH = 8


def init_params(model: Transformer, rng: jax.Array) -> Any:
    """Freshly initialised parameters, as flax `LogicallyPartitioned` boxes (each leaf knows
    its logical axis names; `flax.linen.unbox` gives the plain arrays)."""
    tokens = jnp.ones((1, SAMPLE_LENGTH), jnp.int32)
    return model.init(rng, tokens, tokens)["params"]


def abstract_params(model: Transformer) -> Any:
    """`init_params`' result as boxed `jax.ShapeDtypeStruct`s: shapes, dtypes and logical axis
    names of every parameter, computing and allocating nothing."""
    return jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
