"""A CTranslate2 export (export.py's output directory) as the server's decoder.

The directory holds CTranslate2's model files, `spm.model` (the sentencepiece model the
checkpoint trained with) and `export.json` (what the export records: the longest input and
decoder positions, the checkpoint's config.decode and, where known, the languages); the
server's flags override what it says. Sentences are tokenized to pieces (CTranslate2 appends
the source EOS itself), grouped by the JAX backend's power-of-two length buckets, and
translated with `Translator.translate_batch`. The output limit is the bucket's
(bucket + max_extra_length, capped at the positions the model has), so a sentence's
translation does not depend on its batch-mates. CTranslate2's length penalty is
score / length^alpha, not the GNMT penalty of decoding/beam_search.py: beam outputs may differ
from the JAX backend's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from data.special_tokens import PAD_ID
from decoding.settings import DecodeSettings
from decoding.translator import bucket_length
from serving.backend import Decoded, Encoded

SPM_FILE = "spm.model"
INFO_FILE = "export.json"


def export_info(directory: Path) -> dict[str, Any]:
    """The export's export.json ({} if it has none)."""
    path = directory / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class CTranslate2Backend:
    """`ctranslate2.Translator` over an exported directory, on the CPU."""

    def __init__(
        self,
        directory: str | Path,
        *,
        source_lang: str | None = None,
        target_lang: str | None = None,
        max_input_length: int | None = None,
        max_rows: int = 32,
        threads: int = 0,
        **decode_overrides: Any,
    ) -> None:
        """Decode settings are export.json's `decode` (the checkpoint's config.decode) with
        `decode_overrides` (DecodeSettings fields; None: not given); languages and the
        maximum input length come from export.json unless given."""
        import ctranslate2  # optional: only this backend needs it

        directory = Path(directory)
        if not (directory / "model.bin").is_file() or not (directory / SPM_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} is not a CTranslate2 export (model.bin and {SPM_FILE}): write one "
                "with `python export.py --workdir=DIR --output=OUT`."
            )
        info = export_info(directory)
        self.settings = DecodeSettings.from_config(info.get("decode", {}), **decode_overrides)
        self.source_lang = source_lang or info.get("source_lang")
        self.target_lang = target_lang or info.get("target_lang")
        if not (self.source_lang and self.target_lang):
            raise ValueError(
                f"{directory / INFO_FILE} names no languages: pass --source_lang and --target_lang."
            )
        self.max_length = info.get("max_length")  # positions the model has; None: unknown
        self.max_input_length = max_input_length or info.get("max_input_length")
        if not self.max_input_length:
            raise ValueError(f"{directory / INFO_FILE} is missing: pass --max_input_length.")
        self.max_rows = max_rows
        self.translator = ctranslate2.Translator(
            str(directory), device="cpu", intra_threads=threads or os.cpu_count() or 1
        )
        self.tokenizer = spm.SentencePieceProcessor(model_file=str(directory / SPM_FILE))
        self.description = (
            f"CTranslate2 {ctranslate2.__version__}: {directory}; {self.settings.strategy} "
            f"search, beam {self.settings.beam_size}, length_penalty {self.settings.alpha}, "
            f"outputs up to bucket + {self.settings.max_extra_length} subwords, inputs up to "
            f"{self.max_input_length} subwords"
        )

    def encode(self, text: str) -> Encoded:
        pieces = self.tokenizer.encode(text, out_type=str)
        limit = self.max_input_length - 1  # CTranslate2 appends EOS
        bucket = bucket_length(min(len(pieces), limit) + 1, self.max_input_length)
        return Encoded(tuple(pieces[:limit]), bucket, len(pieces) > limit)

    def decode_batch(self, batch: Sequence[Encoded]) -> list[Decoded]:
        """Each bucket of the batch is translated on its own: the output limit is the
        bucket's, so a sentence decodes as it would alone."""
        decoded: list[Decoded | None] = [None] * len(batch)
        for bucket in sorted({e.bucket for e in batch}):
            rows = [i for i, e in enumerate(batch) if e.bucket == bucket]
            for i, result in zip(rows, self._decode_bucket([batch[i] for i in rows]), strict=True):
                decoded[i] = result
        return decoded

    def _decode_bucket(self, batch: Sequence[Encoded]) -> list[Decoded]:
        max_decoding_length = batch[0].bucket + self.settings.max_extra_length
        if self.max_length is not None:
            max_decoding_length = min(max_decoding_length, self.max_length)
        results = self.translator.translate_batch(
            [list(e.tokens) for e in batch],
            beam_size=self.settings.beam_size,
            length_penalty=self.settings.alpha,
            max_decoding_length=max_decoding_length,
            max_batch_size=self.max_rows,
            min_decoding_length=0,  # EOS may come first, as in our searches
            suppress_sequences=[[self.tokenizer.id_to_piece(PAD_ID)]],  # never an output
        )
        decoded = []
        for result in results:
            pieces = result.hypotheses[0]
            decoded.append(Decoded(self.tokenizer.decode(pieces), len(pieces)))
        return decoded

    def warm_up(self) -> None:
        """One short translation (nothing compiles per shape in CTranslate2)."""
        self.decode_batch([self.encode("a")])
