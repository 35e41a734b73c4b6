"""Translating a request's texts through the batcher: lines split, blank lines kept, every
sentence queued at once, the answer awaited until it is ready, the client has gone, or the
request timed out (then sentences not yet decoding are dropped from the queue)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from serving.backend import Backend
from serving.batching import Batcher, QueueFull
from serving.metrics import ServerMetrics
from serving.requests import ApiError


class TranslationService:
    """Texts -> translations with one backend and its batcher."""

    def __init__(
        self, backend: Backend, batcher: Batcher, metrics: ServerMetrics, timeout_s: float
    ) -> None:
        self.backend, self.batcher, self.metrics = backend, batcher, metrics
        self.timeout_s = timeout_s

    async def translate(
        self, texts: Sequence[str], client_gone: Callable[[], Awaitable[None]]
    ) -> list[str]:
        """The translation of each text; a text's lines are translated one by one (a blank
        line stays blank, "\\r\\n" becomes "\\n"). Raises ApiError 503 when the queue is full
        or the request times out; `client_gone()` finishing first abandons the request."""
        lines = [[line.removesuffix("\r") for line in text.split("\n")] for text in texts]
        sentences = [line for text in lines for line in text if line.strip()]
        encoded = [self.backend.encode(sentence) for sentence in sentences]
        self.metrics.truncated.inc(sum(e.truncated for e in encoded))
        try:
            futures = self.batcher.submit(encoded)
        except QueueFull as error:
            raise ApiError(
                503, "overloaded", f"The server is busy ({error}): retry in a moment."
            ) from None
        results = asyncio.ensure_future(asyncio.gather(*map(asyncio.wrap_future, futures)))
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait(
                {results, gone}, timeout=self.timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            gone.cancel()
            if not results.done():
                results.cancel()
                for future in futures:
                    future.cancel()  # dropped from the queue unless already decoding
        if not results.done() or results.cancelled():
            if gone.done() and not gone.cancelled():
                raise ApiError(499, "client_gone", "The client closed the connection.")
            raise ApiError(
                503,
                "timeout",
                f"The translation did not finish within {self.timeout_s:g} s: retry later or "
                "send less text per request.",
            )
        translations = iter(decoded.text for decoded in results.result())
        return [
            "\n".join(next(translations) if line.strip() else "" for line in text) for text in lines
        ]
