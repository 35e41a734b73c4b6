"""The Prometheus metrics of one server, in a registry of its own (GET /metrics)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """Requests, errors by kind, batch sizes, queue wait, decode time and tokens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "translate_requests", "HTTP requests, by endpoint.", ["endpoint"], registry=r
        )
        self.errors = Counter(
            "translate_errors",
            "Requests answered with an error, by kind (bad_request, unsupported_language, "
            "too_large, not_ready, overloaded, timeout, client_gone, internal).",
            ["kind"],
            registry=r,
        )
        self.sentences = Counter("translate_sentences", "Sentences translated.", registry=r)
        self.truncated = Counter(
            "translate_truncated_sentences",
            "Sentences longer than the maximum input length, cut before decoding.",
            registry=r,
        )
        self.source_tokens = Counter(
            "translate_source_tokens", "Source subwords decoded (EOS included).", registry=r
        )
        self.output_tokens = Counter(
            "translate_output_tokens", "Output subwords produced (EOS excluded).", registry=r
        )
        self.batch_rows = Histogram(
            "translate_batch_sentences",
            "Sentences per decoder call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "translate_queue_wait_seconds",
            "Time a sentence waited in the queue before its batch started decoding.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "translate_decode_seconds",
            "Time of one decoder call (one batch).",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "translate_request_seconds",
            "Time from a /translate request's arrival to its answer.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queued_sentences = Gauge(
            "translate_queued_sentences", "Sentences waiting in the queue now.", registry=r
        )

    def observe_batch(
        self, sentences: int, seconds: float, *, source_tokens: int, output_tokens: int
    ) -> None:
        self.batch_rows.observe(sentences)
        self.decode_seconds.observe(seconds)
        self.sentences.inc(sentences)
        self.source_tokens.inc(source_tokens)
        self.output_tokens.inc(output_tokens)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
