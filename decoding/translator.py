"""The public entry points of decoding: token ids -> token ids (jitted, greedy or beam), texts
-> texts (tokenize, bucket, batch, decode, detokenize) with `DecodeSettings`, and the
encoder-decoder attention of one sentence. Used by training's BLEU evaluation, translate.py,
the server and the export's checks."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from data.special_tokens import cut_at_eos, truncate_keeping_eos
from decoding import stages
from decoding.beam_search import beam_search
from decoding.greedy import greedy_search
from decoding.settings import DecodeSettings
from model import Transformer

Array = jax.Array

SMALLEST_BUCKET = 8  # source lengths are padded to 8, 16, 32, ... (capped at the maximum)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, EOS appended."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, stopping at EOS."""


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "beam_size",
        "max_decode_length",
        "early_stopping",
        "max_stages",
        "rows_of",
    ),
)
def _translate_tokens(
    model: Transformer,
    params,
    inputs: Array,
    max_lengths: Array,
    alpha: Array,
    *,
    beam_size: int,
    max_decode_length: int,
    early_stopping: bool,
    max_stages: int,
    rows_of: tuple[Mesh, Any] | None = None,
) -> Array:
    """rows_of (mesh, the mesh axes that split the rows): every device of the mesh decodes its
    own rows alone, with all the parameters (shard_map); it drops its finished sentences from
    its own stages, and no data moves between devices."""
    if rows_of is not None:
        mesh, row_axes = rows_of
        decode_rows = functools.partial(
            _translate_tokens,
            model,
            beam_size=beam_size,
            max_decode_length=max_decode_length,
            early_stopping=early_stopping,
            max_stages=max_stages,
        )
        rows = PartitionSpec(row_axes)
        return jax.shard_map(
            decode_rows,
            mesh=mesh,
            in_specs=(PartitionSpec(), rows, rows, PartitionSpec()),
            out_specs=rows,
            check_vma=False,  # no collectives inside; the search's fresh arrays are per device
        )(params, inputs, max_lengths, alpha)
    if beam_size == 1:
        return greedy_search(model, params, inputs, max_decode_length, max_lengths, max_stages)
    result = beam_search(
        model,
        params,
        inputs,
        beam_size=beam_size,
        alpha=alpha,
        max_decode_length=max_decode_length,
        max_lengths=max_lengths,
        num_hypotheses=1,  # the search stops once no hypothesis can beat a sentence's best
        early_stopping=early_stopping,
        max_stages=max_stages,
    )
    return result.sequences[:, 0, :]


def translate_tokens(
    model: Transformer,
    params,
    inputs: Array | np.ndarray,
    *,
    beam_size: int,
    alpha: float,
    max_decode_length: int,
    max_lengths: Array | np.ndarray | None = None,
    early_stopping: bool = False,
) -> Array:
    """inputs [batch, source_length] int32 (0 = padding) -> the best output of each sentence,
    [batch, max_decode_length] int32 with EOS kept and zeros after it.

    beam_size 1 is greedy search (alpha unused); more is beam search with the GNMT length
    penalty alpha; early_stopping ends a sentence's beam search before the exact rule does
    (see decoding/beam_search.py). max_lengths [batch] optionally caps each row's output
    length. Compiled once per (model, beam_size, max_decode_length, early_stopping, input
    shape); params may be sharded over a mesh. Inputs whose rows are split over devices that
    each hold all of params are decoded by each device alone.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (the length penalty's exponent), got {alpha}.")
    inputs = jnp.asarray(inputs, jnp.int32)
    if max_lengths is None:
        max_lengths = np.full((inputs.shape[0],), max_decode_length, np.int32)
    max_stages, rows_of = stages.MAX_STAGES, None
    if _split_over_devices(inputs):
        if _held_whole_by_each(params, inputs.sharding):
            rows_of = (inputs.sharding.mesh, inputs.sharding.spec[0])
        else:
            max_stages = 1
    return _translate_tokens(
        model,
        params,
        inputs,
        jnp.asarray(max_lengths, jnp.int32),
        jnp.float32(alpha),
        beam_size=beam_size,
        max_decode_length=max_decode_length,
        early_stopping=early_stopping,
        max_stages=max_stages,
        rows_of=rows_of,
    )


def _split_over_devices(inputs: Array) -> bool:
    """Whether the batch's rows are spread over several devices."""
    sharding = inputs.sharding
    return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def _held_whole_by_each(params, rows: Sharding) -> bool:
    """Whether every device of `rows` (a NamedSharding that splits only the rows) holds all
    of `params`. Then each device decodes its rows alone, finished sentences dropped as on one
    device. Otherwise (parameters split over the devices too) the batch is decoded in one plain
    loop: dropping sentences would gather them from every device onto every device."""
    if not isinstance(rows, NamedSharding) or any(axis is not None for axis in rows.spec[1:]):
        return False
    return all(
        isinstance(leaf, jax.Array)
        and leaf.sharding.is_fully_replicated
        and leaf.sharding.device_set == rows.device_set
        for leaf in jax.tree.leaves(params)
    )


def default_compiled_decoders_dir() -> str:
    """Where translate.py and serve.py keep compiled decoders unless told otherwise:
    $XDG_CACHE_HOME/flax-transformer-mt/compiled-decoders ($XDG_CACHE_HOME: ~/.cache if unset)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "flax-transformer-mt", "compiled-decoders")


def keep_compiled_decoders(directory: str | None) -> None:
    """Turns on JAX's persistent compilation cache: a later process decoding with the same
    model, settings and shapes loads the compiled programs instead of compiling them again (one
    per source-length bucket, seconds each on a CPU). `directory` None means the default
    (`default_compiled_decoders_dir`), "" no cache.

    A given folder that cannot be created raises OSError; the default one only logs a warning
    (decoding then compiles every time)."""
    path = default_compiled_decoders_dir() if directory is None else directory
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        if directory is not None:
            raise
        logging.warning("Compiling without a cache: cannot create %s (%s).", path, error.strerror)
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_input_length: int
) -> tuple[list[list[int]], int]:
    """Token ids of every text (blank text -> []), each at most `max_input_length` long (a
    longer one keeps its first tokens and its final EOS). Returns (ids, number truncated)."""
    all_ids, num_truncated = [], 0
    for text in texts:
        ids = tokenizer.encode(text) if text.strip() else []
        if len(ids) > max_input_length:
            ids = truncate_keeping_eos(ids, max_input_length)
            num_truncated += 1
        all_ids.append(ids)
    return all_ids, num_truncated


def bucket_length(length: int, max_length: int) -> int:
    """The padded source length: the next power of two >= length (at least SMALLEST_BUCKET),
    capped at max_length. Few distinct lengths -> few compilations."""
    bucket = SMALLEST_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, max_length)


def output_ids(row: np.ndarray) -> list[int]:
    """An output row [max_decode_length] -> its tokens before EOS (padding dropped)."""
    return cut_at_eos(row.tolist())


def translate_texts(
    model: Transformer,
    params,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    settings: DecodeSettings,
    max_input_length: int,
    rows: Sharding | None = None,
) -> list[str]:
    """Translates `texts` in order with `settings` (strategy, beam, alpha, extra length,
    batch size); a blank text gives "".

    With `rows` (a sharding of [batch_size, ...] arrays, e.g. rows split over a mesh's data
    axes and hosts), every device decodes only its rows of each batch; every host must call
    this with the same texts, and every host gets all translations.

    Inputs longer than max_input_length tokens are truncated (a warning says how many). Each
    output is at most min(input length + settings.max_extra_length, model max_length) tokens.
    Sentences are sorted by length and batched; batches are padded to settings.batch_size rows
    and to a power-of-two source length, so decoding compiles once per length bucket.
    """
    model_max = model.config.max_length
    if not 2 <= max_input_length <= model_max:
        raise ValueError(
            f"max_input_length={max_input_length} must be between 2 and the model's "
            f"max_length={model_max}."
        )
    batch_size, max_extra_length = settings.batch_size, settings.max_extra_length
    all_ids, num_truncated = encode_texts(tokenizer, texts, max_input_length)
    if num_truncated:
        logging.warning(
            "%d of %d inputs were longer than %d tokens and were truncated.",
            num_truncated,
            len(texts),
            max_input_length,
        )

    translations = [""] * len(texts)
    order = sorted((i for i, ids in enumerate(all_ids) if ids), key=lambda i: len(all_ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        source_length = bucket_length(max(len(all_ids[i]) for i in batch), max_input_length)
        inputs = np.zeros((batch_size, source_length), np.int32)  # padding rows stay empty
        max_lengths = np.zeros((batch_size,), np.int32)  # and decode nothing
        for row, i in enumerate(batch):
            inputs[row, : len(all_ids[i])] = all_ids[i]
            max_lengths[row] = min(len(all_ids[i]) + max_extra_length, model_max)
        if rows is not None:
            inputs, max_lengths = (_place(array, rows) for array in (inputs, max_lengths))
        outputs = translate_tokens(
            model,
            params,
            inputs,
            beam_size=settings.beam_size,
            alpha=settings.alpha,
            max_decode_length=min(source_length + max_extra_length, model_max),
            max_lengths=max_lengths,
            early_stopping=settings.early_stopping,
        )
        outputs = _fetch(outputs)
        for row, i in enumerate(batch):
            translations[i] = tokenizer.decode(output_ids(outputs[row]))
    return translations


def _place(array: np.ndarray, sharding: Sharding) -> Array:
    """A global array laid out by `sharding` from the same host array on every host."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _fetch(array: Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array on this host."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def cross_attention_weights(
    model: Transformer, params, input_ids: Sequence[int], output_ids: Sequence[int]
) -> np.ndarray:
    """The encoder-decoder attention of one sentence pair, teacher-forced:
    -> [decoder layers, heads, len(output_ids), len(input_ids)] float32 (rows sum to 1)."""
    inputs = jnp.asarray([list(input_ids)], jnp.int32)
    targets = jnp.asarray([list(output_ids)], jnp.int32)
    _, state = model.apply({"params": nn.unbox(params)}, inputs, targets, mutable=["intermediates"])
    decoder = state["intermediates"]["decoder"]
    per_layer = [
        decoder[f"layer_{i}"]["cross_attention"]["attention_weights"][0][0]  # [heads, tgt, src]
        for i in range(model.config.num_decoder_layers)
    ]
    return np.asarray(jnp.stack(per_layer), np.float32)
