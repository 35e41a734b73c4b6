"""The input pipeline: corpora as TFDS array_record datasets, sentencepiece, packed batches.

Inspect a configuration (prepares the data and trains the tokenizer if needed):

    python input_pipeline.py --config=configs/default.py [--config.data.FIELD=...] [--json]

Public API (the parts live in data/; see their docstrings):

Token ids: pad=0, eos=1, unk=2, no bos (the model uses 0 as the begin token).

`Tokenizer` - `.encode(text) -> list[int]` (EOS appended), `.encode_batch(texts)`,
    `.decode(ids) -> str` (stops at the first EOS, skips padding), `.vocab_size`,
    `.to_bytes()` (serialized sentencepiece model, for checkpoints), `Tokenizer.from_bytes(b)`,
    `Tokenizer.load(path)`.
`get_tokenizer(data_config, workdir, *, process_index=0, barrier=None) -> Tokenizer` -
    process 0 trains the joint vocabulary into WORKDIR/tokenizer/spm.model if absent; then
    `barrier()` (if given) and every process loads that file (the workdir must be shared).
`prepare(data_config) -> None` - prepares the corpus if needed (numbers: generated; text_files:
    prepared again whenever a file's path, size or mtime changes; tfds: checked). Atomic and
    safe to call from every process, with or without a shared file system; all readers below
    call it themselves.
`raw_examples(data_config, split) -> list[tuple[str, str]]` - (source, target) sentences in file
    order.
`train_iterator(config, tokenizer, *, process_index, process_count) -> TrainIterator` - infinite,
    dicts of int32 [config.batch_size // process_count, data.max_length] with keys inputs,
    targets, inputs_segment_ids, targets_segment_ids (1, 2, ... per packed example; 0 = pad),
    inputs_positions, targets_positions (restart at 0 per example). Reads the training split's
    token ids, tokenized once per tokenizer into data.prepared_dir/token_ids/ (the first call
    tokenizes; every process may call it). Reshuffled every epoch from config.seed; examples
    longer than max_length dropped (counted, logged). Each process packs only its own
    data.virtual_shards / process_count virtual shards, and the global batch does not depend on
    process_count: each process gets rows [i * n, (i + 1) * n) of it (data/shards.py).
    `.get_state()` (JSON-serializable, this process's shards) / `.set_state(state)`: resume
    with exactly the next batch; `set_state` also takes the list of every process's states of
    a run on another process count (any count dividing data.virtual_shards).
`eval_batches(config, tokenizer, split, *, batch_size, process_index=0, process_count=1)
    -> list[dict]` - inputs, targets int32 [batch_size // process_count, data.max_eval_length],
    unpacked, every example once in order; the last batch padded with all-zero rows; longer
    examples truncated (EOS kept).
`DataError(ValueError)` - bad data or configuration; the message is one line.

Sources (config.data.source, a registry: data/registry.py): 'numbers' (generated, the default),
'text_files' (your SPLIT.LANG files in data.dir, e.g. Multi30k), 'tfds' (a prebuilt dataset;
build one where the internet is reachable with `tfds build wmt14_translate/de-en
--file_format=array_record --data_dir=DIR` and set data.tfds_data_dir=DIR; see
data/tfds_source.py). A new source is one module (see data/registry.py).
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from data import statistics
from data.errors import DataError
from data.sources import prepare, raw_examples
from data.streams import TRAIN_KEYS, TrainIterator, eval_batches, train_iterator
from data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer, get_tokenizer

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "TRAIN_KEYS",
    "UNK_ID",
    "DataError",
    "Tokenizer",
    "TrainIterator",
    "eval_batches",
    "get_tokenizer",
    "prepare",
    "raw_examples",
    "train_iterator",
]


def _define_flags() -> dict:
    """The CLI's flags (defined only when run as a script, so importing defines none)."""
    return {
        "config": config_flags.DEFINE_config_file(
            "config", None, "Configuration file, e.g. configs/default.py.", lock_config=True
        ),
        "workdir": flags.DEFINE_string(
            "workdir", "runs/inspect", "Where the tokenizer is trained (WORKDIR/tokenizer)."
        ),
        "json": flags.DEFINE_bool(
            "json", False, "Also print all figures as one JSON object on the last line."
        ),
        "num_examples": flags.DEFINE_integer(
            "num_examples", 3, "Packed training examples to decode and print."
        ),
        "max_packing_batches": flags.DEFINE_integer(
            "max_packing_batches",
            500,
            "Packing efficiency is measured over one epoch or this many batches, if fewer.",
        ),
    }


def _print_examples(config, tokenizer: Tokenizer, count: int) -> None:
    """Decodes the first `count` examples of the first packed training batch."""
    iterator = train_iterator(config, tokenizer, process_index=0, process_count=1)
    batch = next(iterator)
    iterator.close()
    shown = 0
    for row in range(batch["targets"].shape[0]):
        for segment in range(1, int(batch["targets_segment_ids"][row].max()) + 1):
            if shown == count:
                return
            source = batch["inputs"][row][batch["inputs_segment_ids"][row] == segment]
            target = batch["targets"][row][batch["targets_segment_ids"][row] == segment]
            print(f"  row {row} segment {segment}:")
            print(f"    {tokenizer.decode(source)}")
            print(f"    -> {tokenizer.decode(target)}")
            shown += 1


def main(argv: list[str], flag_values: dict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flag_values["config"].value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/default.py")
    try:
        prepare(config.data)
        tokenizer = get_tokenizer(config.data, flag_values["workdir"].value)
        stats = statistics.corpus_statistics(
            config, tokenizer, max_packing_batches=flag_values["max_packing_batches"].value
        )
        for key, value in stats.items():
            print(f"{key}: {value}")
        print(f"first packed training batch, {flag_values['num_examples'].value} examples:")
        _print_examples(config, tokenizer, flag_values["num_examples"].value)
    except DataError as e:
        sys.exit(f"error: {e}")
    if flag_values["json"].value:
        print(json.dumps(stats))


if __name__ == "__main__":
    cli_flags = _define_flags()
    app.run(lambda argv: main(argv, cli_flags))
