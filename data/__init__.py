"""The input pipeline's parts; `input_pipeline.py` at the repository root is the public face.

- `errors`: `DataError`, the one exception type for bad data or data configuration.
- `registry`: the corpus sources by name (`config.data.source`); a new source is one module.
- `sources`: every corpus as a prepared TFDS array_record dataset: prepare, open a split.
- `generated`: sources this project builds itself, prepared atomically.
- `numbers`, `numbers_source`: the generated numbers corpus (num2words) and its registration.
- `text_files`: your own parallel text files (one file per split and language).
- `tfds_source`: a TFDS dataset built elsewhere, e.g. WMT14.
- `tokenizer`: the joint sentencepiece vocabulary (pad=0, eos=1, unk=2).
- `token_ids`: the training split tokenized once, stored per tokenizer, memory-mapped.
- `packing`: which example goes to which row (lengths only), then vectorized copying.
- `shards`: virtual shards: each host packs its own rows; resumable on another host count.
- `streams`: the training iterator (prefetch, state) and the padded evaluation batches.
- `statistics`: what the inspection CLI reports.
"""
