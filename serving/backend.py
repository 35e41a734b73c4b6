"""The decoder behind the server, as a small interface: the JAX translator of a restored
checkpoint (serving/jax_backend.py) or a CTranslate2 export (serving/ctranslate2_backend.py).

The server tokenizes each sentence with `encode` on arrival, queues it under its `bucket`
(sentences of one bucket decode together, with shorter ones filling spare rows), and hands
groups of at most `max_rows` sentences to `decode_batch`, from the decoder worker thread
only."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One sentence, tokenized for the backend."""

    tokens: tuple  # token ids (JAX) or sentencepiece pieces (CTranslate2), EOS as the backend wants
    bucket: int  # the padded source length; a batch is padded to its longest bucket
    truncated: bool  # longer than the backend's maximum input length: its end was cut


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One translation."""

    text: str
    num_tokens: int  # output subwords, EOS excluded


class Backend(Protocol):
    source_lang: str  # the language code the model translates from...
    target_lang: str  # ...and into
    max_rows: int  # decode_batch takes at most this many sentences
    description: str  # one line for the log: what is served and how it decodes

    def encode(self, text: str) -> Encoded:
        """`text` (one non-blank line) tokenized, truncated to the maximum input length."""

    def decode_batch(self, batch: Sequence[Encoded]) -> list[Decoded]:
        """Translations of 1..max_rows sentences (of any buckets), in order. Each translation
        does not depend on the others in the batch (beyond float rounding)."""

    def warm_up(self) -> None:
        """Compiles or loads whatever decoding needs for every bucket and batch size, so that
        no request waits for it."""
