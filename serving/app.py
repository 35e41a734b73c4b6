"""The Starlette application: LibreTranslate's routes over a backend loaded in the background.

Start-up (the lifespan) only starts a loader thread, so the port answers at once: /health says
503 while the backend loads and compiles every bucket, then 200. Shut-down (after uvicorn has
answered the requests in flight) lets the decoder finish what is queued. Every error is JSON
{"error": "..."}; a request's problems are 400s (serving/requests.py), never 500s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.backend import Backend
from serving.batching import Batcher
from serving.languages import language_name
from serving.metrics import CONTENT_TYPE, ServerMetrics
from serving.requests import ApiError, Limits, bad_request, parse_translate
from serving.service import TranslationService

BYTES_PER_CHARACTER = 4  # the request body limit: char_limit x this (UTF-8) + room for fields
BODY_OVERHEAD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    max_rows: int  # sentences per decoder call
    max_wait_ms: float  # a sentence waits at most this long for batch-mates
    max_queued: int  # sentences queued at most; more: 503
    request_timeout_s: float
    limits: Limits


class _State:
    """What the routes see: None until the loader thread has finished."""

    def __init__(self) -> None:
        self.service: TranslationService | None = None
        self.failure: str | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _limited_receive(receive: Callable, limit: int) -> Callable:
    """`receive` that raises ApiError 413 once the body exceeds `limit` bytes."""
    received = 0

    async def wrapped() -> dict:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError(413, "too_large", f"The request body is over {limit} bytes.")
        return message

    return wrapped


async def _client_gone(receive: Callable) -> None:
    """Returns when the client disconnects (the body has been read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_fields(request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request's fields: a JSON object, or form fields over query fields (a repeated
    name gives a list)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(413, "too_large", f"The request body is over {max_body_bytes} bytes.")
    limited = Request(request.scope, _limited_receive(request.receive, max_body_bytes))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            fields = json.loads(await limited.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise bad_request(f"malformed JSON ({error})") from None
        if not isinstance(fields, dict):
            raise bad_request(f"the JSON body must be an object, got {type(fields).__name__}")
        return fields
    try:
        form = await limited.form()
    except HTTPException as error:  # a malformed multipart body
        raise bad_request(str(error.detail)) from None
    fields: dict[str, Any] = {}
    for source in (request.query_params, form):
        for name in source:
            values = [v for v in source.getlist(name) if isinstance(v, str)]  # files ignored
            fields[name] = values[0] if len(values) == 1 else values
    return fields


def create_app(
    load_backend: Callable[[], Backend],
    settings: ServerSettings,
    *,
    on_failure: Callable[[str], None] = lambda message: None,
) -> Starlette:
    """The application. `load_backend` runs in a thread at start-up; if it raises, /health
    answers 503 with the error and `on_failure(message)` is called (serve.py then exits)."""
    state, metrics = _State(), ServerMetrics()
    max_body_bytes = settings.limits.char_limit * BYTES_PER_CHARACTER + BODY_OVERHEAD_BYTES

    def load() -> None:
        try:
            backend = load_backend()
            logging.info("Serving %s.", backend.description)
            backend.warm_up()
        except Exception as error:  # reported by /health and by serve.py
            logging.exception("Loading the model failed.")
            state.failure = str(error).splitlines()[0] if str(error) else type(error).__name__
            on_failure(state.failure)
            return
        batcher = Batcher(
            backend.decode_batch,
            max_rows=min(settings.max_rows, backend.max_rows),
            max_wait_s=settings.max_wait_ms / 1000,
            max_queued=settings.max_queued,
            metrics=metrics,
        )
        batcher.start()
        state.service = TranslationService(backend, batcher, metrics, settings.request_timeout_s)
        logging.info("Ready.")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loader = threading.Thread(target=load, name="loader", daemon=True)
        loader.start()
        yield
        if state.service is not None:  # requests in flight are answered by now
            await asyncio.to_thread(state.service.batcher.stop)

    def service() -> TranslationService:
        if state.service is None:
            raise ApiError(
                503,
                "not_ready",
                state.failure
                and f"The model failed to load: {state.failure}"
                or "The model is loading and compiling: retry when GET /health answers 200.",
            )
        return state.service

    async def translate(request: Request) -> Response:
        metrics.requests.labels("translate").inc()
        start = time.monotonic()
        try:
            ready = service()
            fields = await read_fields(request, max_body_bytes)
            parsed = parse_translate(
                fields,
                source_lang=ready.backend.source_lang,
                target_lang=ready.backend.target_lang,
                limits=settings.limits,
            )
            texts = await ready.translate(parsed.texts, lambda: _client_gone(request.receive))
        except ApiError as error:
            metrics.errors.labels(error.kind).inc()
            return _error(error.status, error.message)
        metrics.request_seconds.observe(time.monotonic() - start)
        return JSONResponse({"translatedText": texts if parsed.is_list else texts[0]})

    async def languages(request: Request) -> Response:
        metrics.requests.labels("languages").inc()
        try:
            backend = service().backend
        except ApiError as error:
            metrics.errors.labels(error.kind).inc()
            return _error(error.status, error.message)
        source, target = backend.source_lang, backend.target_lang
        return JSONResponse([{"code": source, "name": language_name(source), "targets": [target]}])

    async def health(request: Request) -> Response:
        if state.failure is not None:
            return JSONResponse({"status": "failed", "error": state.failure}, status_code=503)
        if state.service is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, error: HTTPException) -> Response:
        return _error(error.status_code, str(error.detail))

    async def internal_error(request: Request, error: Exception) -> Response:
        metrics.errors.labels("internal").inc()
        return _error(500, f"Internal error ({type(error).__name__}): see the server's log.")

    routes = [
        Route("/translate", translate, methods=["POST"]),
        Route("/languages", languages, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.metrics = metrics
    return app
