"""Greedy decoding: at every step, emit the most probable next token.

The decoder runs one position at a time over its key/value cache (`cached_model.step`), inside
a `jax.lax.while_loop` that ends as soon as every row has emitted EOS or reached its length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decoding import cached_model
from decoding.cached_model import EOS_ID, PAD_ID
from model import Transformer

Array = jax.Array


def greedy_search(
    model: Transformer,
    params,
    inputs: Array,
    max_decode_length: int,
    max_lengths: Array | None = None,
) -> Array:
    """inputs [batch, source_length] int32 -> tokens [batch, max_decode_length] int32.

    Each row holds its output tokens, EOS included, then zeros. A row that reaches its length
    (max_lengths[row] if given, else max_decode_length) without EOS simply ends there.
    Pure and jit-friendly: `max_decode_length` must be static.
    """
    cached_model.check_decode_length(model, max_decode_length)
    batch = inputs.shape[0]
    if max_lengths is None:
        max_lengths = jnp.full((batch,), max_decode_length, jnp.int32)
    cache = cached_model.start(model, params, inputs, 1, max_decode_length)

    # Loop state: (position being written, outputs so far, finished rows, last tokens, cache).
    initial = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((batch, max_decode_length), jnp.int32),  # [batch, max_decode_length]
        max_lengths <= 0,  # [batch]
        jnp.full((batch,), PAD_ID, jnp.int32),  # [batch]: the begin token
        cache,
    )

    def not_done(state) -> Array:
        position, _, finished, _, _ = state
        return (position < max_decode_length) & ~jnp.all(finished)

    def emit_next_token(state):
        position, tokens, finished, last_tokens, cache = state
        logits, cache = cached_model.step(model, params, inputs, cache, last_tokens)
        next_tokens = cached_model.most_probable_tokens(logits)  # [batch]
        next_tokens = jnp.where(finished, PAD_ID, next_tokens)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_tokens[:, None], position, 1)
        finished = finished | (next_tokens == EOS_ID) | (position + 1 >= max_lengths)
        return position + 1, tokens, finished, next_tokens, cache

    _, tokens, _, _, _ = jax.lax.while_loop(not_done, emit_next_token, initial)
    return tokens
