"""Texts -> texts with an exported directory, as translate.py does it with the checkpoint.

    translator = ExportedTranslator("OUT")
    translator.translate(["A man is sleeping."])  # config.decode's search, or pass settings

Same tokenizer (OUT/spm.model), same truncation of long inputs (first tokens and EOS), blank
text -> "", sentences sorted by length and decoded `settings.batch_size` at a time, outputs up
to the input length + max_extra_length (per batch here, per sentence in ours) within the
model's positions. The search is CTranslate2's (exporting/options.py says what differs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import ctranslate2
import sentencepiece as spm

from data.special_tokens import PAD_ID
from decoding.settings import DecodeSettings
from exporting.export import EXPORT_INFO_FILE, TOKENIZER_FILE
from exporting.options import decoding_length, translate_options


class ExportedTranslator:
    """A CTranslate2 model directory written by export.py, with its tokenizer and settings.

    `device`, `compute_type`, `inter_threads` and `intra_threads` go to
    `ctranslate2.Translator` (compute_type 'default' runs the stored weight type, or the
    nearest the device supports)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        device: str = "cpu",
        compute_type: str = "default",
        inter_threads: int = 1,
        intra_threads: int = 0,
    ) -> None:
        directory = Path(directory)
        info_file = directory / EXPORT_INFO_FILE
        if not info_file.is_file():
            raise FileNotFoundError(
                f"{info_file} not found: pass a directory written by export.py."
            )
        self.info = json.loads(info_file.read_text())
        self.settings = DecodeSettings(**self.info["decode"])
        self.max_length = int(self.info["max_length"])
        self.max_input_length = int(self.info["max_input_length"])
        self.tokenizer = spm.SentencePieceProcessor(model_file=str(directory / TOKENIZER_FILE))
        self.pad_piece = self.tokenizer.id_to_piece(PAD_ID)
        self.translator = ctranslate2.Translator(
            str(directory),
            device=device,
            compute_type=compute_type,
            inter_threads=inter_threads,
            intra_threads=intra_threads,
        )

    def translate(self, texts: Sequence[str], settings: DecodeSettings | None = None) -> list[str]:
        """Translates `texts` in order (default settings: the checkpoint's config.decode)."""
        settings = settings or self.settings
        pieces = [self.tokenizer.encode(t, out_type=str) if t.strip() else [] for t in texts]
        order = sorted((i for i, p in enumerate(pieces) if p), key=lambda i: len(pieces[i]))
        translations = [""] * len(texts)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            sources = [pieces[i] for i in batch]
            length = decoding_length(
                sources,
                max_extra_length=settings.max_extra_length,
                max_input_length=self.max_input_length,
                max_length=self.max_length,
            )
            options = translate_options(
                self.pad_piece,
                settings,
                max_input_length=self.max_input_length,
                max_decoding_length=length,
            )
            results = self.translator.translate_batch(sources, **options)
            for i, result in zip(batch, results, strict=True):
                translations[i] = self.tokenizer.decode(result.hypotheses[0])
        return translations
