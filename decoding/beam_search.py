"""Beam search with the GNMT length penalty, batched and jit-friendly.

Each sentence keeps `beam_size` *alive* hypotheses (still growing) and the `beam_size` best
*finished* ones (ended with EOS). A step, for every sentence:

  1. extends every alive hypothesis by every vocabulary token and scores the extensions by
     their total log-probability;
  2. keeps the 2·beam best extensions: at most `beam` of them end in EOS (one per parent), so
     at least `beam` can stay alive;
  3. the `beam` best extensions that do not end become the new alive hypotheses, and the
     decoder cache is reordered so that row k holds the history of new hypothesis k;
  4. extensions that end in EOS *and* rank among the `beam` best of the step are finished:
     scored log P(y) / lp(|y|) with lp(n) = ((5 + n) / 6)^alpha (|y| counts EOS), and merged
     into the finished set, which keeps its `beam` best.

Rule 4 (as in fairseq) makes beam size 1 with alpha 0 exactly greedy search. A sentence is done
when its length limit is reached, or when its finished set is full and no alive hypothesis can
still beat the worst finished one: log-probabilities only fall as a hypothesis grows, so the best
an alive hypothesis can reach is log P(alive) / lp(limit). The loop stops when every sentence is
done. A sentence with no finished hypothesis at the end returns its alive ones.

`search` is the algorithm over any step function and cache; `beam_search` runs it on the
Transformer. The encoder keys/values are stored once per sentence (the model folds the beams of
a sentence into its query axis), so after each step only the self-attention keys/values are
reordered, by one row gather. scripts/decode_speed.py compares this with cheaper-looking
alternatives; on CPU none was measurably faster (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from decoding import cached_model
from decoding.cached_model import EOS_ID, PAD_ID
from model import Cache, Transformer

Array = jax.Array
# step_fn(tokens [batch * beams], cache) -> (log_probs [batch * beams, vocab], cache)
StepFn = Callable[[Array, Any], tuple[Array, Any]]
# reorder_fn(cache, parents [batch, beams]) -> the cache for the new hypotheses, where new
# hypothesis (b, k) continues old hypothesis (b, parents[b, k])
ReorderFn = Callable[[Any, Array], Any]


class BeamSearchResult(NamedTuple):
    sequences: Array  # [batch, beams, max_decode_length] int32, EOS kept, then zeros
    scores: Array  # [batch, beams] float32: log P / lp(length), best first


class _State(NamedTuple):
    position: Array  # scalar int32: the output position written by the next step
    alive_sequences: Array  # [batch, beams, max_len]
    alive_log_probs: Array  # [batch, beams]: -inf marks an empty slot
    last_tokens: Array  # [batch, beams]: the token each alive hypothesis ended with
    finished_sequences: Array  # [batch, beams, max_len]
    finished_scores: Array  # [batch, beams]: length-penalised; -inf marks an empty slot
    cache: Any  # decoder cache with batch * beams rows


def length_penalty(length: Array, alpha: float | Array) -> Array:
    """GNMT (Wu et al. 2016): lp(n) = ((5 + n) / 6)^alpha; scores are log P / lp."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
    """x [batch, n, ...], indices [batch, m] -> [batch, m, ...]: x[b, indices[b, j]]."""
    indices = indices.reshape(indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, indices, axis=1)


def search(
    step_fn: StepFn,
    reorder_fn: ReorderFn,
    cache: Any,
    *,
    batch_size: int,
    beam_size: int,
    alpha: float | Array,
    max_decode_length: int,
    max_lengths: Array | None = None,
) -> BeamSearchResult:
    """Beam search over `step_fn`, starting from `cache` (batch_size * beam_size rows, the beams
    of one sentence contiguous). max_lengths [batch] optionally caps each sentence's output
    length (default max_decode_length). Sizes are static; alpha (>= 0) may be traced."""
    batch, beams, max_len = batch_size, beam_size, max_decode_length
    if max_lengths is None:
        max_lengths = jnp.full((batch,), max_len, jnp.int32)
    max_lengths = jnp.minimum(max_lengths, max_len)
    best_possible_penalty = length_penalty(max_lengths, alpha)[:, None]  # [batch, 1]

    # All beams of a sentence start from the begin token, but only the first one is live:
    # otherwise the first step would return `beams` copies of the same extensions.
    initial = _State(
        position=jnp.zeros((), jnp.int32),
        alive_sequences=jnp.zeros((batch, beams, max_len), jnp.int32),
        alive_log_probs=jnp.tile(
            jnp.array([0.0] + [-jnp.inf] * (beams - 1), jnp.float32), (batch, 1)
        ),
        last_tokens=jnp.full((batch, beams), PAD_ID, jnp.int32),
        finished_sequences=jnp.zeros((batch, beams, max_len), jnp.int32),
        finished_scores=jnp.full((batch, beams), -jnp.inf, jnp.float32),
        cache=cache,
    )

    def sentences_done(state: _State) -> Array:
        """[batch] bool: the length limit is reached, or no alive hypothesis can still enter
        the (full) finished set."""
        best_alive_bound = state.alive_log_probs[:, 0:1] / best_possible_penalty  # alive sorted
        worst_finished = state.finished_scores[:, -1:]  # finished sorted; -inf if not full
        cannot_improve = jnp.all(best_alive_bound < worst_finished, axis=1)
        return (state.position >= max_lengths) | cannot_improve

    def not_done(state: _State) -> Array:
        return (state.position < max_len) & ~jnp.all(sentences_done(state))

    def beam_step(state: _State) -> _State:
        position = state.position
        # 1. Score every one-token extension of every alive hypothesis.
        log_probs, cache = step_fn(state.last_tokens.reshape(batch * beams), state.cache)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, beams, vocab)
        extension_log_probs = state.alive_log_probs[:, :, None] + log_probs  # [b, beams, vocab]

        # 2. The 2·beams best extensions of each sentence, best first.
        top_log_probs, top_flat = jax.lax.top_k(
            extension_log_probs.reshape(batch, beams * vocab), 2 * beams
        )  # [batch, 2 * beams]
        top_parents = top_flat // vocab  # which alive hypothesis each extends
        top_tokens = (top_flat % vocab).astype(jnp.int32)
        top_sequences = jax.lax.dynamic_update_slice_in_dim(
            _gather_beams(state.alive_sequences, top_parents), top_tokens[:, :, None], position, 2
        )  # [batch, 2 * beams, max_len]
        ends = top_tokens == EOS_ID

        # 3. The best `beams` that go on are the new alive hypotheses (sorted, best first).
        alive_log_probs, alive_picks = jax.lax.top_k(
            jnp.where(ends, -jnp.inf, top_log_probs), beams
        )  # [batch, beams]
        alive_parents = jnp.take_along_axis(top_parents, alive_picks, axis=1)
        alive_sequences = _gather_beams(top_sequences, alive_picks)
        last_tokens = jnp.take_along_axis(top_tokens, alive_picks, axis=1)

        # 4. Extensions that end and rank among the step's `beams` best join the finished set.
        in_top_beams = jnp.arange(2 * beams) < beams
        new_scores = jnp.where(
            ends & in_top_beams, top_log_probs / length_penalty(position + 1, alpha), -jnp.inf
        )
        finished_scores, finished_picks = jax.lax.top_k(
            jnp.concatenate([state.finished_scores, new_scores], axis=1), beams
        )
        finished_sequences = _gather_beams(
            jnp.concatenate([state.finished_sequences, top_sequences], axis=1), finished_picks
        )

        # A sentence past its length limit keeps its state unchanged.
        active = position < max_lengths  # [batch]
        keep = lambda new, old: jnp.where(
            active.reshape((batch,) + (1,) * (new.ndim - 1)), new, old
        )
        stay_in_place = jnp.broadcast_to(jnp.arange(beams), (batch, beams))
        return _State(
            position=position + 1,
            alive_sequences=keep(alive_sequences, state.alive_sequences),
            alive_log_probs=keep(alive_log_probs, state.alive_log_probs),
            last_tokens=keep(last_tokens, state.last_tokens),
            finished_sequences=keep(finished_sequences, state.finished_sequences),
            finished_scores=keep(finished_scores, state.finished_scores),
            cache=reorder_fn(cache, keep(alive_parents, stay_in_place)),
        )

    final = jax.lax.while_loop(not_done, beam_step, initial)

    # A sentence that finished nothing returns its alive hypotheses, scored at their length.
    has_finished = final.finished_scores[:, 0:1] > -jnp.inf  # [batch, 1]
    alive_scores = final.alive_log_probs / length_penalty(max_lengths, alpha)[:, None]
    return BeamSearchResult(
        sequences=jnp.where(
            has_finished[:, :, None], final.finished_sequences, final.alive_sequences
        ),
        scores=jnp.where(has_finished, final.finished_scores, alive_scores),
    )


def reorder_self_attention(cache: Cache, parents: Array) -> Cache:
    """New hypothesis (b, k) continues old (b, parents[b, k]): gathers the self-attention keys
    and values [batch * beams, max_len, heads, head_dim] by row. The encoder's keys/values are
    per sentence and stay where they are."""
    batch, beams = parents.shape
    rows = (parents + beams * jnp.arange(batch)[:, None]).reshape(-1)  # [batch * beams]
    gather = lambda x: jnp.take(x, rows, axis=0, mode="clip")  # in range: no fill, no select
    layers = [
        {**layer, "self_key": gather(layer["self_key"]), "self_value": gather(layer["self_value"])}
        for layer in cache["layers"]
    ]
    return {**cache, "layers": layers}


def beam_search(
    model: Transformer,
    params,
    inputs: Array,
    *,
    beam_size: int,
    alpha: float | Array,
    max_decode_length: int,
    max_lengths: Array | None = None,
) -> BeamSearchResult:
    """Beam search on the Transformer: inputs [batch, source_length] int32 ->
    BeamSearchResult(sequences [batch, beams, max_decode_length], scores [batch, beams])."""
    cached_model.check_decode_length(model, max_decode_length)
    return search(
        lambda tokens, cache: cached_model.step(model, params, inputs, cache, tokens),
        reorder_self_attention,
        cached_model.start(model, params, inputs, beam_size, max_decode_length),
        batch_size=inputs.shape[0],
        beam_size=beam_size,
        alpha=alpha,
        max_decode_length=max_decode_length,
        max_lengths=max_lengths,
    )
