"""Slow, obviously correct decoding for tests and benchmarks: no cache, the whole
teacher-forced decoder re-run for every output position."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from decoding.cached_model import EOS_ID, PAD_ID
from model import Transformer

Array = jax.Array


def uncached_greedy_search(
    model: Transformer, params, inputs: Array, max_decode_length: int
) -> Array:
    """Greedy decoding like `greedy_search`, but step i runs the full decoder over all
    max_decode_length positions and reads the logits at position i.
    inputs [batch, source_length] -> tokens [batch, max_decode_length]."""
    variables = {"params": nn.unbox(params)}
    batch = inputs.shape[0]
    encoded = model.apply(variables, inputs, method="encode")
    positions = jnp.arange(max_decode_length)

    def not_done(state) -> Array:
        position, _, finished = state
        return (position < max_decode_length) & ~jnp.all(finished)

    def emit_next_token(state):
        position, tokens, finished = state
        # Position i must be a real (non-zero) target for its query to be valid; what stands
        # there is never seen by position i itself (the decoder is causal).
        targets = jnp.where(positions < position, tokens, EOS_ID)
        logits = model.apply(variables, encoded, inputs, targets, method="decode")
        logits = logits[:, position, :].at[:, PAD_ID].set(-jnp.inf)  # [batch, vocab]
        next_tokens = jnp.where(finished, PAD_ID, jnp.argmax(logits, -1).astype(jnp.int32))
        tokens = tokens.at[:, position].set(next_tokens)
        return position + 1, tokens, finished | (next_tokens == EOS_ID)

    initial = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((batch, max_decode_length), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    return jax.lax.while_loop(not_done, emit_next_token, initial)[1]
