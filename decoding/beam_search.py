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

Rule 4 (as in fairseq) makes beam size 1 with alpha 0 exactly greedy search. The search
returns each sentence's `num_hypotheses` best finished hypotheses (1 for a translation, up to
`beam` for an n-best list). A sentence is done when its length limit is reached, or when it has
`num_hypotheses` finished ones and no alive hypothesis can still beat the last of them:
log-probabilities only fall as a hypothesis grows, so the best an alive hypothesis, or any
hypothesis grown from it, can reach is log P(alive) / lp(limit). The result is exact: what
further steps would add ranks below those returned. Done sentences leave the batch as
the search goes (decoding/stages.py), and it stops when every sentence is done. A sentence with
no finished hypothesis at the end returns its alive ones.

`search` is the algorithm over any step function and cache; `beam_search` runs it on the
Transformer. Nothing in the decoder cache moves when hypotheses change parents: each beam slot
writes its own keys/values, and the cache's `history` says which slot holds each position of
each hypothesis (the decoder attends through a mask). So after a step only `history`
[batch, beams, max_len] int32 is reordered. The 2·beam best extensions of a sentence are
found among the best chunks of its vocabulary rows (`best_extensions`, exact): see
docs/decoding_speed.md.
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
# step_fn(tokens [batch * beams], cache) -> (logits [batch * beams, vocab], cache)
StepFn = Callable[[Array, Any], tuple[Array, Any]]
# reorder_fn(cache, parents [batch, beams]) -> the cache for the new hypotheses, where new
# hypothesis (b, k) continues old hypothesis (b, parents[b, k])
ReorderFn = Callable[[Any, Array], Any]


# With early_stopping, a sentence stops once its best alive hypothesis could not beat its best
# finished one even if it ended within this many more steps. A horizon of 1 (end at the next
# step) lost BLEU on Multi30k; 3 gives the exact search's output on nearly every sentence
# (docs/decoding_speed.md, fifth round).
EARLY_STOPPING_HORIZON = 3


class BeamSearchResult(NamedTuple):
    sequences: Array  # [batch, num_hypotheses, max_decode_length] int32, EOS kept, then zeros
    scores: Array  # [batch, num_hypotheses] float32: log P / lp(length), best first


class _State(NamedTuple):
    position: Array  # scalar int32: the output position written by the next step
    alive_sequences: Array  # [batch, beams, max_len]
    alive_log_probs: Array  # [batch, beams]: -inf marks an empty slot
    last_tokens: Array  # [batch, beams]: the token each alive hypothesis ended with
    finished_sequences: Array  # [batch, beams, max_len]
    finished_scores: Array  # [batch, beams]: length-penalised; -inf marks an empty slot
    max_lengths: Array  # [batch] int32: each sentence's output length limit
    stopped_early: Array  # [batch] bool: the early rule has held at some step
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
    num_hypotheses: int | None = None,
    early_stopping: bool = False,
    max_stages: int = stages.MAX_STAGES,
) -> BeamSearchResult:
    """Beam search over `step_fn`, starting from `cache` (a pytree whose non-scalar leaves have
    one row per sentence on axis 0). max_lengths [batch] optionally caps each sentence's output
    length (default max_decode_length). num_hypotheses (1 to beam_size, default beam_size): how
    many of each sentence's best hypotheses are returned; fewer stop sooner. Sizes are static;
    alpha (>= 0) may be traced. Finished sentences leave the batch as the search goes, in at
    most `max_stages` stages (decoding/stages.py).

    early_stopping: a sentence is also done as soon as its best finished hypothesis scores at
    least as well as its best alive one would if that ended, at no further cost, within the
    next EARLY_STOPPING_HORIZON steps: the exact rule's bound, with that horizon instead of the
    length limit. It saves most of the steps spent making sure that no much longer hypothesis
    scores better; the result may then differ from the exact one (rarely; see
    docs/decoding_speed.md)."""
    batch, beams, max_len = batch_size, beam_size, max_decode_length
    num_hypotheses = beams if num_hypotheses is None else num_hypotheses
    if not 1 <= num_hypotheses <= beams:
        raise ValueError(f"num_hypotheses must be 1 to beam_size ({beams}), got {num_hypotheses}.")
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
        stopped_early=jnp.zeros((batch,), bool),
        cache=cache,
    )

    def sentences_done(state: _State) -> Array:
        """[batch] bool: the length limit is reached, or no alive hypothesis can still enter
        the returned best finished ones, or (early_stopping) the early rule has held. Once
        true it stays true: log-probabilities only fall, and the flag is kept."""
        best_possible_penalty = length_penalty(state.max_lengths, alpha)  # [batch]
        best_alive_bound = state.alive_log_probs[:, 0] / best_possible_penalty  # alive sorted
        last_returned = state.finished_scores[:, num_hypotheses - 1]  # sorted; -inf if absent
        cannot_improve = best_alive_bound < last_returned
        done = (state.position >= state.max_lengths) | cannot_improve
        return done | state.stopped_early if early_stopping else done

    def beam_step(state: _State) -> _State:
        position, batch = state.position, state.alive_log_probs.shape[0]
        # 1. Score every one-token extension of every alive hypothesis, and 2. keep the
        # 2·beams best of each sentence, best first.
        logits, cache = step_fn(state.last_tokens.reshape(batch * beams), state.cache)
        top_log_probs, top_parents, top_tokens = best_extensions(
            logits, state.alive_log_probs, 2 * beams
        )  # [batch, 2 * beams] each
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

        # A done sentence keeps its state unchanged, so its result no longer depends on
        # what the rest of the batch does.
        active = ~sentences_done(state)  # [batch]
        stopped_early = state.stopped_early
        if early_stopping:  # the best finished beats the best alive ended within the horizon
            best_finished = finished_scores[:, 0]
            horizon_length = jnp.minimum(position + 1 + EARLY_STOPPING_HORIZON, state.max_lengths)
            early_rule = (best_finished > -jnp.inf) & (
                best_finished >= alive_log_probs[:, 0] / length_penalty(horizon_length, alpha)
            )
            stopped_early = stopped_early | (active & early_rule)
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
            stopped_early=stopped_early,
            cache=reorder_fn(cache, keep(alive_parents, stay_in_place)),
        )

    final = stages.shrinking_while_loop(sentences_done, beam_step, initial, max_stages)

    # A sentence that finished nothing returns its alive hypotheses, scored at their length.
    has_finished = final.finished_scores[:, 0:1] > -jnp.inf  # [batch, 1]
    alive_scores = final.alive_log_probs / length_penalty(final.max_lengths, alpha)[:, None]
    sequences = jnp.where(has_finished[:, :, None], final.finished_sequences, final.alive_sequences)
    scores = jnp.where(has_finished, final.finished_scores, alive_scores)
    return BeamSearchResult(sequences[:, :num_hypotheses], scores[:, :num_hypotheses])


def best_extensions(
    logits: Array, alive_log_probs: Array, k: int, chunk: int = cached_model.VOCABULARY_CHUNK
) -> tuple[Array, Array, Array]:
    """The k best one-token extensions of each sentence, best first, exactly as jax.lax.top_k
    over alive_log_probs[b, beam] + log_softmax(logits)[b * beams + beam, token] flattened
    (beam, token), with PAD_ID excluded and ties to the lower (beam, token).

    logits [batch * beams, vocab], alive_log_probs [batch, beams] -> (log-probabilities,
    parent beams, tokens), each [batch, k]. The vocabulary is cut into chunks of `chunk`
    columns; the k chunks of a sentence with the largest maxima hold its k best extensions
    (each of those has a chunk maximum at least as large), so the exact top-k runs on those
    k * chunk candidates only. The log-softmax is never written out: its normaliser is one
    more pass over the logits, with the chunk maxima for its maximum."""
    rows, vocab = logits.shape
    batch, beams = alive_log_probs.shape
    chunks, maxima = cached_model.vocabulary_chunks(logits, chunk)  # [rows, num_chunks, chunk]
    num_chunks = maxima.shape[1]
    shift = alive_log_probs.reshape(rows) - _log_normaliser(logits, maxima)  # [rows]
    if num_chunks <= k:  # a small vocabulary: every column is a candidate
        scores = jnp.where(jnp.arange(vocab) == PAD_ID, -jnp.inf, logits) + shift[:, None]
        values, flat = jax.lax.top_k(scores.reshape(batch, beams * vocab), k)
        return values, flat // vocab, (flat % vocab).astype(jnp.int32)
    chunk_scores = maxima + shift[:, None]  # [rows, num_chunks]
    _, best_chunks = jax.lax.top_k(chunk_scores.reshape(batch, beams * num_chunks), k)
    best_chunks = jnp.sort(best_chunks, axis=-1)  # (beam, chunk) order: ties keep the lower
    candidates, tokens = cached_model.read_chunks(
        chunks.reshape(batch, beams * num_chunks, chunk), best_chunks, num_chunks
    )  # [batch, k, chunk] each
    parents = best_chunks // num_chunks  # [batch, k]
    candidates = (
        candidates + jnp.take_along_axis(shift.reshape(batch, beams), parents, 1)[..., None]
    )
    values, picks = jax.lax.top_k(candidates.reshape(batch, k * chunk), k)
    picked_parents = jnp.take_along_axis(parents, picks // chunk, axis=-1)
    picked_tokens = jnp.take_along_axis(tokens.reshape(batch, k * chunk), picks, axis=-1)
    return values, picked_parents, picked_tokens.astype(jnp.int32)


def _log_normaliser(logits: Array, maxima: Array) -> Array:
    """logsumexp of each row of logits [rows, vocab] (PAD included: it is in the model's
    distribution) -> [rows], in one pass: the maximum that keeps exp() in range comes from the
    chunk maxima [rows, num_chunks] (PAD excluded) and PAD's own logit."""
    row_max = jnp.maximum(maxima.max(axis=-1), logits[:, PAD_ID])
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # as jax.nn.logsumexp
    return row_max + jnp.log(jnp.sum(jnp.exp(logits - row_max[:, None]), axis=-1))


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
    num_hypotheses: int | None = None,
    early_stopping: bool = False,
    max_stages: int = stages.MAX_STAGES,
) -> BeamSearchResult:
    """Beam search on the Transformer: inputs [batch, source_length] int32 ->
    BeamSearchResult(sequences [batch, n, max_decode_length], scores [batch, n]), the n =
    num_hypotheses (default beam_size) best hypotheses of each sentence."""
    cached_model.check_decode_length(model, max_decode_length)

    def step(tokens: Array, decoder: tuple[Array, Cache]) -> tuple[Array, tuple[Array, Cache]]:
        sources, cache = decoder  # the sentences still in the batch: their inputs and cache
        logits, cache = cached_model.step(model, params, sources, cache, tokens)
        return logits, (sources, cache)

    return search(
        step,
        lambda decoder, parents: (decoder[0], reorder_history(decoder[1], parents)),
        (inputs, cached_model.start(model, params, inputs, beam_size, max_decode_length)),
        batch_size=inputs.shape[0],
        beam_size=beam_size,
        alpha=alpha,
        max_decode_length=max_decode_length,
        max_lengths=max_lengths,
        num_hypotheses=num_hypotheses,
        early_stopping=early_stopping,
        max_stages=max_stages,
    )
