"""Export a trained checkpoint to a CTranslate2 model directory.

    python export.py --workdir=runs/default --output=exported/default
    python export.py --workdir=runs/multi30k --average_last=5 --output=exported/m30k-int8 \\
        --quantization=int8

OUT gets model.bin, config.json and shared_vocabulary.json (CTranslate2's), spm.model (our
sentencepiece model) and export.json. Then, with nothing else:

    sp = sentencepiece.SentencePieceProcessor(model_file="OUT/spm.model")
    translator = ctranslate2.Translator("OUT")
    options = json.load(open("OUT/export.json"))["translate_options"]  # as translate.py
    result = translator.translate_batch([sp.encode(line, out_type=str)], **options)[0]
    print(sp.decode(result.hypotheses[0]))

docs/export.md says what matches our model exactly, and what CTranslate2's own defaults
(translate_batch without the options) do differently. Needs the `export` extra
(pip install '.[export]').
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training run directory: its newest checkpoint is exported."
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "One checkpoint folder, WORKDIR/checkpoints/<step> (instead of --workdir)."
)
_AVERAGE_LAST = flags.DEFINE_integer(
    "average_last", 1, "Export the mean parameters of the last N checkpoints up to the chosen one."
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "sentencepiece model file to use instead of the checkpoint's tokenizer."
)
_OUTPUT = flags.DEFINE_string("output", None, "The CTranslate2 model directory to write.")
_QUANTIZATION = flags.DEFINE_string(
    "quantization",
    None,
    "Weight type: int8, int8_float32, int8_float16, int8_bfloat16, int16, float16, bfloat16 "
    "or float32 (default: float32, as trained).",
)
_FORCE = flags.DEFINE_bool("force", False, "Replace --output if it exists and is not empty.")


def fail(message: str) -> NoReturn:
    """Ends the program with a one-line error (exit status 1)."""
    sys.exit(f"export.py: error: {message}")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        fail(f"Unexpected arguments: {' '.join(argv[1:])}")
    if (_WORKDIR.value is None) == (_CHECKPOINT.value is None):
        fail("Pass exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints/STEP.")
    if not _OUTPUT.value:
        fail("Pass --output=DIR, the CTranslate2 model directory to write.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        import exporting
    except ImportError as error:
        fail(f"{error}: install the export extra (pip install '.[export]').")
    from training import restoring

    try:
        # Bad flags are refused before the (slow) restore.
        exporting.export.check_quantization(_QUANTIZATION.value)
        exporting.export.check_output_dir(_OUTPUT.value, _FORCE.value)
        restored = restoring.restore_for_translation(
            _WORKDIR.value or _CHECKPOINT.value,
            average_last=_AVERAGE_LAST.value,
            tokenizer_file=_TOKENIZER.value,
        )
        steps = restored.steps
        which = f"step {steps[-1]}" if len(steps) == 1 else f"the mean of steps {steps}"
        print(f"Restored {which} from {restored.checkpoints_dir}.", file=sys.stderr)
        output = exporting.export_checkpoint(
            restored, _OUTPUT.value, _QUANTIZATION.value, force=_FORCE.value
        )
    except (restoring.RestoreError, exporting.ExportError, OSError) as error:
        fail(str(error))
    print(f"Wrote the CTranslate2 model to {output}.", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
