"""Dynamic batching: a queue of sentences and one decoder worker thread.

Request handlers `submit` sentences (already encoded) and get a concurrent Future each. The
worker keeps one first-in-first-out queue per bucket and decodes a bucket's sentences
together, at most `max_rows` at a time, as soon as the bucket is full or its oldest sentence
has waited `max_wait_s`; of the buckets ready, the one whose oldest sentence came first goes
first. The wait also counts from the end of the previous decode: the clients it answered get
`max_wait_s` to send their next sentences, which then join the sentences queued meanwhile
(otherwise concurrent clients split into groups that alternate, each batch half full). Rows
the bucket leaves free are filled with the oldest sentences of *shorter* buckets (padded to
the batch's bucket), so mixed lengths still make full batches, and no sentence makes a batch
longer than its own bucket would be. A sentence whose Future was cancelled before its batch
starts (its client timed out or went away) is dropped unseen, so nothing a client does holds
the worker up.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from serving.backend import Decoded, Encoded
from serving.metrics import ServerMetrics


class QueueFull(RuntimeError):
    """The queue already holds `max_queued` sentences."""


@dataclasses.dataclass
class _Pending:
    sentence: Encoded
    future: Future
    enqueued: float  # time.monotonic() at submit


class Batcher:
    """The sentence queue and its decoder worker thread (start() ... stop())."""

    def __init__(
        self,
        decode_batch: Callable[[Sequence[Encoded]], list[Decoded]],
        *,
        max_rows: int,
        max_wait_s: float,
        max_queued: int,
        metrics: ServerMetrics,
    ) -> None:
        self.decode_batch = decode_batch
        self.max_rows, self.max_wait_s, self.max_queued = max_rows, max_wait_s, max_queued
        self.metrics = metrics
        self._queues: dict[int, collections.deque[_Pending]] = {}
        self._queued = 0
        self._last_decode_end = float("-inf")  # time.monotonic() when the last batch was done
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Decodes what is queued, then ends the worker thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join()

    def submit(self, sentences: Sequence[Encoded]) -> list[Future]:
        """Queues the sentences (all or none); one Future of a Decoded each."""
        with self._condition:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self._queued + len(sentences) > self.max_queued:
                raise QueueFull(f"the queue holds {self._queued} of {self.max_queued} sentences")
            now = time.monotonic()
            futures = []
            for sentence in sentences:
                future: Future = Future()
                self._queues.setdefault(sentence.bucket, collections.deque()).append(
                    _Pending(sentence, future, now)
                )
                futures.append(future)
            self._queued += len(sentences)
            self.metrics.queued_sentences.set(self._queued)
            self._condition.notify()
        return futures

    def _ready_bucket(self, now: float) -> tuple[int | None, float]:
        """(the bucket to decode now or None, seconds until one will be ready)."""
        ready, wait = [], float("inf")
        for bucket, queue in self._queues.items():
            due = max(queue[0].enqueued, self._last_decode_end) + self.max_wait_s
            if len(queue) >= self.max_rows or due <= now or self._stopping:
                ready.append((queue[0].enqueued, bucket))
            else:
                wait = min(wait, due - now)
        return (min(ready)[1] if ready else None), wait

    def _next_batch(self) -> list[_Pending] | None:
        """Blocks until a batch is ready; None when stopping with nothing left."""
        with self._condition:
            while True:
                bucket, wait = self._ready_bucket(time.monotonic())
                if bucket is not None:
                    break
                if self._stopping and not self._queues:
                    return None
                self._condition.wait(None if wait == float("inf") else wait)
            batch = []
            while len(batch) < self.max_rows and (source := self._fill_from(bucket)) is not None:
                queue = self._queues[source]
                pending = queue.popleft()
                if not queue:
                    del self._queues[source]
                self._queued -= 1
                if pending.future.set_running_or_notify_cancel():  # False: cancelled
                    batch.append(pending)
            self.metrics.queued_sentences.set(self._queued)
            return batch

    def _fill_from(self, bucket: int) -> int | None:
        """The queue the next row of a `bucket` batch comes from: that bucket's own while it
        lasts, then the shorter bucket whose oldest sentence came first (None: none left)."""
        if bucket in self._queues:
            return bucket
        shorter = [(queue[0].enqueued, b) for b, queue in self._queues.items() if b < bucket]
        return min(shorter)[1] if shorter else None

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._decode(batch)
                self._last_decode_end = time.monotonic()

    def _decode(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        for pending in batch:
            self.metrics.queue_wait_seconds.observe(start - pending.enqueued)
        try:
            decoded = self.decode_batch([pending.sentence for pending in batch])
            if len(decoded) != len(batch):
                raise RuntimeError(f"{len(batch)} sentences decoded into {len(decoded)}.")
        except Exception as error:  # a decoder bug: the requests fail, the server stays up
            logging.exception("Decoding a batch of %d sentences failed.", len(batch))
            for pending in batch:
                pending.future.set_exception(error)
            return
        self.metrics.observe_batch(
            len(batch),
            time.monotonic() - start,
            source_tokens=sum(len(pending.sentence.tokens) for pending in batch),
            output_tokens=sum(d.num_tokens for d in decoded),
        )
        for pending, translation in zip(batch, decoded, strict=True):
            pending.future.set_result(translation)
