"""Greedy decoding: at every step, emit the most probable next token.

The decoder runs one position at a time over its key/value cache (`cached_model.step`), inside
a while loop that ends as soon as every row has emitted EOS or reached its length; finished rows
leave the batch as it goes (decoding/stages.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decoding import cached_model, stages
from decoding.cached_model import EOS_ID, PAD_ID
from model import Transformer

Array = jax.Array


def greedy_search(
    model: Transformer,
    params,
    inputs: Array,
    max_decode_length: int,
    max_lengths: Array | None = None,
    max_stages: int = stages.MAX_STAGES,
) -> Array:
    """inputs [batch, source_length] int32 -> tokens [batch, max_decode_length] int32.

    Each row holds its output tokens, EOS included, then zeros. A row that reaches its length
    (max_lengths[row] if given, else max_decode_length) without EOS simply ends there.
    Finished rows leave the batch in at most `max_stages` stages (decoding/stages.py). Pure and
    jit-friendly: `max_decode_length` and `max_stages` must be static.
    """
    cached_model.check_decode_length(model, max_decode_length)
    batch = inputs.shape[0]
    if max_lengths is None:
        max_lengths = jnp.full((batch,), max_decode_length, jnp.int32)
    cache = cached_model.start(model, params, inputs, 1, max_decode_length)

    # Loop state: (position being written, outputs so far, finished rows, last tokens, inputs,
    # length limits, cache); finished rows leave the batch as it goes (decoding/stages.py).
    initial = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((batch, max_decode_length), jnp.int32),  # [batch, max_decode_length]
        max_lengths <= 0,  # [batch]
        jnp.full((batch,), PAD_ID, jnp.int32),  # [batch]: the begin token
        inputs,  # [batch, source_length]
        max_lengths,  # [batch]
        cache,
    )

    def rows_done(state) -> Array:
        position, _, finished, *_ = state
        return finished | (position >= max_decode_length)

    def emit_next_token(state):
        position, tokens, finished, last_tokens, inputs, max_lengths, cache = state
        logits, cache = cached_model.step(model, params, inputs, cache, last_tokens)
        next_tokens = cached_model.most_probable_tokens(logits)  # [batch]
        next_tokens = jnp.where(finished, PAD_ID, next_tokens)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_tokens[:, None], position, 1)
        finished = finished | (next_tokens == EOS_ID) | (position + 1 >= max_lengths)
        return position + 1, tokens, finished, next_tokens, inputs, max_lengths, cache

    _, tokens, *_ = stages.shrinking_while_loop(rows_done, emit_next_token, initial, max_stages)
    return tokens
