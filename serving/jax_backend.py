"""The JAX decoder of a restored checkpoint, for the server (a serving.backend.Backend).

A batch of sentences is padded to its longest source-length bucket and to the next
batch size of `row_sizes` (powers of two up to max_rows), then decoded by
decoding.translate_tokens in one jitted call; padding rows decode nothing. So there is one
compilation per (bucket, batch size), all done by `warm_up`, and a sentence's translation
does not depend on its batch-mates: rows are independent in greedy and beam search.
Tokenizing, truncation and bucket lengths are decoding/translator.py's, as in translate.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import jax
import numpy as np

from decoding import translate_tokens
from decoding.settings import DecodeSettings
from decoding.translator import bucket_length, encode_texts, output_ids
from serving.backend import Decoded, Encoded
from training.restoring import Restored


def row_sizes(max_rows: int) -> list[int]:
    """The batch sizes decoding compiles for: 1, 2, 4, ... below max_rows, and max_rows."""
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    return sizes + [max_rows]


class JaxBackend:
    """Greedy or beam search with a restored model (parameters on one device or a mesh)."""

    def __init__(
        self,
        restored: Restored,
        settings: DecodeSettings,
        *,
        max_input_length: int,
        max_rows: int,
    ) -> None:
        """Decodes with `settings` (its batch_size is not used: batches have 1..max_rows
        sentences)."""
        model_max = restored.model.config.max_length
        if not 2 <= max_input_length <= model_max:
            raise ValueError(
                f"max_input_length={max_input_length} must be between 2 and the model's "
                f"max_length={model_max}."
            )
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}.")
        self.restored, self.settings = restored, settings
        self.max_input_length, self.max_rows = max_input_length, max_rows
        self.source_lang = restored.config.data.source_lang
        self.target_lang = restored.config.data.target_lang
        steps = restored.steps
        which = f"step {steps[-1]}" if len(steps) == 1 else f"the mean of steps {steps}"
        self.description = (
            f"JAX: {which} of {restored.checkpoints_dir}; {settings.strategy} search, beam "
            f"{settings.beam_size}, alpha {settings.alpha}, outputs up to input + "
            f"{settings.max_extra_length} subwords, inputs up to {max_input_length} subwords"
        )

    def buckets(self) -> list[int]:
        """Every padded source length a sentence can get."""
        lengths = range(1, self.max_input_length + 1)
        return sorted({bucket_length(n, self.max_input_length) for n in lengths})

    def encode(self, text: str) -> Encoded:
        [ids], truncated = encode_texts(self.restored.tokenizer, [text], self.max_input_length)
        return Encoded(tuple(ids), bucket_length(len(ids), self.max_input_length), truncated > 0)

    def _decode_ids(self, rows: Sequence[Sequence[int]], bucket: int, num_rows: int) -> np.ndarray:
        """Token rows (at most `bucket` long) -> outputs [num_rows, max_decode_length]."""
        model_max = self.restored.model.config.max_length
        inputs = np.zeros((num_rows, bucket), np.int32)  # padding rows stay empty
        max_lengths = np.zeros((num_rows,), np.int32)  # and decode nothing
        for row, ids in enumerate(rows):
            inputs[row, : len(ids)] = ids
            max_lengths[row] = min(len(ids) + self.settings.max_extra_length, model_max)
        outputs = translate_tokens(
            self.restored.model,
            self.restored.params,
            inputs,
            beam_size=self.settings.beam_size,
            alpha=self.settings.alpha,
            max_decode_length=min(bucket + self.settings.max_extra_length, model_max),
            max_lengths=max_lengths,
            early_stopping=self.settings.early_stopping,
        )
        return np.asarray(jax.device_get(outputs))

    def decode_batch(self, batch: Sequence[Encoded]) -> list[Decoded]:
        if not 1 <= len(batch) <= self.max_rows:
            raise ValueError(f"decode_batch takes 1..{self.max_rows} sentences.")
        num_rows = next(size for size in row_sizes(self.max_rows) if size >= len(batch))
        bucket = max(e.bucket for e in batch)  # each row's output limit is its own length's
        outputs = self._decode_ids([e.tokens for e in batch], bucket, num_rows)
        decoded = []
        for row in range(len(batch)):
            ids = output_ids(outputs[row])
            decoded.append(Decoded(self.restored.tokenizer.decode(ids), len(ids)))
        return decoded

    def warm_up(self) -> None:
        """Compiles decoding for every (bucket, batch size), logging progress and an ETA."""
        shapes = [(b, rows) for b in self.buckets() for rows in row_sizes(self.max_rows)]
        start = time.perf_counter()
        for done, (bucket, num_rows) in enumerate(shapes, start=1):
            self._decode_ids([], bucket, num_rows)
            elapsed = time.perf_counter() - start
            logging.info(
                "Compiled the decoder for batches of %d x %d subwords (%d/%d) in %.0f s; "
                "about %.0f s left.",
                num_rows,
                bucket,
                done,
                len(shapes),
                elapsed,
                elapsed / done * (len(shapes) - done),
            )
