"""Training and evaluation batches: what the model consumes.

Training (`train_iterator`): the training split, globally shuffled with `config.seed` (a new
order every epoch, grain's index shuffle), repeated forever, tokenized, filtered by
`data.max_length`, packed first-fit into rows of `data.max_length` tokens (grain's
FirstFitPackIterDataset, one packing round per global batch) and batched into global batches of
`config.batch_size` rows. Every process computes the same global batch and keeps its own slice
of rows, so the global batch never depends on the number of processes, and an iterator state
saved by a run on N hosts resumes a run on M hosts. The price is that every process packs the
whole global batch; scripts/pipeline_throughput.py measures what one core delivers.

Packed rows (all int32 [rows, max_length]):
  inputs, targets               token ids, 0 = padding
  inputs_segment_ids, ...       1, 2, 3, ... = which example of the row; 0 = padding
  inputs_positions, ...         position within its example, restarting at 0

Evaluation (`eval_batches`): a split in order, unpacked, each example exactly once, padded with
all-zero rows up to whole batches (zero targets carry zero weight); over-long examples are
truncated to `data.max_eval_length` (EOS kept last) and counted.
"""

import copy
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import logging

from data import sources
from data.errors import DataError
from data.tokenizer import EOS_ID, Tokenizer

TRAIN_KEYS = (
    "inputs",
    "targets",
    "inputs_segment_ids",
    "targets_segment_ids",
    "inputs_positions",
    "targets_positions",
)


def rows_per_process(batch_size: int, process_index: int, process_count: int) -> int:
    """Rows of a global batch that each process holds; the batch must split evenly."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise DataError(
            f"batch size {batch_size} is not divisible by the {process_count} processes; "
            "choose a multiple of the process count"
        )
    return batch_size // process_count


class EncodePair:
    """Record {lang: bytes} -> {'inputs': int32[n], 'targets': int32[m]} (EOS appended)."""

    def __init__(self, tokenizer: Tokenizer, source_lang: str, target_lang: str):
        self.tokenizer, self.source_lang, self.target_lang = tokenizer, source_lang, target_lang

    def __call__(self, record: dict[str, bytes]) -> dict[str, np.ndarray]:
        source = record[self.source_lang].decode("utf-8")
        target = record[self.target_lang].decode("utf-8")
        return {
            "inputs": np.asarray(self.tokenizer.encode(source), np.int32),
            "targets": np.asarray(self.tokenizer.encode(target), np.int32),
        }


class LengthFilter:
    """Keeps examples whose inputs and targets both fit in `max_length`; counts what it drops."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.kept = 0
        self.dropped = 0
        self._lock = threading.Lock()  # grain may call from several reading threads

    def __call__(self, example: dict[str, np.ndarray]) -> bool:
        fits = max(len(example["inputs"]), len(example["targets"])) <= self.max_length
        with self._lock:
            if fits:
                self.kept += 1
            else:
                self.dropped += 1
        return fits


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator over this process's slice of each packed global batch.

    `get_state()` is JSON-serializable and describes the position after the batch last yielded;
    `set_state(state)` makes the next batch exactly the one that followed it. A background
    thread prepares up to `prefetch` batches ahead (0 = none) without affecting the state.
    """

    def __init__(
        self,
        global_batches: grain.IterDataset,
        *,
        rows: slice,
        prefetch: int,
        length_filter: LengthFilter,
        signature: dict[str, Any],
    ):
        self._iterator = iter(global_batches)
        self._rows = rows
        self._prefetch = prefetch
        self._length_filter = length_filter
        self._signature = signature  # what a saved state must match to be restored here
        self._state = copy.deepcopy(self._iterator.get_state())
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._next_drop_report = 1

    def _host_batch(self) -> tuple[dict[str, np.ndarray], Any]:
        """Next global batch cut to this process's rows, and the grain state after it."""
        global_batch = next(self._iterator)
        batch = {key: np.ascontiguousarray(global_batch[key][self._rows]) for key in TRAIN_KEYS}
        return batch, copy.deepcopy(self._iterator.get_state())

    def _produce(self, stop: threading.Event, out: queue.Queue) -> None:
        try:
            while not stop.is_set():
                item = self._host_batch()
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, which raises it
            out.put(e)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __next__(self) -> dict[str, np.ndarray]:
        if self._prefetch <= 0:
            batch, self._state = self._host_batch()
        else:
            if self._thread is None:
                self._stop = threading.Event()
                self._queue = queue.Queue(maxsize=self._prefetch)
                self._thread = threading.Thread(
                    target=self._produce, args=(self._stop, self._queue), daemon=True
                )
                self._thread.start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            batch, self._state = item
        self._report_drops()
        return batch

    def _report_drops(self) -> None:
        dropped = self._length_filter.dropped
        if dropped >= self._next_drop_report:
            logging.info(
                "Dropped %d of %d training examples read so far: longer than max_length=%d tokens",
                dropped,
                dropped + self._length_filter.kept,
                self._length_filter.max_length,
            )
            while self._next_drop_report <= dropped:
                self._next_drop_report *= 2

    def get_state(self) -> dict[str, Any]:
        """Position after the last yielded batch (JSON-serializable)."""
        return {"grain": copy.deepcopy(self._state), **self._signature}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from `state`: the next batch is the one that followed it."""
        mismatched = {
            key: (state.get(key), value)
            for key, value in self._signature.items()
            if state.get(key) != value
        }
        if mismatched:
            details = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in mismatched.items())
            raise DataError(f"cannot restore the training data position: {details}")
        self._stop_thread()
        self._iterator.set_state(copy.deepcopy(state["grain"]))
        self._state = copy.deepcopy(state["grain"])

    def close(self) -> None:
        """Stops the prefetch thread (it is a daemon thread, so exiting without this is fine)."""
        self._stop_thread()


def train_iterator(
    config, tokenizer: Tokenizer, *, process_index: int, process_count: int
) -> TrainIterator:
    """This process's slice of the packed, shuffled, repeated training batches (module doc).

    Yields dicts of int32 [config.batch_size // process_count, config.data.max_length] under
    TRAIN_KEYS. Same config and seed -> same batches.
    """
    data = config.data
    rows_here = rows_per_process(config.batch_size, process_index, process_count)
    if data.max_length < 2:
        raise DataError(f"data.max_length={data.max_length} leaves no room for a token and EOS")
    records = sources.open_split(data, data.train_split)
    length_filter = LengthFilter(data.max_length)
    examples = (
        grain.MapDataset.source(records)
        .shuffle(seed=config.seed)
        .repeat()
        .map(EncodePair(tokenizer, data.source_lang, data.target_lang))
        .filter(length_filter)
        .to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=256))
    )
    packed_rows = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct={"inputs": data.max_length, "targets": data.max_length},
        num_packing_bins=config.batch_size,
        shuffle_bins=False,
        max_sequences_per_bin=None if data.pack else 1,
    )
    global_batches = packed_rows.batch(config.batch_size, drop_remainder=True)
    signature = {
        "seed": config.seed,
        "batch_size": config.batch_size,
        "max_length": data.max_length,
        "pack": bool(data.pack),
        "train_examples": len(records),
    }
    return TrainIterator(
        global_batches,
        rows=slice(process_index * rows_here, (process_index + 1) * rows_here),
        prefetch=data.prefetch_batches,
        length_filter=length_filter,
        signature=signature,
    )


def truncate(ids: list[int], max_length: int) -> list[int]:
    """`ids` cut to `max_length` tokens, the last one still EOS."""
    return ids if len(ids) <= max_length else ids[: max_length - 1] + [EOS_ID]


def eval_batches(
    config,
    tokenizer: Tokenizer,
    split: str,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Every example of `split` once, in order, as padded (unpacked) batches (module doc).

    Each batch: {'inputs', 'targets'} int32 [batch_size // process_count, data.max_eval_length];
    global batch b holds examples b*batch_size ... and this process gets its rows of it. The
    last global batch is filled with all-zero rows, so all processes get the same batch count.
    """
    rows_here = rows_per_process(batch_size, process_index, process_count)
    max_length = config.data.max_eval_length
    pairs = sources.raw_examples(config.data, split)
    encoded = {
        "inputs": tokenizer.encode_batch([source for source, _ in pairs]),
        "targets": tokenizer.encode_batch([target for _, target in pairs]),
    }
    num_batches = -(-len(pairs) // batch_size)
    truncated = 0
    arrays = {}
    for key, sequences in encoded.items():
        array = np.zeros((num_batches * batch_size, max_length), np.int32)
        for row, ids in enumerate(sequences):
            truncated += len(ids) > max_length
            ids = truncate(ids, max_length)
            array[row, : len(ids)] = ids
        arrays[key] = array.reshape(num_batches, batch_size, max_length)
    if truncated:
        logging.info(
            "%s: truncated %d sequences longer than max_eval_length=%d tokens",
            split,
            truncated,
            max_length,
        )
    rows = slice(process_index * rows_here, (process_index + 1) * rows_here)
    return [
        {key: np.ascontiguousarray(array[b, rows]) for key, array in arrays.items()}
        for b in range(num_batches)
    ]
