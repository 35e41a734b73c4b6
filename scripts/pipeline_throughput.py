"""How many packed target tokens per second the training input pipeline delivers on one core.

    python scripts/pipeline_throughput.py --config=configs/multi30k.py [--num_batches=200]

Pins the process to one CPU core (--cpu), builds the real training iterator (one process, the
config's global batch), skips a few warm-up batches and times the next --num_batches. Prints
non-pad target tokens/s (what the training step consumes), all row cells/s, examples/s and
batches/s, once per --config.data.read_threads value given in --read_threads.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import input_pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/multi30k.py", "Configuration file whose data and batch size are timed."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/throughput", "Where the tokenizer is trained (WORKDIR/tokenizer)."
)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 200, "Batches timed (after the warm-up).")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 5, "Batches read before timing.")
_CPU = flags.DEFINE_integer("cpu", 0, "CPU core to pin the process to (-1: do not pin).")
_READ_THREADS = flags.DEFINE_list(
    "read_threads", ["0", "1"], "Values of data.read_threads to time, one run each."
)


def time_pipeline(config, tokenizer, num_batches: int, warmup_batches: int) -> dict[str, float]:
    """Reads `warmup_batches`, then times `num_batches` batches of the training iterator."""
    iterator = input_pipeline.train_iterator(config, tokenizer, process_index=0, process_count=1)
    for _ in range(warmup_batches):
        next(iterator)
    target_tokens = examples = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
        target_tokens += int(np.count_nonzero(batch["targets"]))
        examples += int(batch["targets_segment_ids"].max(axis=1).sum())
    seconds = time.perf_counter() - start
    iterator.close()
    cells = num_batches * batch["targets"].size
    return {
        "target_tokens_per_s": target_tokens / seconds,
        "cells_per_s": cells / seconds,
        "examples_per_s": examples / seconds,
        "batches_per_s": num_batches / seconds,
        "non_pad_fraction": target_tokens / cells,
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CPU.value >= 0:
        os.sched_setaffinity(0, {_CPU.value})
    config = _CONFIG.value
    try:
        input_pipeline.prepare(config.data)
        tokenizer = input_pipeline.get_tokenizer(config.data, _WORKDIR.value)
    except input_pipeline.DataError as e:
        sys.exit(f"error: {e}")
    print(
        f"source={config.data.source} batch={config.batch_size}x{config.data.max_length} "
        f"prefetch_batches={config.data.prefetch_batches} "
        f"cores={sorted(os.sched_getaffinity(0))}"
    )
    for read_threads in _READ_THREADS.value:
        config.data.read_threads = int(read_threads)
        figures = time_pipeline(config, tokenizer, _NUM_BATCHES.value, _WARMUP_BATCHES.value)
        print(
            f"read_threads={read_threads}: "
            f"{figures['target_tokens_per_s']:,.0f} packed target tokens/s "
            f"(non-pad {figures['non_pad_fraction']:.3f}), "
            f"{figures['cells_per_s']:,.0f} row cells/s, "
            f"{figures['examples_per_s']:,.0f} examples/s, "
            f"{figures['batches_per_s']:.1f} batches/s"
        )


if __name__ == "__main__":
    app.run(main)
