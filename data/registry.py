"""The registry of corpus sources: `config.data.source` names one of them.

A source turns a data configuration into a prepared TFDS dataset builder (array_record files,
read without TensorFlow). Adding one is one module: subclass `Source`, call `register`, and list
the module in `data/sources.py`'s `BUILT_IN`. An unknown name is a one-line error listing the
known ones.
"""

import abc

import tensorflow_datasets as tfds

from data.errors import DataError

_SOURCES: dict[str, "Source"] = {}


class Source(abc.ABC):
    """One kind of corpus: how it is prepared and opened."""

    name: str

    @abc.abstractmethod
    def builder(self, data_config) -> tfds.core.DatasetBuilder:
        """The corpus's builder, prepared first if needed; its `data_dir` names the prepared
        data (it changes whenever the data does, which keys the token ids in data/token_ids.py)."""

    def line_counts(self, data_config) -> dict[str, dict[str, int]]:
        """Per split, {'lines', 'empty_dropped'} where the source reads lines; else {}."""
        return {}


def register(source: Source) -> Source:
    """Makes `source` available as `config.data.source = source.name`."""
    if source.name in _SOURCES:
        raise ValueError(f"a corpus source named '{source.name}' is already registered")
    _SOURCES[source.name] = source
    return source


def names() -> list[str]:
    return sorted(_SOURCES)


def get(name: str) -> Source:
    """The registered source called `name`; a DataError listing the known ones otherwise."""
    if name not in _SOURCES:
        raise DataError(f"data.source='{name}' is unknown; known sources: {', '.join(names())}")
    return _SOURCES[name]
