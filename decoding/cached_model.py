"""The model calls every search makes: encode the source once, then run the decoder one
cached step at a time. The special token ids the searches rely on: data/special_tokens.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from data.special_tokens import EOS_ID, PAD_ID
from model import Cache, Transformer

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "check_decode_length",
    "start",
    "step",
    "without_padding",
]

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
    start) -> (logits [rows, vocab] float32, updated cache)."""
    return model.apply(
        {"params": nn.unbox(params)},
        tokens[:, None],
        inputs,
        cache,
        method="decode_step",
    )


def most_probable_tokens(logits: Array) -> Array:
    """logits [rows, vocab] -> the most probable non-padding token of each row [rows] int32
    (the argmax of the log-softmax, without computing it)."""
    return jnp.argmax(without_padding(logits), axis=-1).astype(jnp.int32)


def without_padding(scores: Array) -> Array:
    """scores [rows, vocab] with PAD_ID's column at -inf. Padding is never an output, so a
    zero in an output sequence always means "after EOS" (or "after the length limit"). An
    elementwise select rather than a scatter, so that XLA fuses it into whatever reads it."""
    return jnp.where(jnp.arange(scores.shape[-1]) == PAD_ID, -jnp.inf, scores)
