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
an alive hypothesis can reach is log P(alive) / lp(limit). Done sentences leave the batch as
the search goes (decoding/stages.py), and it stops when every sentence is done. A sentence with
no finished hypothesis at the end returns its alive ones.

`search` is the algorithm over any step function and cache; `beam_search` runs it on the
Transformer. Nothing in the decoder cache moves when hypotheses change parents: each beam slot
writes its own keys/values, and the cache's `history` says which slot holds each position of
each hypothesis (the decoder attends through a mask). So after a step only `history`
[batch, beams, max_len] int32 is reordered. The 2·beam best extensions are found per
hypothesis first (`top_k_by_chunks`, exact) and then merged: see docs/decoding_speed.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from decoding import cached_model, stages
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
    max_lengths: Array  # [batch] int32: each sentence's output length limit
    cache: Any  # decoder cache: one row per sentence on axis 0 of every non-scalar leaf


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
    """Beam search over `step_fn`, starting from `cache` (a pytree whose non-scalar leaves have
    one row per sentence on axis 0). max_lengths [batch] optionally caps each sentence's output
    length (default max_decode_length). Sizes are static; alpha (>= 0) may be traced. Finished
    sentences leave the batch as the search goes (decoding/stages.py)."""
    batch, beams, max_len = batch_size, beam_size, max_decode_length
    if max_lengths is None:
        max_lengths = jnp.full((batch,), max_len, jnp.int32)

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
        max_lengths=jnp.minimum(max_lengths, max_len),
        cache=cache,
    )

    def sentences_done(state: _State) -> Array:
        """[batch] bool: the length limit is reached, or no alive hypothesis can still enter
        the (full) finished set. Once true it stays true, and the sentence's result is final:
        log-probabilities only fall, and its finished set takes nothing more."""
        best_possible_penalty = length_penalty(state.max_lengths, alpha)[:, None]  # [batch, 1]
        best_alive_bound = state.alive_log_probs[:, 0:1] / best_possible_penalty  # alive sorted
        worst_finished = state.finished_scores[:, -1:]  # finished sorted; -inf if not full
        cannot_improve = jnp.all(best_alive_bound < worst_finished, axis=1)
        return (state.position >= state.max_lengths) | cannot_improve

    def beam_step(state: _State) -> _State:
        position, batch = state.position, state.alive_log_probs.shape[0]
        # 1. Score every one-token extension of every alive hypothesis.
        log_probs, cache = step_fn(state.last_tokens.reshape(batch * beams), state.cache)
        vocab = log_probs.shape[-1]

        # 2. The 2·beams best extensions of each sentence, best first: the best of each
        # hypothesis, then the best of those (exact: no more than 2·beams come from one).
        per_row = min(2 * beams, vocab)
        row_log_probs, row_tokens = top_k_by_chunks(log_probs, per_row)  # [b * beams, per_row]
        extension_log_probs = state.alive_log_probs[:, :, None] + row_log_probs.reshape(
            batch, beams, per_row
        )
        top_log_probs, top_flat = jax.lax.top_k(
            extension_log_probs.reshape(batch, beams * per_row), 2 * beams
        )  # [batch, 2 * beams]
        top_parents = top_flat // per_row  # which alive hypothesis each extends
        top_tokens = jnp.take_along_axis(row_tokens.reshape(batch, beams * per_row), top_flat, 1)
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
        active = position < state.max_lengths  # [batch]
        keep = lambda new, old: jnp.where(
            active.reshape((batch,) + (1,) * (new.ndim - 1)), new, old
        )
        stay_in_place = jnp.broadcast_to(jnp.arange(beams), (batch, beams))
        return state._replace(
            position=position + 1,
            alive_sequences=keep(alive_sequences, state.alive_sequences),
            alive_log_probs=keep(alive_log_probs, state.alive_log_probs),
            last_tokens=keep(last_tokens, state.last_tokens),
            finished_sequences=keep(finished_sequences, state.finished_sequences),
            finished_scores=keep(finished_scores, state.finished_scores),
            cache=reorder_fn(cache, keep(alive_parents, stay_in_place)),
        )

    final = stages.shrinking_while_loop(sentences_done, beam_step, initial)

    # A sentence that finished nothing returns its alive hypotheses, scored at their length.
    has_finished = final.finished_scores[:, 0:1] > -jnp.inf  # [batch, 1]
    alive_scores = final.alive_log_probs / length_penalty(final.max_lengths, alpha)[:, None]
    return BeamSearchResult(
        sequences=jnp.where(
            has_finished[:, :, None], final.finished_sequences, final.alive_sequences
        ),
        scores=jnp.where(has_finished, final.finished_scores, alive_scores),
    )


def top_k_by_chunks(x: Array, k: int, chunk: int = 64) -> tuple[Array, Array]:
    """jax.lax.top_k(x, k) over the last axis, the same values and indices (ties to the lower
    index), without a k-selection pass over all of x: XLA:CPU's TopK is slower than a max.

    The k chunks of `chunk` columns with the largest maxima hold the k largest entries (each
    of those has a chunk maximum at least as large), so top-k runs on those k * chunk only."""
    n = x.shape[-1]
    num_chunks = -(-n // chunk)
    if num_chunks <= k:
        return jax.lax.top_k(x, k)
    pad = [(0, 0)] * (x.ndim - 1) + [(0, num_chunks * chunk - n)]
    chunks = jnp.pad(x, pad, constant_values=-jnp.inf).reshape(*x.shape[:-1], num_chunks, chunk)
    _, best_chunks = jax.lax.top_k(chunks.max(axis=-1), k)
    best_chunks = jnp.sort(best_chunks, axis=-1)  # column order, so ties keep the lower index
    candidates = jnp.take_along_axis(chunks, best_chunks[..., None], axis=-2)  # [..., k, chunk]
    values, picks = jax.lax.top_k(candidates.reshape(*x.shape[:-1], k * chunk), k)
    columns = jnp.take_along_axis(best_chunks, picks // chunk, axis=-1) * chunk + picks % chunk
    return values, columns.astype(jnp.int32)


def reorder_history(cache: Cache, parents: Array) -> Cache:
    """New hypothesis (b, k) continues old (b, parents[b, k]): it takes over that one's
    history (which slot holds each of its positions). Keys and values stay where they are."""
    history = jnp.take_along_axis(cache["history"], parents[:, :, None], axis=1)
    return {**cache, "history": history}


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

    def step(tokens: Array, decoder: tuple[Array, Cache]) -> tuple[Array, tuple[Array, Cache]]:
        sources, cache = decoder  # the sentences still in the batch: their inputs and cache
        log_probs, cache = cached_model.step_log_probs(model, params, sources, cache, tokens)
        return log_probs, (sources, cache)

    return search(
        step,
        lambda decoder, parents: (decoder[0], reorder_history(decoder[1], parents)),
        (inputs, cached_model.start(model, params, inputs, beam_size, max_decode_length)),
        batch_size=inputs.shape[0],
        beam_size=beam_size,
        alpha=alpha,
        max_decode_length=max_decode_length,
        max_lengths=max_lengths,
    )
