"""The shrinking loop of decoding/stages.py against a plain while loop over the whole batch:
same final state, row for row, while finished rows really leave the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import stages


@pytest.mark.parametrize(
    "batch_size, sizes", [(64, [64, 32, 8]), (16, [16, 8, 2]), (12, [12, 6]), (5, [5]), (1, [1])]
)
def test_stage_sizes(batch_size, sizes):
    assert stages.stage_sizes(batch_size) == sizes


def counting_body(state):
    """Each row counts up to its own limit (adding each count to its payload), then stays as
    it is; ROWS_SEEN records how many rows the body saw at each call (a host callback), to
    check that the batch shrinks."""
    step, counts, limits, payload = state
    jax.debug.callback(lambda rows: ROWS_SEEN.append(int(rows)), jnp.int32(counts.shape[0]))
    unfinished = counts < limits
    grown = jnp.where(unfinished, counts + 1, counts)
    return step + 1, grown, limits, payload + jnp.where(unfinished, grown, 0)[:, None]


ROWS_SEEN: list[int] = []


@pytest.mark.parametrize("seed", [0, 1])
def test_shrinking_loop_equals_one_loop_over_the_batch(seed):
    rng = np.random.default_rng(seed)
    limits = jnp.asarray(rng.integers(0, 30, 16), jnp.int32)
    limits = limits.at[3].set(29)  # one long row keeps the loop going
    initial = (jnp.int32(0), jnp.zeros(16, jnp.int32), limits, jnp.zeros((16, 2), jnp.int32))
    done = lambda state: state[1] >= state[2]

    def plain(state):
        return jax.lax.while_loop(lambda s: ~jnp.all(done(s)), counting_body, state)

    expected = jax.jit(plain)(initial)
    ROWS_SEEN.clear()
    got = jax.jit(lambda s: stages.shrinking_while_loop(done, counting_body, s))(initial)
    jax.effects_barrier()
    for got_leaf, expected_leaf in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(expected_leaf))
    assert ROWS_SEEN[0] == 16 and ROWS_SEEN[-1] == 2  # 16 -> 8 -> 2 rows
    assert len(ROWS_SEEN) == 29  # the same number of steps as the plain loop
    # A stage holds every unfinished row, and runs while they outnumber the next stage's rows.
    next_rows = {16: 8, 8: 2, 2: 0}
    for step, rows in enumerate(ROWS_SEEN):
        unfinished = int(np.sum(np.asarray(limits) > step))
        assert unfinished <= rows
        assert unfinished > next_rows[rows]


def test_one_stage_is_the_plain_loop():
    """max_stages=1 (a batch split over devices): every step sees the whole batch."""
    limits = jnp.asarray([3, 0, 7, 1], jnp.int32)
    initial = (jnp.int32(0), jnp.zeros(4, jnp.int32), limits, jnp.zeros((4, 2), jnp.int32))
    done = lambda state: state[1] >= state[2]
    ROWS_SEEN.clear()
    got = jax.jit(lambda s: stages.shrinking_while_loop(done, counting_body, s, 1))(initial)
    jax.effects_barrier()
    assert ROWS_SEEN == [4] * 7
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(limits))
    np.testing.assert_array_equal(np.asarray(got[3])[:, 0], [6, 0, 28, 1])  # 1 + ... + limit


def test_nothing_runs_when_every_row_is_done():
    ROWS_SEEN.clear()
    limits = jnp.zeros(8, jnp.int32)
    initial = (jnp.int32(0), jnp.zeros(8, jnp.int32), limits, jnp.zeros((8, 2), jnp.int32))
    done = lambda state: state[1] >= state[2]
    step, *_ = jax.jit(lambda s: stages.shrinking_while_loop(done, counting_body, s))(initial)
    jax.effects_barrier()
    assert int(step) == 0 and ROWS_SEEN == []
