"""The numbers corpus's splits: every magnitude band equally present in training (small bands
repeated evenly), held-out splits spread over the bands, disjoint from training where a band
is large enough to hold numbers out, and everything determined by the seed."""

import collections

import numpy as np
import pytest

from data import numbers
from data.errors import DataError

SIZES = {"train": 6000, "validation": 300, "test": 300}


def by_digits(values) -> collections.Counter:
    return collections.Counter(numbers.digit_count(n) for n in values)


def test_training_samples_every_band_equally_and_repeats_small_ones_evenly():
    splits = numbers.split_numbers(SIZES, 999_999, seed=5)
    train = splits["train"].tolist()
    assert len(train) == 6000 and min(train) >= 0 and max(train) <= 999_999
    assert by_digits(train) == {d: 1000 for d in range(1, 7)}
    counts = collections.Counter(train)
    assert {counts[n] for n in range(10)} == {100}  # each one-digit number 100 times
    assert {counts[n] for n in range(10, 100)} == {11, 12}  # 1000 = 90 x 11 + 10
    assert sum(counts[n] for n in range(10, 100)) == 1000
    # 100-999: the 784 numbers the held-out splits leave (900 - 2 x 58), one more time 216 of
    # them; larger bands: distinct numbers.
    assert len({n for n in train if 100 <= n <= 999}) == 784
    assert len({n for n in train if n >= 1000}) == 3000


def test_held_out_splits_cover_the_bands_and_stay_out_of_training_where_they_can():
    splits = numbers.split_numbers(SIZES, 999_999, seed=5)
    train = set(splits["train"].tolist())
    for name in ("validation", "test"):
        held = splits[name].tolist()
        assert len(held) == len(set(held)) == 300
        assert by_digits(held) == {1: 10, 2: 58, 3: 58, 4: 58, 5: 58, 6: 58}
        assert set(range(10)) <= set(held)  # a small band taken whole
        assert not {n for n in held if n >= 100} & train
    large = [{n for n in splits[name].tolist() if n >= 100} for name in ("validation", "test")]
    assert not large[0] & large[1]


def test_splits_follow_the_seed():
    splits = numbers.split_numbers(SIZES, 999_999, seed=5)
    again = numbers.split_numbers(SIZES, 999_999, seed=5)
    assert all(np.array_equal(splits[k], again[k]) for k in SIZES)
    other = numbers.split_numbers(SIZES, 999_999, seed=6)
    assert not np.array_equal(splits["train"], other["train"])


def test_too_many_held_out_numbers_is_a_clear_error():
    # 0..999: bands of 10, 90 (whole) and 900 (at most 90 held out): at most 190 per split.
    assert len(numbers.split_numbers({"test": 190}, 999, seed=0)["test"]) == 190
    with pytest.raises(DataError, match="cannot draw 191 distinct numbers for split 'test'"):
        numbers.split_numbers({"train": 10, "test": 191}, 999, seed=0)


def test_exact_match_by_band():
    bands = numbers.exact_match_by_band([1, 2, 2, 6, 6, 6], [True, True, False, True, True, False])
    assert bands == {1: (1, 1.0), 2: (2, 0.5), 6: (3, 2 / 3)}
