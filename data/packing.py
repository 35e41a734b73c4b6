"""Packing examples into rows, in two steps: a plan from lengths alone, then vectorized copying.

`pack_rows(input_lengths, target_lengths, max_length)` decides which row each example goes to:
first fit over at most OPEN_ROWS open rows, in the given (shuffled) order; when a new row is
needed and OPEN_ROWS are open, the oldest one is closed. A row holds an example only if both
its inputs and its targets still fit. It needs only the lengths (plain Python ints, a few
microseconds per example), so a whole shard's epoch is planned at once.

`assemble(token_ids, examples, rows, num_rows, max_length)` builds the packed arrays for a set
of (example, row) pairs with a handful of numpy operations: no Python loop over examples.
Within a row, examples keep the order they are given in: segment ids 1, 2, ... in that order.
"""

import numpy as np

from data.token_ids import SIDES, TokenIds

OPEN_ROWS = 16  # rows a packing plan keeps open at once (more: denser, slower)


def pack_rows(
    input_lengths: np.ndarray, target_lengths: np.ndarray, max_length: int
) -> tuple[np.ndarray, int]:
    """(int64 [examples] row of each example, number of rows) for examples in this order.

    Every length must be at most `max_length`. Rows are numbered in the order they are opened.
    """
    rows = np.empty(len(input_lengths), np.int64)
    used_inputs: list[int] = []  # open rows, oldest first: tokens used on the inputs side,
    used_targets: list[int] = []  # on the targets side,
    row_ids: list[int] = []  # and the row's number
    num_rows = 0
    pairs = zip(input_lengths.tolist(), target_lengths.tolist(), strict=True)
    for k, (n_in, n_tgt) in enumerate(pairs):
        room_in, room_tgt = max_length - n_in, max_length - n_tgt
        for j in range(len(row_ids)):
            if used_inputs[j] <= room_in and used_targets[j] <= room_tgt:
                used_inputs[j] += n_in
                used_targets[j] += n_tgt
                rows[k] = row_ids[j]
                break
        else:
            if len(row_ids) == OPEN_ROWS:  # close the oldest row
                del used_inputs[0], used_targets[0], row_ids[0]
            used_inputs.append(n_in)
            used_targets.append(n_tgt)
            row_ids.append(num_rows)
            rows[k] = num_rows
            num_rows += 1
    return rows, num_rows


def _within_row(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Offset of each example in its row: the lengths of the earlier examples of that row.

    `rows` must be sorted (examples grouped by row, in row order)."""
    ends = np.cumsum(lengths)
    first_of_row = np.r_[True, rows[1:] != rows[:-1]]
    row_start = np.maximum.accumulate(np.where(first_of_row, ends - lengths, 0))
    return ends - lengths - row_start


def assemble(
    token_ids: TokenIds, examples: np.ndarray, rows: np.ndarray, num_rows: int, max_length: int
) -> dict[str, np.ndarray]:
    """Packed int32 [num_rows, max_length] arrays (inputs, targets, *_segment_ids,
    *_positions) holding example `examples[i]` in row `rows[i]`; `rows` must be sorted."""
    first_of_row = np.r_[True, rows[1:] != rows[:-1]]
    index = np.arange(len(rows))
    segment = index - np.maximum.accumulate(np.where(first_of_row, index, 0)) + 1
    batch = {}
    for side in SIDES:
        lengths = token_ids.lengths[side][examples].astype(np.int64)
        total = int(lengths.sum())
        # For each output token: its position in its example, and the example's number here.
        owner = np.repeat(np.arange(len(examples)), lengths)
        position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = token_ids.starts[side][examples][owner] + position
        target = rows[owner] * max_length + _within_row(rows, lengths)[owner] + position
        for key, values in (
            (side, token_ids.ids[side][source]),
            (f"{side}_segment_ids", segment[owner]),
            (f"{side}_positions", position),
        ):
            flat = np.zeros(num_rows * max_length, np.int32)
            flat[target] = values
            batch[key] = flat.reshape(num_rows, max_length)
    return batch
