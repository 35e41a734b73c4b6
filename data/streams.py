"""Training and evaluation batches: what the model consumes.

Training (`train_iterator`): the training split's token ids, tokenized once and stored on disk
(data/token_ids.py), shuffled anew every epoch from `config.seed`, filtered by
`data.max_length`, split into `data.virtual_shards` virtual shards that each host packs on its
own (data/shards.py: the design, and why the global batch and its resumption do not depend on
the number of hosts), packed first-fit into rows of `data.max_length` tokens and copied out
with vectorized numpy (data/packing.py). A background thread prepares `data.prefetch_batches`
batches ahead. scripts/pipeline_throughput.py measures the tokens per second this delivers and
the CPU time per global batch on one host of H.

Packed rows (all int32 [rows, max_length]):
  inputs, targets               token ids, 0 = padding
  inputs_segment_ids, ...       1, 2, 3, ... = which example of the row; 0 = padding
  inputs_positions, ...         position within its example, restarting at 0

Evaluation (`eval_batches`): a split in order, read as text, unpacked, each example exactly
once, padded with all-zero rows up to whole batches (zero targets carry zero weight); over-long
examples are truncated to `data.max_eval_length` (EOS kept last) and counted.
"""

import copy
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging

from data import sources, token_ids
from data.errors import DataError
from data.shards import STATE_FORMAT, ShardedBatches, owned_shards
from data.special_tokens import truncate_keeping_eos
from data.tokenizer import Tokenizer

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


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator over this process's rows of each packed global batch.

    `get_state()` is JSON-serializable and describes the position after the batch last yielded
    (this process's virtual shards only); `set_state(state)` makes the next batch exactly the
    one that followed it. `set_state` also takes the list of the states saved by every process
    of a run on another number of processes. A background thread prepares up to `prefetch`
    batches ahead (0 = none) without affecting the state.
    """

    def __init__(self, batches: ShardedBatches, *, prefetch: int, signature: dict[str, Any]):
        self._batches = batches
        self._prefetch = prefetch
        self._signature = signature  # what a saved state must match to be restored here
        self._state = batches.get_state()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __next__(self) -> dict[str, np.ndarray]:
        if self._prefetch <= 0:
            batch, self._state = self._batches.next_batch(), self._batches.get_state()
            return batch
        if self._thread is None:
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=self._prefetch)
            self._thread = threading.Thread(
                target=_produce, args=(self._batches, self._stop, self._queue), daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> dict[str, Any]:
        """Position after the last yielded batch (JSON-serializable)."""
        return {**copy.deepcopy(self._state), **self._signature}

    def set_state(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Continue from `state` (this process's saved state, or the list of the states of all
        processes of a run with another process count): the next batch is the one that
        followed it. A state of the previous pipeline (format 1) cannot be continued: the data
        then restarts from the beginning, with a warning."""
        states = state if isinstance(state, list) else [state]
        if any(s.get("format") != STATE_FORMAT for s in states):
            logging.warning(
                "The checkpoint's training data position was saved by the previous input "
                "pipeline (before virtual shards) and cannot be continued: the training data "
                "restarts from the beginning of its order."
            )
            return
        for saved in states:
            self._check_signature(saved)
        self._stop_thread()
        self._batches.set_state(states)
        self._state = self._batches.get_state()

    def _check_signature(self, saved: dict[str, Any]) -> None:
        mismatched = {
            key: (saved.get(key), value)
            for key, value in self._signature.items()
            if saved.get(key) != value
        }
        if mismatched:
            details = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in mismatched.items())
            raise DataError(f"cannot restore the training data position: {details}")
        if saved["virtual_shards"] != self._batches.num_shards:
            raise DataError(
                f"the training data position was saved with data.virtual_shards="
                f"{saved['virtual_shards']}, now {self._batches.num_shards}; set "
                f"--config.data.virtual_shards={saved['virtual_shards']} to continue it"
            )

    def close(self) -> None:
        """Stops the prefetch thread (it is a daemon thread, so exiting without this is fine)."""
        self._stop_thread()

    def __del__(self) -> None:
        self._stop.set()  # an abandoned iterator's thread ends too


def _produce(batches: ShardedBatches, stop: threading.Event, out: queue.Queue) -> None:
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
            batch = batches.next_batch()
            put((batch, batches.get_state()))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        put(e)


def virtual_shard_count(config) -> int:
    """data.virtual_shards, 0 meaning one per row of the global batch; must divide it."""
    count = config.data.virtual_shards or config.batch_size
    if count < 1 or config.batch_size % count:
        raise DataError(
            f"data.virtual_shards={count} must divide batch_size={config.batch_size} "
            "(0 = one shard per row)"
        )
    return count


def train_iterator(
    config, tokenizer: Tokenizer, *, process_index: int, process_count: int
) -> TrainIterator:
    """This process's rows of the packed, shuffled, repeated training batches (module doc).

    Yields dicts of int32 [config.batch_size // process_count, config.data.max_length] under
    TRAIN_KEYS. Same config and seed -> same global batches, whatever the process count.
    """
    data = config.data
    rows_per_process(config.batch_size, process_index, process_count)
    if data.max_length < 2:
        raise DataError(f"data.max_length={data.max_length} leaves no room for a token and EOS")
    num_shards = virtual_shard_count(config)
    shards = owned_shards(num_shards, process_index, process_count)
    ids = token_ids.training_token_ids(data, tokenizer)
    longest = np.maximum(ids.lengths["inputs"], ids.lengths["targets"])
    fitting = np.flatnonzero(longest <= data.max_length).astype(np.int32)  # an index: 4 B each
    if len(fitting) < ids.num_examples:
        logging.info(
            "%d of %d training examples are longer than max_length=%d tokens and never used",
            ids.num_examples - len(fitting),
            ids.num_examples,
            data.max_length,
        )
    batches = ShardedBatches(
        ids,
        fitting,
        seed=config.seed,
        num_shards=num_shards,
        shards=shards,
        rows_per_shard=config.batch_size // num_shards,
        max_length=data.max_length,
        pack=bool(data.pack),
    )
    signature = {
        "seed": config.seed,
        "batch_size": config.batch_size,
        "max_length": data.max_length,
        "pack": bool(data.pack),
        "train_examples": ids.num_examples,
        "tokenizer": ids.tokenizer_key,
    }
    return TrainIterator(batches, prefetch=data.prefetch_batches, signature=signature)


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
            ids = truncate_keeping_eos(ids, max_length)
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
