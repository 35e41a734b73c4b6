"""Export of trained checkpoints to CTranslate2 (needs the `export` extra: ctranslate2).

`export_checkpoint(restored, output_dir, quantization)` writes a restored checkpoint
(training/restoring.py) as a CTranslate2 model directory; `FlaxTransformerConverter` is the
CTranslate2 converter it uses (exporting/converter.py says what has to match).
"""

from exporting.converter import FlaxTransformerConverter
from exporting.export import QUANTIZATIONS, ExportError, export_checkpoint

__all__ = ["QUANTIZATIONS", "ExportError", "FlaxTransformerConverter", "export_checkpoint"]
