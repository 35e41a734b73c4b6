"""Every corpus is a TFDS dataset in array_record format, read without TensorFlow.

`config.data.source` names a registered source (data/registry.py); the built-in ones:
- 'numbers': generated (data/numbers.py) into `data.prepared_dir`.
- 'text_files': your files in `data.dir` (data/text_files.py) prepared into `data.prepared_dir`.
- 'tfds': a dataset already built in `data.tfds_data_dir`, e.g. WMT14 (data/tfds_source.py).

Preparation is atomic and safe from several processes at once (data/generated.py), so every
process simply calls `prepare` (or any reader, which prepares if needed).
"""

import tensorflow_datasets as tfds

from data import numbers_source, registry, text_files, tfds_source
from data.errors import DataError

BUILT_IN = (numbers_source, text_files, tfds_source)  # imported for their registration


def builder(data_config) -> tfds.core.DatasetBuilder:
    """The configured corpus's builder, prepared first if needed."""
    return registry.get(data_config.source).builder(data_config)


def prepare(data_config) -> None:
    """Makes sure the configured corpus is available as array_record."""
    builder(data_config)


def open_split(data_config, split: str):
    """Random-access source of one split's records, {lang: utf-8 bytes}, in dataset order.

    Prepares the corpus first if needed. Supports len(), [i], __getitems__ and
    grain.MapDataset.source().
    """
    corpus = builder(data_config)
    if split not in corpus.info.splits:
        raise DataError(
            f"split '{split}' does not exist in this corpus (it has "
            f"{', '.join(sorted(corpus.info.splits))}); check data.train_split / eval_split / "
            "test_split"
        )
    return corpus.as_data_source(split=split)


def raw_examples(data_config, split: str) -> list[tuple[str, str]]:
    """The (source, target) sentences of `split`, in file / dataset order."""
    records = open_split(data_config, split)
    source_lang, target_lang = data_config.source_lang, data_config.target_lang
    return [
        (record[source_lang].decode("utf-8"), record[target_lang].decode("utf-8"))
        for record in records
    ]


def line_counts(data_config) -> dict[str, dict[str, int]]:
    """Split -> {'lines', 'empty_dropped'} for sources read from lines; {} for the others."""
    return registry.get(data_config.source).line_counts(data_config)
