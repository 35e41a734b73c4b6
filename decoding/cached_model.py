"""The model calls every search makes: encode the source once, then run the decoder one
cached step at a time. The special token ids the searches rely on: data/special_tokens.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from data.special_tokens import EOS_ID, PAD_ID
from model import Cache, Transformer

__all__ = ["EOS_ID", "PAD_ID", "check_decode_length", "next_token_log_probs", "start", "step"]

Array = jax.Array


def check_decode_length(model: Transformer, max_decode_length: int) -> None:
    """Positions past the model's maximum have no embedding (NaN): refuse them early."""
    if not 1 <= max_decode_length <= model.config.max_length:
        raise ValueError(
            f"max_decode_length={max_decode_length} must be between 1 and the model's "
            f"max_length={model.config.max_length}; lower the output length."
        )


def start(
    model: Transformer, params, inputs: Array, rows_per_sentence: int, max_decode_length: int
) -> Cache:
    """Encodes `inputs` [batch, source_length] and returns an empty decoding cache for
    batch × rows_per_sentence decoder rows (the encoder's keys/values are stored once per
    sentence, the self-attention cache once per row)."""
    variables = {"params": nn.unbox(params)}
    encoded = model.apply(variables, inputs, method="encode")
    num_rows = inputs.shape[0] * rows_per_sentence
    return model.apply(variables, encoded, max_decode_length, num_rows, method="init_cache")


def step(
    model: Transformer, params, inputs: Array, cache: Cache, tokens: Array
) -> tuple[Array, Cache]:
    """One decoder step for every row: tokens [rows] (the previous outputs, PAD_ID at the
    start) -> (log-probabilities [rows, vocab] float32, updated cache).

    PAD_ID gets log-probability -inf: padding is never an output, so a zero in an output
    sequence always means "after EOS" (or "after the length limit").
    """
    logits, cache = model.apply(
        {"params": nn.unbox(params)},
        tokens[:, None],
        inputs,
        cache,
        method="decode_step",
    )
    return next_token_log_probs(logits), cache


def next_token_log_probs(logits: Array) -> Array:
    """logits [rows, vocab] -> log-probabilities, with PAD_ID impossible (-inf)."""
    return jax.nn.log_softmax(logits, axis=-1).at[:, PAD_ID].set(-jnp.inf)
