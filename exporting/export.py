"""A restored checkpoint written as a CTranslate2 model directory, with its tokenizer.

    restored = training.restoring.restore_for_translation(WORKDIR, average_last=N)
    exporting.export_checkpoint(restored, OUT, quantization="int8")

OUT then holds CTranslate2's model.bin, config.json and shared_vocabulary.json, our
sentencepiece model as spm.model, and export.json (what was exported, and the longest input
the model takes). The directory appears complete or not at all: it is written next to OUT
and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import ctranslate2
import sentencepiece as spm
from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

from data.special_tokens import PAD_ID
from decoding.settings import DecodeSettings, max_input_length
from exporting.converter import FlaxTransformerConverter
from exporting.options import translate_options
from training.restoring import Restored

QUANTIZATIONS = ACCEPTED_MODEL_TYPES  # int8, int8_float32, ..., int16, float16, bfloat16, float32
TOKENIZER_FILE = "spm.model"
EXPORT_INFO_FILE = "export.json"


class ExportError(ValueError):
    """The export cannot be done as asked; the message is one line saying what to do."""


def vocabulary(restored: Restored) -> list[str]:
    """The piece of every token id of the model. Ids past the tokenizer's pieces (a model
    vocabulary rounded up) get placeholder names: no text maps to them."""
    processor = spm.SentencePieceProcessor(model_proto=restored.tokenizer.to_bytes())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    pieces += [f"<unused_{i}>" for i in range(len(pieces), restored.model.config.vocab_size)]
    if len(set(pieces)) != len(pieces):
        raise ExportError("The tokenizer's pieces are not unique: CTranslate2 cannot map them.")
    return pieces


def check_quantization(quantization: str | None) -> None:
    """Refuses a quantization CTranslate2 does not know (None: float32, as trained)."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ExportError(
            f"Unknown quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}."
        )


def check_output_dir(output_dir: str | os.PathLike, force: bool) -> None:
    """Refuses a file, or a non-empty directory unless `force`."""
    output_dir = Path(output_dir)
    if output_dir.is_file():
        raise ExportError(f"{output_dir} is a file: pass a directory for --output.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise ExportError(
            f"{output_dir} exists and is not empty: pass --force to replace it, or choose "
            "another --output."
        )


def export_checkpoint(
    restored: Restored,
    output_dir: str | os.PathLike,
    quantization: str | None = None,
    *,
    force: bool = False,
) -> Path:
    """Writes `restored` (training/restoring.py) as a CTranslate2 model directory at
    `output_dir`, its weights quantized as `quantization` (one of QUANTIZATIONS; None keeps
    float32). Returns the directory. Raises ExportError for a bad quantization or an
    existing non-empty directory (replaced only with `force`)."""
    check_quantization(quantization)
    output_dir = Path(output_dir).absolute()
    check_output_dir(output_dir, force)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        pieces = vocabulary(restored)
        converter = FlaxTransformerConverter(restored.model.config, restored.params, pieces)
        converter.convert(str(partial), quantization=quantization)
        (partial / TOKENIZER_FILE).write_bytes(restored.tokenizer.to_bytes())
        info = export_info(restored, quantization, pieces)
        (partial / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(partial, output_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output_dir


def export_info(restored: Restored, quantization: str | None, pieces: list[str]) -> dict:
    """What export.json records: the source checkpoint(s), its languages, the positions the
    model has, and the translate_batch options that decode as translate.py with config.decode
    does."""
    max_length = restored.model.config.max_length
    settings = DecodeSettings.from_config(restored.config.decode)
    return {
        "checkpoints_dir": str(restored.checkpoints_dir),
        "steps": list(restored.steps),  # one step, or those averaged
        "source_lang": restored.config.data.source_lang,  # serve.py --ctranslate2 reads them
        "target_lang": restored.config.data.target_lang,
        "quantization": quantization or "float32",
        "ctranslate2_version": ctranslate2.__version__,
        "max_length": max_length,  # positions: source tokens with EOS, decoder steps
        "max_input_length": max_input_length(restored.config),
        "decode": dataclasses.asdict(settings),  # exporting.ExportedTranslator's default
        # For translate_batch called directly: decodes as translate.py, within the positions.
        "translate_options": translate_options(
            pieces[PAD_ID],
            settings,
            max_input_length=max_input_length(restored.config),
            max_decoding_length=max_length,
        ),
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Renames `new` to `target`, removing what `target` held only once `new` is in place."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
