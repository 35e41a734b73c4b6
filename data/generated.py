"""Sources whose TFDS dataset this project builds itself (generated, or read from text files).

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
from collections.abc import Callable
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

from data.registry import Source

# Written next to a prepared dataset: per split, lines read and empty line pairs dropped.
LINE_COUNTS_FILE = "line_counts.json"


class GeneratedSource(Source):
    """A TFDS builder class and the function giving its BuilderConfig for a data
    config; prepared into `data.prepared_dir/BUILDER/CONFIG/VERSION`. If the builder instance
    has a `line_counts` dict ({split: object with .lines, .empty}), it is saved too."""

    def __init__(
        self,
        name: str,
        builder_cls: type[tfds.core.DatasetBuilder],
        builder_config: Callable[..., tfds.core.BuilderConfig],
    ):
        self.name, self.builder_cls, self.builder_config = name, builder_cls, builder_config

    def prepared_dir(self, data_config) -> tuple[tfds.core.BuilderConfig, Path]:
        config = self.builder_config(data_config)
        name, version = self.builder_cls.name, str(self.builder_cls.VERSION)
        return config, Path(data_config.prepared_dir) / name / config.name / version

    def prepare(self, data_config) -> Path:
        """Builds the dataset unless already there; returns its folder."""
        builder_config, final_dir = self.prepared_dir(data_config)
        if (final_dir / "dataset_info.json").is_file():
            return final_dir
        logging.info("Preparing the %s corpus into %s", self.name, final_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".prepare-", dir=final_dir.parent))
        try:
            builder = self.builder_cls(
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

    def builder(self, data_config) -> tfds.core.DatasetBuilder:
        return tfds.builder_from_directory(str(self.prepare(data_config)))

    def line_counts(self, data_config) -> dict[str, dict[str, int]]:
        return json.loads((self.prepare(data_config) / LINE_COUNTS_FILE).read_text())
