"""Export of trained checkpoints to CTranslate2 (needs the `export` extra: ctranslate2).

`export_checkpoint(restored, output_dir, quantization)` writes a restored checkpoint
(training/restoring.py) as a CTranslate2 model directory; `FlaxTransformerConverter` is the
CTranslate2 converter it uses (exporting/converter.py says what has to match);
`translate_options` the translate_batch options that decode as translate.py does, and
`ExportedTranslator(OUT).translate(texts)` texts -> texts as translate.py does them.
"""

from exporting.converter import FlaxTransformerConverter
from exporting.export import QUANTIZATIONS, ExportError, export_checkpoint
from exporting.options import decoding_length, translate_options
from exporting.translator import ExportedTranslator

__all__ = [
    "QUANTIZATIONS",
    "ExportError",
    "ExportedTranslator",
    "FlaxTransformerConverter",
    "decoding_length",
    "export_checkpoint",
    "translate_options",
]
