"""Training and evaluation batches: what the model consumes.

Training (`train_iterator`): the training split, globally shuffled with `config.seed` (a new
order every epoch, grain's index shuffle), repeated forever, read and tokenized in chunks of
READ_CHUNK examples, filtered by `data.max_length`, packed first-fit into rows of
`data.max_length` tokens (grain's FirstFitPackIterDataset, one packing round per global batch)
and batched into global batches of `config.batch_size` rows. Every process computes the same
global batch and keeps its own slice of rows, so the global batch never depends on the number of
processes, and an iterator state saved by a run on N hosts resumes a run on M hosts. The price
is that every process packs the whole global batch; scripts/pipeline_throughput.py measures
what one core delivers.

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

# Training records are read (one batched array_record read) and tokenized this many at a time.
READ_CHUNK = 256
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


class ReadChunk:
    """Chunk number i -> the examples at positions [i * size, (i + 1) * size) of the endless
    shuffled order that fit in `max_length`, as {'inputs': int32[n], 'targets': int32[m]} (EOS
    appended). One batched array_record read and one batched tokenizer call per chunk (several
    times faster than record by record). Counts what it keeps and drops."""

    def __init__(
        self,
        records,
        order: grain.MapDataset,
        size: int,
        tokenizer: Tokenizer,
        languages: tuple[str, str],
        max_length: int,
    ):
        self.records, self.order, self.size = records, order, size
        self.tokenizer, self.languages, self.max_length = tokenizer, languages, max_length
        self.kept = 0
        self.dropped = 0
        self._lock = threading.Lock()  # grain may call from several reading threads

    def __call__(self, chunk: int) -> list[dict[str, np.ndarray]]:
        indices = [self.order[chunk * self.size + i] for i in range(self.size)]
        records = self.records.__getitems__(indices)
        source_lang, target_lang = self.languages
        inputs = self.tokenizer.encode_batch([r[source_lang].decode() for r in records])
        targets = self.tokenizer.encode_batch([r[target_lang].decode() for r in records])
        examples = [
            {"inputs": np.asarray(i, np.int32), "targets": np.asarray(t, np.int32)}
            for i, t in zip(inputs, targets, strict=True)
            if max(len(i), len(t)) <= self.max_length
        ]
        with self._lock:
            self.kept += len(examples)
            self.dropped += len(records) - len(examples)
        return examples


class Unchunk(grain.experimental.FlatMapTransform):
    """A list of examples -> the examples one by one."""

    max_fan_out = READ_CHUNK

    def flat_map(self, chunk: list) -> list:
        return chunk


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
        reader: ReadChunk,
        signature: dict[str, Any],
    ):
        self._iterator = iter(global_batches)
        self._rows = rows
        self._prefetch = prefetch
        self._reader = reader  # its kept/dropped counts are logged
        self._signature = signature  # what a saved state must match to be restored here
        self._state = copy.deepcopy(self._iterator.get_state())
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._next_drop_report = 1

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __next__(self) -> dict[str, np.ndarray]:
        if self._prefetch <= 0:
            batch, self._state = _next_host_batch(self._iterator, self._rows)
        else:
            if self._thread is None:
                self._stop = threading.Event()
                self._queue = queue.Queue(maxsize=self._prefetch)
                self._thread = threading.Thread(
                    target=_produce,
                    args=(self._iterator, self._rows, self._stop, self._queue),
                    daemon=True,
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
        dropped = self._reader.dropped
        if dropped >= self._next_drop_report:
            logging.info(
                "Dropped %d of %d training examples read so far: longer than max_length=%d tokens",
                dropped,
                dropped + self._reader.kept,
                self._reader.max_length,
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

    def __del__(self) -> None:
        self._stop.set()  # an abandoned iterator's thread ends too


def _next_host_batch(iterator, rows: slice) -> tuple[dict[str, np.ndarray], Any]:
    """Next global batch cut to this process's rows, and the grain state after it."""
    global_batch = next(iterator)
    batch = {key: np.ascontiguousarray(global_batch[key][rows]) for key in TRAIN_KEYS}
    return batch, copy.deepcopy(iterator.get_state())


def _produce(iterator, rows: slice, stop: threading.Event, out: queue.Queue) -> None:
    """Prefetch thread: puts (batch, state after it) into `out` until `stop` is set; an error is
    put there too, for the consumer to raise.

    Holds no reference to the TrainIterator, so dropping that stops the thread (`__del__`).
    """

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        while not stop.is_set():
            put(_next_host_batch(iterator, rows))
    except BaseException as e:
        put(e)


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
    # The endless example order: a new permutation of the split every epoch.
    order = grain.MapDataset.range(len(records)).shuffle(seed=config.seed).repeat()
    read_chunk = ReadChunk(
        records,
        order,
        READ_CHUNK,
        tokenizer,
        (data.source_lang, data.target_lang),
        data.max_length,
    )
    chunks = (
        grain.MapDataset.range(len(order) // READ_CHUNK)
        .map(read_chunk)
        .to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=4))
    )
    examples = grain.experimental.FlatMapIterDataset(chunks, Unchunk())
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
        reader=read_chunk,
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
