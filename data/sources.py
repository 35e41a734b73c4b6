"""Every corpus is a TFDS dataset in array_record format, read without TensorFlow.

`config.data.source` picks one of three:
- 'numbers': generated (data/numbers.py) into `data.prepared_dir`.
- 'text_files': your files in `data.dir` (data/text_files.py) prepared into `data.prepared_dir`.
- 'tfds': a dataset already built in `data.tfds_data_dir`, e.g. WMT14 English-German. Build it
  once where the internet is reachable (`pip install tensorflow-datasets`; the WMT builders also
  need TensorFlow at build time, not here):

      tfds build wmt14_translate/de-en --file_format=array_record --data_dir=DIR

  then copy DIR along and set data.tfds_name='wmt14_translate/de-en', data.tfds_data_dir=DIR,
  data.source_lang='en', data.target_lang='de'. The direction always comes from source_lang and
  target_lang; TFDS's own "supervised keys" (de -> en for WMT) are never used.

Preparation is deterministic and atomic: the dataset is written into a private temporary folder
and renamed into place, so a failure leaves nothing half-written. Several processes may prepare
at once, on one shared or on separate file systems: each builds the same data, the first rename
wins and the others discard their copy. So every process simply calls `prepare` (or any reader,
which prepares if needed); no barrier is required.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from data import numbers, text_files
from data.errors import DataError

SOURCES = ("numbers", "text_files", "tfds")
# Written next to a prepared dataset: per split, lines read and empty line pairs dropped.
LINE_COUNTS_FILE = "line_counts.json"


def _builder_and_dir(data_config):
    """(builder instance, folder of its prepared version) for a 'numbers'/'text_files' source."""
    if data_config.source == "numbers":
        builder_cls, builder_config = (
            numbers.NumbersTranslation,
            numbers.numbers_config(data_config),
        )
    else:
        builder_cls = text_files.TextFilesTranslation
        builder_config = text_files.text_files_config(data_config)
    final_dir = (
        Path(data_config.prepared_dir)
        / builder_cls.name
        / builder_config.name
        / str(builder_cls.VERSION)
    )
    return builder_cls, builder_config, final_dir


def _prepare_generated(data_config) -> Path:
    """Builds a 'numbers' or 'text_files' dataset unless already there; returns its folder."""
    builder_cls, builder_config, final_dir = _builder_and_dir(data_config)
    if (final_dir / "dataset_info.json").is_file():
        return final_dir
    logging.info("Preparing the %s corpus into %s", data_config.source, final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".prepare-", dir=final_dir.parent))
    try:
        builder = builder_cls(
            config=builder_config, data_dir=str(scratch), file_format="array_record"
        )
        builder.download_and_prepare()
        built_dir = Path(builder.data_dir)
        counts = {
            split: {"lines": c.lines, "empty_dropped": c.empty}
            for split, c in getattr(builder, "line_counts", {}).items()
        }
        (built_dir / LINE_COUNTS_FILE).write_text(json.dumps(counts, indent=1))
        try:
            os.rename(built_dir, final_dir)
        except OSError:
            if not (final_dir / "dataset_info.json").is_file():
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final_dir


def _tfds_builder(data_config):
    """The builder of a prebuilt TFDS dataset, checked: built, and has both languages."""
    name, data_dir = data_config.tfds_name, data_config.tfds_data_dir or None
    build_hint = (
        f"build it where the internet is reachable with `tfds build {name} "
        f"--file_format=array_record{' --data_dir=' + data_dir if data_dir else ''}`"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"TFDS dataset '{name}' is unknown or not built in "
            f"{data_dir or 'the default TFDS data_dir'}; {build_hint}"
        ) from None
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset '{name}' is not built in {builder.data_dir}; {build_hint}")
    languages = sorted(builder.info.features.keys())
    for lang in (data_config.source_lang, data_config.target_lang):
        if lang not in languages:
            raise DataError(
                f"TFDS dataset '{name}' has no language '{lang}' (it has {', '.join(languages)}); "
                "set data.source_lang / data.target_lang"
            )
    return builder


def prepare(data_config) -> None:
    """Makes sure the configured corpus is available as array_record (see module docstring)."""
    if data_config.source not in SOURCES:
        raise DataError(f"data.source='{data_config.source}' is not one of {', '.join(SOURCES)}")
    if data_config.source == "tfds":
        _tfds_builder(data_config)
    else:
        _prepare_generated(data_config)


def _read_only_builder(data_config):
    if data_config.source not in SOURCES:
        raise DataError(f"data.source='{data_config.source}' is not one of {', '.join(SOURCES)}")
    if data_config.source == "tfds":
        return _tfds_builder(data_config)
    return tfds.builder_from_directory(str(_prepare_generated(data_config)))


def open_split(data_config, split: str):
    """Random-access source of one split's records, {lang: utf-8 bytes}, in dataset order.

    Prepares the corpus first if needed. Supports len(), [i] and grain.MapDataset.source().
    """
    builder = _read_only_builder(data_config)
    if split not in builder.info.splits:
        raise DataError(
            f"split '{split}' does not exist in this corpus (it has "
            f"{', '.join(sorted(builder.info.splits))}); check data.train_split / eval_split / "
            "test_split"
        )
    return builder.as_data_source(split=split)


def raw_examples(data_config, split: str) -> list[tuple[str, str]]:
    """The (source, target) sentences of `split`, in file / dataset order."""
    records = open_split(data_config, split)
    source_lang, target_lang = data_config.source_lang, data_config.target_lang
    return [
        (record[source_lang].decode("utf-8"), record[target_lang].decode("utf-8"))
        for record in records
    ]


def line_counts(data_config) -> dict[str, dict[str, int]]:
    """For 'text_files': split -> {'lines', 'empty_dropped'}; {} for other sources."""
    if data_config.source != "text_files":
        return {}
    path = _prepare_generated(data_config) / LINE_COUNTS_FILE
    return json.loads(path.read_text())
