"""Synthetic training batches packed like real ones, with a chosen fill rate.

A packed row holds several examples one after another (segment ids 1, 2, ... and positions
restarting at 0 for each), then padding (token, position and segment id 0). Real packing
leaves some of every row empty; `fill_rate` sets how much of each row carries tokens, so the
non-padding throughput of a benchmark matches what training on real data will see.
"""

from __future__ import annotations

import numpy as np

from data.streams import TRAIN_KEYS

FIRST_TOKEN_ID = 2  # ids 0 (padding / begin) and 1 (end of sentence) are never drawn


def _segment_lengths(rng: np.random.Generator, total: int, num_segments: int) -> np.ndarray:
    """A random split of `total` tokens into `num_segments` lengths of at least 1."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=num_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def _pack_row(lengths: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and positions [row_length] of examples of `lengths` laid end to end."""
    segment_ids = np.zeros(row_length, np.int32)
    positions = np.zeros(row_length, np.int32)
    start = 0
    for segment, length in enumerate(lengths, start=1):
        segment_ids[start : start + length] = segment
        positions[start : start + length] = np.arange(length)
        start += length
    return segment_ids, positions


def packed_batch(
    rng: np.random.Generator,
    batch_size: int,
    length: int,
    vocab_size: int,
    fill_rate: float = 0.9,
    mean_example_length: int = 24,
) -> dict[str, np.ndarray]:
    """A batch of [batch_size, length] int32 arrays with the keys training uses.

    Every row carries round(fill_rate * length) source and as many target tokens, split into
    about that many / mean_example_length examples of random lengths (source and target
    lengths of one example differ, as in translation); the rest of the row is padding.
    """
    if not 0.0 < fill_rate <= 1.0:
        raise ValueError(f"fill_rate must be in (0, 1], got {fill_rate}.")
    if vocab_size <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_TOKEN_ID}, got {vocab_size}.")
    filled = max(1, round(fill_rate * length))
    num_segments = max(1, min(filled, round(filled / mean_example_length)))
    batch = {key: np.zeros((batch_size, length), np.int32) for key in TRAIN_KEYS}
    for row in range(batch_size):
        for side in ("inputs", "targets"):
            lengths = _segment_lengths(rng, filled, num_segments)
            segment_ids, positions = _pack_row(lengths, length)
            batch[f"{side}_segment_ids"][row] = segment_ids
            batch[f"{side}_positions"][row] = positions
            tokens = rng.integers(FIRST_TOKEN_ID, vocab_size, length, dtype=np.int32)
            batch[side][row] = np.where(segment_ids > 0, tokens, 0)
    return batch
