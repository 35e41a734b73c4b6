"""The model calls every search makes: encode the source once, then run the decoder one
cached step at a time; and how a search reads a step's logits for its best tokens (chunk
maxima, PAD never chosen). The special token ids the searches rely on: data/special_tokens.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from data.special_tokens import EOS_ID, PAD_ID
from model import Cache, Transformer

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "VOCABULARY_CHUNK",
    "check_decode_length",
    "most_probable_tokens",
    "read_chunks",
    "start",
    "step",
    "vocabulary_chunks",
]

Array = jax.Array

# Columns per chunk when a search looks for the best tokens of a vocabulary row: it reads every
# logit once for the chunk maxima, then only the few chunks that can hold the winners.
VOCABULARY_CHUNK = 64


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
    """logits [rows, vocab] -> the most probable non-padding token of each row [rows] int32:
    jnp.argmax of the logits with PAD excluded (the argmax of the log-softmax too), ties to the
    lower token. Found through the chunk maxima (`vocabulary_chunks`): XLA:CPU's argmax over a
    whole row is an unvectorised loop, many times slower than a max."""
    chunks, maxima = vocabulary_chunks(logits)
    best_chunk = jnp.argmax(maxima, axis=-1)[:, None]  # [rows, 1]: the first holding the max
    candidates, tokens = read_chunks(chunks, best_chunk, maxima.shape[1])  # [rows, 1, chunk]
    best = jnp.argmax(candidates[:, 0], axis=-1)[:, None]  # the first column holding it
    return jnp.take_along_axis(tokens[:, 0], best, axis=-1)[:, 0].astype(jnp.int32)


def vocabulary_chunks(logits: Array, chunk: int = VOCABULARY_CHUNK) -> tuple[Array, Array]:
    """logits [rows, vocab] -> (chunks [rows, num_chunks, chunk]: the logits cut into chunks of
    `chunk` columns, the last one padded with -inf; maxima [rows, num_chunks]: the maximum of
    each chunk over its non-padding tokens).

    PAD_ID is never an output, so a zero in an output sequence always means "after EOS" (or
    "after the length limit"). It is left out of the maxima by fixing its own chunk only, so
    the logits are read once and never rewritten; `read_chunks` leaves it out of what it reads."""
    rows, vocab = logits.shape
    num_chunks = -(-vocab // chunk)
    if num_chunks * chunk > vocab:
        padding = ((0, 0), (0, num_chunks * chunk - vocab))
        logits = jnp.pad(logits, padding, constant_values=-jnp.inf)
    chunks = logits.reshape(rows, num_chunks, chunk)
    pad_chunk, pad_column = divmod(PAD_ID, chunk)
    without_pad = jnp.where(jnp.arange(chunk) == pad_column, -jnp.inf, chunks[:, pad_chunk])
    return chunks, chunks.max(axis=-1).at[:, pad_chunk].set(without_pad.max(axis=-1))


def read_chunks(chunks: Array, picked: Array, num_chunks: int) -> tuple[Array, Array]:
    """The chunks `picked` [groups, m] of chunks [groups, n * num_chunks, chunk] (a group: one
    or more vocabulary rows' chunks, row after row) -> (their logits with PAD at -inf, their
    token ids), each [groups, m, chunk]."""
    chunk = chunks.shape[-1]
    candidates = jnp.take_along_axis(chunks, picked[..., None], axis=1)
    tokens = (picked % num_chunks)[..., None] * chunk + jnp.arange(chunk)
    return jnp.where(tokens == PAD_ID, -jnp.inf, candidates), tokens
