"""The embedded default corpus: numbers written as words, e.g. English -> German.

"four hundred and twenty-one thousand and seven" -> "vierhunderteinundzwanzigtausendsieben".
German puts units before tens ("einundzwanzig" = one-and-twenty), so a model must learn real
reordering, yet the corpus is generated in seconds by num2words, with no download.

Which numbers go where (`split_numbers`):
- Magnitude bands by digit count: 0-9, 10-99, 100-999, ... up to `max_number`.
- Each split is a set of distinct numbers, spread as evenly as possible over the bands (so small
  and large magnitudes all appear although large ones are far more numerous).
- The validation and test splits take at most a tenth of each band, so training still sees most
  small numbers. No number is in two splits.
- Everything follows from the seed: the same arguments always give the same splits, in the same
  order.
"""

import math

import numpy as np
import tensorflow_datasets as tfds
from num2words import num2words

from data.errors import DataError

# Held-out splits (validation, test) take at most this fraction of each magnitude band.
HELD_OUT_FRACTION_PER_BAND = 0.1


def magnitude_bands(max_number: int) -> list[tuple[int, int]]:
    """Inclusive (low, high) ranges by digit count: (0, 9), (10, 99), ..., (10**k, max_number)."""
    bands, low = [], 0
    while low <= max_number:
        high = min(max(9, low * 10 - 1), max_number)
        bands.append((low, high))
        low = high + 1
    return bands


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


def split_numbers(sizes: dict[str, int], max_number: int, seed: int) -> dict[str, np.ndarray]:
    """Draws disjoint sets of numbers in [0, max_number] for each split (see module docstring).

    `sizes` maps split name to size; 'train' is filled last from what the others left.
    Returns split name -> int64 array of distinct numbers in random order.
    """
    bands = magnitude_bands(max_number)
    band_sizes = [high - low + 1 for low, high in bands]
    held_out_cap = [max(1, math.floor(HELD_OUT_FRACTION_PER_BAND * s)) for s in band_sizes]
    order = [name for name in sizes if name != "train"] + ["train"] * ("train" in sizes)
    left = list(band_sizes)
    counts = {}  # split name -> numbers drawn per band
    for name in order:
        caps = (
            left
            if name == "train"
            else [min(c, n) for c, n in zip(held_out_cap, left, strict=True)]
        )
        counts[name] = _spread(sizes[name], caps)
        if sum(counts[name]) < sizes[name]:
            raise DataError(
                f"numbers corpus: cannot draw {sizes[name]} distinct numbers for split '{name}' "
                f"from 0..{max_number} (at most {sum(caps)} left); lower data.numbers_*_size or "
                "raise data.numbers_max"
            )
        left = [n - c for n, c in zip(left, counts[name], strict=True)]

    rng = np.random.default_rng(seed)
    per_split = {name: [] for name in order}
    for band, (low, high) in enumerate(bands):
        needed = sum(counts[name][band] for name in order)
        drawn = low + rng.choice(high - low + 1, size=needed, replace=False)
        start = 0
        for name in order:
            per_split[name].append(drawn[start : start + counts[name][band]])
            start += counts[name][band]
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

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
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
        for i, number in enumerate(numbers):
            yield (
                i,
                {
                    cfg.source_lang: number_words(number, cfg.source_lang),
                    cfg.target_lang: number_words(number, cfg.target_lang),
                },
            )


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
