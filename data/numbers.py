"""The embedded default corpus: numbers written as words, e.g. English -> German.

"four hundred and twenty-one thousand and seven" -> "vierhunderteinundzwanzigtausendsieben".
German puts units before tens ("einundzwanzig" = one-and-twenty), so a model must learn real
reordering, yet the corpus is generated in seconds by num2words, with no download.

Which numbers go where (`split_numbers`), by magnitude band (digit count: 0-9, 10-99, 100-999,
... up to `max_number`):
- Training gives every band the same share of its examples, so the ten one-digit numbers are
  as present as the 900,000 six-digit ones: a band with fewer numbers than its share repeats
  each of them equally often, a larger band gives distinct numbers drawn at random.
- The validation and test splits spread their examples as evenly as possible over the bands,
  so every band is measured. A band of fewer than `MIN_BAND_SIZE_TO_HOLD_OUT` numbers (0-9,
  10-99) is too small to hold numbers out of training, as a user expects every one of them to
  translate: training has all of them, and a held-out split takes the whole band, so for these
  bands it measures recall. Larger bands give each held-out split at most a tenth of their
  numbers, never in training nor in another held-out split: there it measures generalisation.
- Everything follows from the seed: the same arguments always give the same splits, in the same
  order.
"""

import collections
import math
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from num2words import num2words

from data.errors import DataError

# Held-out splits (validation, test) take at most this fraction of each large magnitude band.
HELD_OUT_FRACTION_PER_BAND = 0.1
# A band with fewer numbers is trained on completely (and held-out splits repeat it whole).
MIN_BAND_SIZE_TO_HOLD_OUT = 100


def magnitude_bands(max_number: int) -> list[tuple[int, int]]:
    """Inclusive (low, high) ranges by digit count: (0, 9), (10, 99), ..., (10**k, max_number)."""
    bands, low = [], 0
    while low <= max_number:
        high = min(max(9, low * 10 - 1), max_number)
        bands.append((low, high))
        low = high + 1
    return bands


def digit_count(number: int) -> int:
    """The magnitude band of `number`: 1 for 0-9, 2 for 10-99, ..."""
    return len(str(int(number)))


def exact_match_by_band(
    digit_counts: Sequence[int], correct: Sequence[bool]
) -> dict[int, tuple[int, float]]:
    """{digit count: (examples, share exactly right)} over the examples of each band."""
    totals, right = collections.Counter(digit_counts), collections.Counter()
    for digits, ok in zip(digit_counts, correct, strict=True):
        right[digits] += ok
    return {digits: (totals[digits], right[digits] / totals[digits]) for digits in sorted(totals)}


def _spread(total: int, capacities: list[int]) -> list[int]:
    """Splits `total` over bins as evenly as possible without exceeding any capacity."""
    counts = [0] * len(capacities)
    open_bins = [i for i, c in enumerate(capacities) if c > 0]
    remaining = total
    while remaining > 0 and open_bins:
        share, extra = divmod(remaining, len(open_bins))
        for rank, i in enumerate(open_bins):
            counts[i] += min(share + (rank < extra), capacities[i] - counts[i])
        remaining = total - sum(counts)
        open_bins = [i for i in open_bins if counts[i] < capacities[i]]
    return counts


def _held_out_counts(sizes: dict[str, int], max_number: int) -> dict[str, list[int]]:
    """Numbers per band of every held-out split (every name but 'train')."""
    band_sizes = [high - low + 1 for low, high in magnitude_bands(max_number)]
    small = [n < MIN_BAND_SIZE_TO_HOLD_OUT for n in band_sizes]
    left = list(band_sizes)  # numbers of each large band that no held-out split has yet
    counts = {}
    for name in (name for name in sizes if name != "train"):
        caps = [
            n if is_small else min(rest, math.floor(HELD_OUT_FRACTION_PER_BAND * n))
            for n, rest, is_small in zip(band_sizes, left, small, strict=True)
        ]
        counts[name] = _spread(sizes[name], caps)
        if sum(counts[name]) < sizes[name]:
            raise DataError(
                f"numbers corpus: cannot draw {sizes[name]} distinct numbers for split "
                f"'{name}' from 0..{max_number} (at most {sum(caps)} left); lower "
                "data.numbers_eval_size / numbers_test_size or raise data.numbers_max"
            )
        left = [
            rest if is_small else rest - c
            for rest, c, is_small in zip(left, counts[name], small, strict=True)
        ]
    return counts


def _repeat_evenly(numbers: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` draws from `numbers`: distinct ones if there are enough, else each number
    count // len(numbers) times and a random distinct few once more."""
    repeats, extra = divmod(count, len(numbers))
    return np.concatenate([np.tile(numbers, repeats), rng.choice(numbers, extra, replace=False)])


def split_numbers(sizes: dict[str, int], max_number: int, seed: int) -> dict[str, np.ndarray]:
    """The numbers of each split (see module docstring): split name -> int64 array in random
    order. 'train' holds sizes['train'] examples, repeating the numbers of small bands; the
    other splits hold distinct numbers."""
    bands = magnitude_bands(max_number)
    band_sizes = [high - low + 1 for low, high in bands]
    held_out = _held_out_counts(sizes, max_number)
    rng = np.random.default_rng(seed)
    per_split = {name: [] for name in sizes}
    trainable = [  # numbers of each band left for training
        n if n < MIN_BAND_SIZE_TO_HOLD_OUT else n - sum(c[band] for c in held_out.values())
        for band, n in enumerate(band_sizes)
    ]
    train_size = sizes.get("train", 0)
    train_share = _spread(train_size, [train_size if n else 0 for n in trainable])
    for band, (low, high) in enumerate(bands):
        band_numbers = low + rng.permutation(high - low + 1)
        start = 0
        for name, counts in held_out.items():
            if band_sizes[band] < MIN_BAND_SIZE_TO_HOLD_OUT:  # the whole band, in random order
                per_split[name].append(rng.permutation(band_numbers)[: counts[band]])
            else:
                per_split[name].append(band_numbers[start : start + counts[band]])
                start += counts[band]
        if "train" in sizes:
            per_split["train"].append(_repeat_evenly(band_numbers[start:], train_share[band], rng))
    return {name: rng.permutation(np.concatenate(parts)) for name, parts in per_split.items()}


def number_words(number: int, lang: str) -> str:
    """`number` written out in language `lang` (any num2words language code)."""
    try:
        return num2words(int(number), lang=lang)
    except NotImplementedError as e:
        raise DataError(
            f"numbers corpus: num2words has no language '{lang}'; use a num2words code such as "
            "en, de, fr, es, it, nl"
        ) from e


class NumbersTranslation(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of the numbers corpus; splits 'train', 'validation', 'test'.

    Build with `NumbersTranslation(config=numbers_config(...), data_dir=...,
    file_format='array_record').download_and_prepare()`. Each example is
    {source_lang: words, target_lang: words}; records keep generation order.
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First version.",
        "2.0.0": "Training samples every magnitude band equally, repeating small bands.",
    }
    # No download checksums live next to this code. (TFDS's own lookup of that folder needs the
    # optional `importlib_resources` package for builders defined inside a package.)
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="Numbers as words, generated with num2words.",
            features=tfds.features.Translation(languages=(cfg.source_lang, cfg.target_lang)),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        numbers = split_numbers(cfg.sizes, cfg.max_number, cfg.seed)
        return {name: self._generate_examples(numbers[name]) for name in cfg.sizes}

    def _generate_examples(self, numbers: np.ndarray):
        cfg = self.builder_config
        examples = {}  # number -> example: training repeats small numbers many times
        for i, number in enumerate(numbers.tolist()):
            if number not in examples:
                examples[number] = {
                    cfg.source_lang: number_words(number, cfg.source_lang),
                    cfg.target_lang: number_words(number, cfg.target_lang),
                }
            yield i, examples[number]


class NumbersConfig(tfds.core.BuilderConfig):
    """Parameters of one numbers corpus; the config name encodes all of them."""

    def __init__(
        self,
        *,
        source_lang: str,
        target_lang: str,
        sizes: dict[str, int],
        max_number: int,
        seed: int,
    ):
        size_part = "_".join(f"{name}{size}" for name, size in sizes.items())
        name = f"{source_lang}-{target_lang}_{size_part}_max{max_number}_seed{seed}"
        super().__init__(name=name, version=NumbersTranslation.VERSION)
        self.source_lang, self.target_lang = source_lang, target_lang
        self.sizes, self.max_number, self.seed = dict(sizes), max_number, seed


def numbers_of_split(data_config, split: str) -> np.ndarray:
    """The numbers of `split` ('train', 'validation' or 'test') in record order: example i of
    the prepared split is `numbers_of_split(...)[i]` written out."""
    cfg = numbers_config(data_config)
    if split not in cfg.sizes:
        raise DataError(f"numbers corpus: no split '{split}'; choose one of {list(cfg.sizes)}")
    return split_numbers(cfg.sizes, cfg.max_number, cfg.seed)[split]


def numbers_config(data_config) -> NumbersConfig:
    """The builder config for `config.data` (languages, split sizes, range, seed)."""
    if data_config.source_lang == data_config.target_lang:
        raise DataError(
            f"numbers corpus: source_lang and target_lang are both '{data_config.source_lang}'"
        )
    for lang in (data_config.source_lang, data_config.target_lang):
        number_words(0, lang)  # fails early, with a clear message, on an unknown language
    return NumbersConfig(
        source_lang=data_config.source_lang,
        target_lang=data_config.target_lang,
        sizes={
            "train": data_config.numbers_train_size,
            "validation": data_config.numbers_eval_size,
            "test": data_config.numbers_test_size,
        },
        max_number=data_config.numbers_max,
        seed=data_config.numbers_seed,
    )
