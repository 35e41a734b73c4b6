"""The input pipeline's parts; `input_pipeline.py` at the repository root is the public face.

- `errors`: `DataError`, the one exception type for bad data or data configuration.
- `numbers`: the generated numbers corpus (num2words), a TFDS builder.
- `text_files`: your own parallel text files (one file per split and language), a TFDS builder.
- `sources`: every corpus as a prepared TFDS array_record dataset: prepare, open a split.
- `tokenizer`: the joint sentencepiece vocabulary (pad=0, eos=1, unk=2).
- `streams`: the packed, sharded, resumable training iterator and the padded evaluation batches.
"""
