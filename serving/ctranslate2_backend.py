"""A CTranslate2 export (export.py's output directory) as the server's decoder.

The directory holds CTranslate2's model files and `spm.model`, the sentencepiece model the
checkpoint trained with. Sentences are tokenized to pieces with it (CTranslate2 appends the
source EOS itself, as the export's config says), grouped by the same power-of-two length
buckets as the JAX backend, and translated with `Translator.translate_batch`; the output
length limit is the bucket's (bucket + max_extra_length), so a sentence's translation does
not depend on its batch-mates. Note: CTranslate2's length penalty is score / length^alpha,
not the GNMT penalty of decoding/beam_search.py, so beam outputs may differ from JAX's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from decoding.translator import bucket_length
from serving.backend import Decoded, Encoded

SPM_FILE = "spm.model"


class CTranslate2Backend:
    """`ctranslate2.Translator` over an exported directory, on the CPU."""

    def __init__(
        self,
        directory: str | Path,
        *,
        source_lang: str,
        target_lang: str,
        beam_size: int,
        alpha: float,
        max_extra_length: int,
        max_input_length: int,
        max_rows: int,
        threads: int = 0,
    ) -> None:
        import ctranslate2  # optional: only this backend needs it

        directory = Path(directory)
        if not (directory / "model.bin").is_file() or not (directory / SPM_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} is not a CTranslate2 export (model.bin and {SPM_FILE}): write one "
                "with `python export.py --workdir=DIR --output=OUT`."
            )
        self.translator = ctranslate2.Translator(
            str(directory), device="cpu", intra_threads=threads or os.cpu_count() or 1
        )
        self.tokenizer = spm.SentencePieceProcessor(model_file=str(directory / SPM_FILE))
        self.source_lang, self.target_lang = source_lang, target_lang
        self.beam_size, self.alpha = beam_size, alpha
        self.max_extra_length, self.max_input_length = max_extra_length, max_input_length
        self.max_rows = max_rows
        self.description = (
            f"CTranslate2 {ctranslate2.__version__}: {directory}, beam_size {beam_size}, "
            f"length_penalty {alpha}, max_extra_length {max_extra_length}, "
            f"max_input_length {max_input_length}"
        )

    def encode(self, text: str) -> Encoded:
        pieces = self.tokenizer.encode(text, out_type=str)
        limit = self.max_input_length - 1  # CTranslate2 appends EOS
        truncated = len(pieces) > limit
        pieces = pieces[:limit]
        return Encoded(
            tuple(pieces), bucket_length(len(pieces) + 1, self.max_input_length), truncated
        )

    def decode_batch(self, batch: Sequence[Encoded]) -> list[Decoded]:
        results = self.translator.translate_batch(
            [list(e.tokens) for e in batch],
            beam_size=self.beam_size,
            length_penalty=self.alpha,
            max_decoding_length=batch[0].bucket + self.max_extra_length,
            max_batch_size=self.max_rows,
        )
        decoded = []
        for result in results:
            pieces = result.hypotheses[0]
            decoded.append(Decoded(self.tokenizer.decode(pieces), len(pieces)))
        return decoded

    def warm_up(self) -> None:
        """One short translation (loads the weights into memory; nothing compiles per shape)."""
        self.decode_batch([self.encode("a")])
