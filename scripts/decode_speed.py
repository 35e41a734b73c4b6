"""Decoding speed: cached vs uncached greedy search, and ways for beam search to keep each
hypothesis's decoder history.

    python scripts/decode_speed.py --config=configs/default.py [--batch_size=64]
    python scripts/decode_speed.py --config=configs/base.py --batch_size=4 --repeats=3

A randomly initialised model of the config's size decodes random source sentences, with EOS
made impossible so that every search runs exactly --output_length steps. Every variant is
compiled and run once to warm up; then they are timed round-robin --repeats times (so that load
from other processes falls on all alike) and the median is printed with the range. Output
tokens/s counts batch × output_length tokens (the best hypothesis only, for beam search).

Greedy: the KV cache (`greedy_search`) against re-running the whole teacher-forced decoder at
every step (`uncached_greedy_search`); the issue asks for >= 5x at output length 64.

Beam search: after a step, new hypothesis k continues some old hypothesis; its decoder cache
history must follow. Variants:
  self_take        (the library's, `reorder_self_attention`) one jnp.take of the self-attention
                   rows; the encoder keys/values are stored once per sentence, never moved
  self_along_axis  the same gather as take_along_axis on a [batch, beams, ...] view
  self_one_hot     the same as a one-hot [beams x beams] matrix product
  self_if_moved    the gather, skipped (lax.cond) at steps where no hypothesis changed parent
  full_gather      encoder keys/values copied per beam and every cache array gathered at every
                   step (the Flax WMT example's way)
  ancestry_mask    nothing moves: each hypothesis records which row holds each position of its
                   history and attends to all rows of its sentence through a mask (its decoder
                   step is re-implemented below from the model's sub-modules)
  no_reorder       no reordering at all: wrong outputs, the lower bound on time
"""

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from decoding import cached_model  # noqa: E402
from decoding.beam_search import reorder_self_attention, search  # noqa: E402
from decoding.cached_model import EOS_ID  # noqa: E402
from decoding.greedy import greedy_search  # noqa: E402
from decoding.reference import uncached_greedy_search  # noqa: E402
from model import Transformer, TransformerConfig  # noqa: E402

BEAM_VARIANTS = [
    "self_take",
    "self_along_axis",
    "self_one_hot",
    "self_if_moved",
    "full_gather",
    "ancestry_mask",
    "no_reorder",
]

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Config whose model size is timed (config.model)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sentences decoded at once.")
_SOURCE_LENGTH = flags.DEFINE_integer("source_length", 32, "Tokens per source sentence.")
_OUTPUT_LENGTH = flags.DEFINE_integer("output_length", 64, "Output tokens per sentence.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 4, "Beam size of the beam search variants.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per variant (the median is printed).")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["greedy_cached", "greedy_uncached", *BEAM_VARIANTS],
    "Variants to time (see the module docstring).",
)


class NeverEnds(Transformer):
    """The same network with EOS impossible, so every search runs to the full length."""

    def decode_step(self, token, inputs, cache):
        logits, cache = super().decode_step(token, inputs, cache)
        return logits.at[:, EOS_ID].set(-jnp.inf), cache

    def decode(self, *args, **kwargs):
        return super().decode(*args, **kwargs).at[..., EOS_ID].set(-jnp.inf)


# ------------------------------------------------------------------ gathering cache rows


def rows_of(parents: jax.Array) -> jax.Array:
    """parents [batch, beams] -> flat cache rows [batch * beams]."""
    batch, beams = parents.shape
    return (parents + beams * jnp.arange(batch)[:, None]).reshape(-1)


def reorder_self_with(gather: Callable[[jax.Array, jax.Array], jax.Array]):
    """A reorder_fn applying `gather(x, parents)` to the self-attention keys and values."""

    def reorder(cache, parents):
        layers = [
            {
                **layer,
                "self_key": gather(layer["self_key"], parents),
                "self_value": gather(layer["self_value"], parents),
            }
            for layer in cache["layers"]
        ]
        return {**cache, "layers": layers}

    return reorder


def along_axis(x, parents):
    batch, beams = parents.shape
    view = x.reshape(batch, beams, *x.shape[1:])
    index = parents.reshape(batch, beams, *([1] * (x.ndim - 1)))
    return jnp.take_along_axis(view, index, axis=1).reshape(x.shape)


def one_hot(x, parents):
    batch, beams = parents.shape
    view = x.reshape(batch, beams, -1)
    select = jax.nn.one_hot(parents, beams, dtype=x.dtype)  # [batch, new beam, old beam]
    return jnp.einsum("bko,bod->bkd", select, view).reshape(x.shape)


def reorder_if_moved(cache, parents):
    unchanged = jnp.all(parents == jnp.arange(parents.shape[1]))
    return jax.lax.cond(unchanged, lambda c: c, lambda c: reorder_self_attention(c, parents), cache)


def reorder_everything(cache, parents):
    """Every array with batch * beams rows, the per-beam encoder keys/values included."""
    rows = rows_of(parents)
    layers = [
        {name: jnp.take(x, rows, axis=0, mode="clip") for name, x in layer.items()}
        for layer in cache["layers"]
    ]
    return {**cache, "layers": layers}


REORDER = {
    "self_take": reorder_self_attention,
    "self_along_axis": reorder_self_with(along_axis),
    "self_one_hot": reorder_self_with(one_hot),
    "self_if_moved": reorder_if_moved,
    "full_gather": reorder_everything,
    "no_reorder": lambda cache, parents: cache,
}


def gather_beam_search(model, name: str, beam_size: int, length: int):
    """A jitted beam search (params, inputs) -> best sequences, using reorder variant `name`."""

    def run(params, inputs):
        per_beam_source = name == "full_gather"
        source = jnp.repeat(inputs, beam_size, axis=0) if per_beam_source else inputs
        rows_per_source = 1 if per_beam_source else beam_size
        cache = cached_model.start(model, params, source, rows_per_source, length)
        result = search(
            lambda tokens, cache: cached_model.step(model, params, source, cache, tokens),
            REORDER[name],
            cache,
            batch_size=inputs.shape[0],
            beam_size=beam_size,
            alpha=0.6,
            max_decode_length=length,
        )
        return result.sequences[:, 0]

    return jax.jit(run)


# ------------------------------------------------------------------ never moving the cache
# Row (slot) k of a sentence is written only by the hypothesis in slot k at that step.
# `ancestors` [batch, beams, max_len] says which slot holds each position of each hypothesis's
# history; the beams of a sentence attend to all its slots ([batch, beams * max_len] keys)
# through a mask that keeps exactly their own history.


def ancestry_decoder_step(module: Transformer, token, inputs, cache, self_mask):
    """Transformer.decode_step with self-attention over every slot of the sentence.
    self_mask [batch, 1, beams, beams * max_len]."""
    decoder, index = module.decoder, cache["index"]
    batch = inputs.shape[0]
    per_sentence = lambda a: a.reshape(batch, -1, *a.shape[2:])  # [batch, beams * max_len, ...]
    cross_mask = (inputs > 0)[:, None, None, :]
    x = decoder.positions(decoder.embedding(token), jnp.full(token.shape, index, jnp.int32))
    new_layers = []
    for layer, layer_cache in zip(decoder.layers, cache["layers"], strict=True):
        written = {}

        def self_attend(y, layer=layer, layer_cache=layer_cache, written=written):
            q, k, v = layer.self_attention.project_qkv(y)
            for name, new in (("self_key", k), ("self_value", v)):
                written[name] = jax.lax.dynamic_update_slice_in_dim(
                    layer_cache[name], new, index, axis=1
                )
            keys, values = per_sentence(written["self_key"]), per_sentence(written["self_value"])
            return layer.self_attention.attend(q, keys, values, self_mask, True)

        def cross_attend(y, layer=layer, layer_cache=layer_cache):
            q = layer.cross_attention.project_query(y)
            return layer.cross_attention.attend(
                q, layer_cache["cross_key"], layer_cache["cross_value"], cross_mask, True
            )

        def feed_forward(y, layer=layer):
            return layer.feed_forward(y, True)

        x = layer.self_attention_residual(x, self_attend, True)
        x = layer.cross_attention_residual(x, cross_attend, True)
        x = layer.feed_forward_residual(x, feed_forward, True)
        new_layers.append({**layer_cache, **written})
    return decoder.logits(x)[:, 0, :], {"index": index + 1, "layers": new_layers}


def ancestry_beam_search(model, beam_size: int, length: int):
    def run(params, inputs):
        batch, beams = inputs.shape[0], beam_size
        slots = jnp.arange(beams)

        def step(tokens, state):
            index = state["model"]["index"]
            ancestors = state["ancestors"].at[:, :, index].set(slots)  # written into own slot
            in_history = ancestors[:, :, None, :] == slots[None, None, :, None]  # [b, k, s, t]
            visible = in_history & (jnp.arange(length) <= index)
            logits, model_cache = model.apply(
                {"params": params},
                tokens[:, None],
                inputs,
                state["model"],
                visible.reshape(batch, 1, beams, beams * length),
                method=ancestry_decoder_step,
            )
            state = {"model": model_cache, "ancestors": ancestors}
            return cached_model.next_token_log_probs(logits), state

        def follow_parents(state, parents):
            ancestors = jnp.take_along_axis(state["ancestors"], parents[:, :, None], axis=1)
            return {**state, "ancestors": ancestors}

        state = {
            "model": cached_model.start(model, params, inputs, beams, length),
            "ancestors": jnp.zeros((batch, beams, length), jnp.int32),
        }
        result = search(
            step,
            follow_parents,
            state,
            batch_size=batch,
            beam_size=beams,
            alpha=0.6,
            max_decode_length=length,
        )
        return result.sequences[:, 0]

    return jax.jit(run)


# ------------------------------------------------------------------ timing


def time_interleaved(fns: dict, args, repeats: int) -> tuple[dict, dict]:
    """Compiles and warms up every function, then times them round-robin `repeats` times.
    Returns ({name: compile+first run seconds}, {name: [run seconds]})."""
    first, runs = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            runs[name].append(time.perf_counter() - start)
    return first, runs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    batch, source_length, length = _BATCH_SIZE.value, _SOURCE_LENGTH.value, _OUTPUT_LENGTH.value
    beam_size = _BEAM_SIZE.value
    model_config = TransformerConfig.from_mapping({**config.model.to_dict(), "dropout_rate": 0.0})
    if max(length, source_length) > model_config.max_length:
        raise app.UsageError(
            f"--output_length and --source_length must be <= the model's max_length "
            f"({model_config.max_length})."
        )
    model = NeverEnds(model_config)
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, model_config.vocab_size, (batch, source_length)).astype(np.int32)
    inputs[:, -1] = EOS_ID
    inputs = jnp.asarray(inputs)
    params = nn.unbox(
        jax.jit(model.init)(jax.random.key(0), inputs[:1], inputs[:1, :length])["params"]
    )
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"model d_model={model_config.d_model} layers={model_config.num_encoder_layers}+"
        f"{model_config.num_decoder_layers} vocab={model_config.vocab_size} "
        f"({num_params / 1e6:.1f}M params); batch {batch}, source {source_length}, "
        f"output {length} tokens, beam {beam_size}; {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); median of {_REPEATS.value} runs"
    )

    variants = {
        "greedy_cached": jax.jit(lambda p, x: greedy_search(model, p, x, length)),
        "greedy_uncached": jax.jit(lambda p, x: uncached_greedy_search(model, p, x, length)),
        "ancestry_mask": ancestry_beam_search(model, beam_size, length),
    }
    for name in REORDER:
        variants[name] = gather_beam_search(model, name, beam_size, length)
    unknown = sorted(set(_VARIANTS.value) - set(variants))
    if unknown:
        raise app.UsageError(f"Unknown --variants {unknown}; choose from {sorted(variants)}.")

    chosen = {name: variants[name] for name in _VARIANTS.value}
    first, runs = time_interleaved(chosen, (params, inputs), _REPEATS.value)
    medians, outputs = {}, {}
    for name, fn in chosen.items():
        medians[name] = statistics.median(runs[name])
        outputs[name] = np.asarray(fn(params, inputs))
        print(
            f"{name:16s} {medians[name] * 1e3:9.1f} ms  ({min(runs[name]) * 1e3:.1f}-"
            f"{max(runs[name]) * 1e3:.1f})  {batch * length / medians[name]:9.0f} output "
            f"tokens/s  [compile+first run {first[name]:.1f} s]"
        )

    if {"greedy_cached", "greedy_uncached"} <= medians.keys():
        same = np.array_equal(outputs["greedy_cached"], outputs["greedy_uncached"])
        ratio = medians["greedy_uncached"] / medians["greedy_cached"]
        print(f"cached greedy is {ratio:.1f}x faster than uncached (same outputs: {same})")
    if "self_take" in medians:
        for name in [v for v in BEAM_VARIANTS if v in medians and v != "self_take"]:
            same = np.array_equal(outputs[name], outputs["self_take"])
            print(
                f"{name} takes {medians[name] / medians['self_take']:.2f}x the time of "
                f"self_take (same outputs: {same})"
            )


if __name__ == "__main__":
    app.run(main)
