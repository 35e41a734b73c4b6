"""Your own parallel corpus: one plain-text file per split and language, lines aligned.

Layout: `DIR/SPLIT.LANG` or `DIR/SPLIT.LANG.gz`, e.g. Multi30k's `train.en.gz` / `train.de.gz`;
line i of the source file translates line i of the target file. Files are UTF-8. Surrounding
whitespace is stripped; a line pair where either side is empty is dropped and counted.

The files become a TFDS dataset (`TextFilesTranslation`) whose config name carries a fingerprint
of the files (path, size, modification time), so a changed file gets prepared again. This
module registers the 'text_files' source (data/registry.py).
"""

import gzip
import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from data.errors import DataError
from data.generated import GeneratedSource
from data.registry import register


def find_split_file(directory: str, split: str, lang: str) -> Path:
    """`DIR/SPLIT.LANG` or `DIR/SPLIT.LANG.gz` (exactly one must exist and be non-empty)."""
    plain = Path(directory) / f"{split}.{lang}"
    gzipped = Path(directory) / f"{split}.{lang}.gz"
    found = [p for p in (plain, gzipped) if p.is_file()]
    if not found:
        raise DataError(
            f"missing file: neither {plain} nor {gzipped} exists (data.dir={directory})"
        )
    if len(found) == 2:
        raise DataError(f"both {plain} and {gzipped} exist; keep only one of them")
    if found[0].stat().st_size == 0:
        raise DataError(f"empty file: {found[0]}")
    return found[0]


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decoded_lines(path: Path) -> Iterator[str]:
    """The lines of `path` as text, without surrounding whitespace; invalid UTF-8 is an error."""
    try:
        with _open_binary(path) as f:
            for line_number, raw in enumerate(f, start=1):
                try:
                    yield raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{line_number}: invalid UTF-8 (byte {e.start}: {e.reason}); "
                        "convert the file to UTF-8"
                    ) from None
    except (OSError, EOFError) as e:  # e.g. a truncated or non-gzip .gz file
        raise DataError(f"cannot read {path}: {e}") from None


def _count_lines(path: Path) -> int:
    with _open_binary(path) as f:
        return sum(1 for _ in f)


class LineCounts:
    """How many line pairs a file pair had, and how many were dropped as empty."""

    def __init__(self) -> None:
        self.lines = 0
        self.empty = 0


def read_parallel_lines(
    source_path: Path, target_path: Path, counts: LineCounts | None = None
) -> Iterator[tuple[str, str]]:
    """Yields the non-empty (source, target) line pairs in file order, checking the files.

    Raises DataError on misaligned line counts (naming both files and counts), invalid UTF-8
    (file and line) or a file pair without any non-empty pair. Fills `counts` as it goes.
    """
    counts = counts if counts is not None else LineCounts()
    pairs = itertools.zip_longest(_decoded_lines(source_path), _decoded_lines(target_path))
    for source, target in pairs:
        if source is None or target is None:
            raise DataError(
                f"misaligned files: {source_path} has {_count_lines(source_path)} lines but "
                f"{target_path} has {_count_lines(target_path)}; line i of one must translate "
                "line i of the other"
            )
        counts.lines += 1
        if not source or not target:
            counts.empty += 1
            continue
        yield source, target
    if counts.lines == counts.empty:
        raise DataError(f"empty corpus: {source_path} and {target_path} have no non-empty pair")


def fingerprint(paths: list[Path]) -> str:
    """A short hash of the files' absolute paths, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files make which split; the config name carries the files' fingerprint."""

    def __init__(self, *, source_lang: str, target_lang: str, files: dict[str, tuple[Path, Path]]):
        every_path = [path for pair in files.values() for path in pair]
        name = f"{source_lang}-{target_lang}_{fingerprint(every_path)}"
        super().__init__(name=name, version=TextFilesTranslation.VERSION)
        self.source_lang, self.target_lang, self.files = source_lang, target_lang, files


def text_files_config(data_config) -> TextFilesConfig:
    """Finds the files of the configured splits in `data.dir` (errors if any is missing)."""
    if not data_config.dir:
        raise DataError("data.source='text_files' needs data.dir, the folder of SPLIT.LANG files")
    if not os.path.isdir(data_config.dir):
        raise DataError(f"data.dir={data_config.dir} is not a directory")
    splits = [data_config.train_split, data_config.eval_split, data_config.test_split]
    files = {
        split: (
            find_split_file(data_config.dir, split, data_config.source_lang),
            find_split_file(data_config.dir, split, data_config.target_lang),
        )
        for split in dict.fromkeys(s for s in splits if s)
    }
    return TextFilesConfig(
        source_lang=data_config.source_lang, target_lang=data_config.target_lang, files=files
    )


# TFDS's shard writer keeps every example of a shard in memory until the shard is written (it
# tees the stream to count it), so bounded shards bound the memory a large corpus takes.
EXAMPLES_PER_SHARD = 100_000


class TextFilesTranslation(tfds.core.ShardBasedBuilder, skip_registration=True):
    """TFDS builder of a parallel text corpus; one split per configured file pair.

    Records keep file order, written shard after shard from one pass over the files: a
    ShardBasedBuilder streams to disk, where a GeneratorBasedBuilder would hold a split in
    memory (and spill it through TensorFlow beyond 1 GB). After `download_and_prepare`,
    `line_counts` holds each split's `LineCounts` (lines read, empty pairs dropped).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    # No download checksums live next to this code. (TFDS's own lookup of that folder needs the
    # optional `importlib_resources` package for builders defined inside a package.)
    code_path = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.line_counts: dict[str, LineCounts] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="A parallel corpus read from aligned plain-text files.",
            features=tfds.features.Translation(languages=(cfg.source_lang, cfg.target_lang)),
            disable_shuffling=True,
        )

    def _shard_iterators_per_split(self, dl_manager):
        return {split: self._shard_generators(split) for split in self.builder_config.files}

    def _shard_generators(self, split: str) -> list:
        """One generator per shard of EXAMPLES_PER_SHARD pairs (the last takes the rest),
        reading one shared pass over the files: TFDS calls them in order, one at a time."""
        cfg = self.builder_config
        source_path, target_path = cfg.files[split]
        counts = self.line_counts[split] = LineCounts()
        pairs = enumerate(read_parallel_lines(source_path, target_path, counts))
        num_shards = max(1, -(-_count_lines(source_path) // EXAMPLES_PER_SHARD))

        def shard(size: int | None):
            for key, (source, target) in itertools.islice(pairs, size):
                yield key, {cfg.source_lang: source, cfg.target_lang: target}

        sizes = [EXAMPLES_PER_SHARD] * (num_shards - 1) + [None]
        return [lambda size=size: shard(size) for size in sizes]


SOURCE = register(GeneratedSource("text_files", TextFilesTranslation, text_files_config))
