"""A decoding loop that drops finished sentences from the batch as it goes.

A `jax.lax.while_loop` keeps one shape for its whole run, so a plain loop decodes every sentence
of a batch at every step until the last one is done. `shrinking_while_loop` runs the loop in
stages over fewer and fewer sentences (e.g. 64, 32, 8): a stage ends as soon as no more
sentences are unfinished than the next stage has rows for; the unfinished ones are then
gathered, in order, into the next stage's smaller arrays, and every sentence's state is written
back to a full-size copy at its own row. All stages are one compiled program, so the shapes stay
static and nothing goes back to the host.

The result is what one loop over the whole batch would give, provided that the state of a
finished sentence no longer changes what the search returns (it is frozen, or what still
changes is unused), as in greedy and beam search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

# Stage k decodes batch_size / STAGE_DIVISORS[k] sentences (64 -> 32 -> 8). Each stage is more
# to compile; a small last stage is what saves the most: the last few sentences of a batch are
# often much longer than the rest (docs/decoding_speed.md).
STAGE_DIVISORS = (1, 2, 8)
MAX_STAGES = len(STAGE_DIVISORS)


def stage_sizes(batch_size: int, max_stages: int = MAX_STAGES) -> list[int]:
    """The sentences each stage decodes: batch_size / STAGE_DIVISORS[k], for the first
    max_stages divisors, while they divide the batch evenly."""
    sizes = []
    for divisor in STAGE_DIVISORS[:max_stages]:
        if batch_size % divisor:
            break
        sizes.append(batch_size // divisor)
    return sizes


def shrinking_while_loop(
    sentences_done: Callable[[Any], Array],
    body: Callable[[Any], Any],
    state: Any,
    max_stages: int = MAX_STAGES,
) -> Any:
    """Runs `state = body(state)` until every sentence is done, on ever fewer sentences.

    state: a pytree whose leaves are scalars (shared by all sentences, e.g. the position) or
    arrays with one row per sentence on axis 0; body must work for any number of rows.
    sentences_done(state) -> [sentences] bool. max_stages 1 is one plain loop over the batch
    (for a batch split over devices that also split the parameters, where gathering sentences
    would move them between devices). Returns the final state of every sentence, in the
    original order (scalars: their values at the end)."""
    batch_size = jnp.shape(sentences_done(state))[0]
    sizes = stage_sizes(batch_size, max_stages)
    if len(sizes) == 1:  # one plain loop; no scatter back, which would lose a row sharding
        return jax.lax.while_loop(lambda s: ~jnp.all(sentences_done(s)), body, state)
    full = state
    sentence_ids = jnp.arange(batch_size)  # the row of `full` each row of `state` belongs to
    for next_size in sizes[1:] + [0]:
        keep_going = lambda s, n=next_size: jnp.sum(~sentences_done(s)) > n
        state = jax.lax.while_loop(keep_going, body, state)
        full = _write_rows(full, sentence_ids, state)
        if next_size:
            unfinished_first = jnp.argsort(sentences_done(state).astype(jnp.int32), stable=True)
            picked = unfinished_first[:next_size]
            state = _take_rows(state, picked)
            sentence_ids = sentence_ids[picked]
    return full


def _take_rows(state: Any, rows: Array) -> Any:
    """The rows `rows` of every per-sentence leaf of `state` (scalars as they are)."""
    return jax.tree.map(lambda x: x[rows] if jnp.ndim(x) else x, state)


def _write_rows(full: Any, sentence_ids: Array, state: Any) -> Any:
    """`full` with rows `sentence_ids` replaced by the rows of `state` (scalars: state's)."""
    return jax.tree.map(
        lambda whole, part: whole.at[sentence_ids].set(part) if jnp.ndim(whole) else part,
        full,
        state,
    )
