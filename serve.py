"""Serve translations over HTTP with LibreTranslate's API, batching concurrent requests.

    python serve.py --workdir=runs/default                  # http://127.0.0.1:5000
    python serve.py --checkpoint=runs/base/checkpoints/3000 --average_last=5 --port=8080
    python serve.py --ctranslate2=exported/ --source_lang=en --target_lang=de

    curl -s http://127.0.0.1:5000/translate -H 'Content-Type: application/json' \\
        -d '{"q": "one hundred and five", "source": "en", "target": "de"}'

Endpoints: POST /translate, GET /languages, GET /health (503 until the model is loaded and
every length bucket compiled), GET /metrics (Prometheus). SIGTERM or Ctrl-C: stop accepting,
answer the requests in flight, exit 0. Decoding settings default to the checkpoint's
config.decode; parameters are restored as translate.py restores them. docs/serving.md has
the details and measured figures.
"""

from __future__ import annotations

from training.host_memory import use_huge_pages

if __name__ == "__main__":
    use_huge_pages()  # before JAX loads: may re-execute this program (training/host_memory.py)

import contextlib
import logging as std_logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from decoding.settings import STRATEGIES, DecodeSettings, DecodeSettingsError, max_input_length
from serving.app import ServerSettings, create_app
from serving.backend import Backend
from serving.requests import Limits

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training run directory: its newest checkpoint is served."
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "One checkpoint folder, WORKDIR/checkpoints/<step> (instead of --workdir)."
)
_CTRANSLATE2 = flags.DEFINE_string(
    "ctranslate2",
    None,
    "Serve a CTranslate2 export (export.py --output=DIR) instead of a checkpoint; decoding "
    "settings default to its export.json.",
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional config file instead of the one saved with the checkpoint."
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "sentencepiece model file instead of the checkpoint's tokenizer."
)
_AVERAGE_LAST = flags.DEFINE_integer(
    "average_last", 1, "Serve the mean parameters of the last N checkpoints up to the chosen one."
)
_MESH_SHAPE = flags.DEFINE_list(
    "mesh_shape",
    None,
    "Shard the parameters over the local devices as (data, fsdp, tensor), e.g. 1,1,-1 "
    "(default: everything on the first device).",
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    None,
    STRATEGIES,
    "Search: 'beam' or 'greedy' (default: greedy if the beam size is 1, else beam).",
)
_BEAM_SIZE = flags.DEFINE_integer(
    "beam_size", None, "Beam size; 1 = greedy search (default: config.decode.beam_size)."
)
_ALPHA = flags.DEFINE_float(
    "alpha", None, "Length penalty exponent alpha (default: config.decode.alpha)."
)
_MAX_EXTRA_LENGTH = flags.DEFINE_integer(
    "max_extra_length",
    None,
    "Outputs are at most input length + this many subwords (default: config.decode).",
)
_EARLY_STOPPING = flags.DEFINE_bool(
    "early_stopping",
    None,
    "Beam search: stop a sentence once its best finished hypothesis beats its best alive one "
    "ended within the next 3 steps (faster, not exact; the CTranslate2 backend always stops "
    "early). "
    "Default: config.decode.early_stopping, else off.",
)
_MAX_INPUT_LENGTH = flags.DEFINE_integer(
    "max_input_length",
    None,
    "Longer sentences are cut to this many subwords (default: the checkpoint's "
    "data.max_predict_length, capped at the model's max_length).",
)
_SOURCE_LANG = flags.DEFINE_string(
    "source_lang",
    None,
    "With --ctranslate2: the code of the language translated from (default: export.json).",
)
_TARGET_LANG = flags.DEFINE_string(
    "target_lang",
    None,
    "With --ctranslate2: the code of the language translated into (default: export.json).",
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every one).")
_PORT = flags.DEFINE_integer("port", 5000, "TCP port to listen on.")
_MAX_BATCH_ROWS = flags.DEFINE_integer(
    "max_batch_rows", 32, "Sentences decoded together at most (one compiled shape per power of 2)."
)
_MAX_WAIT_MS = flags.DEFINE_float(
    "max_wait_ms", 5.0, "A sentence waits at most this long for batch-mates before decoding."
)
_MAX_QUEUED = flags.DEFINE_integer(
    "max_queued", 4096, "Sentences waiting at most; requests beyond it get 503 (retry)."
)
_REQUEST_TIMEOUT_S = flags.DEFINE_float(
    "request_timeout_s", 60.0, "A request not answered within this many seconds gets 503."
)
_CHAR_LIMIT = flags.DEFINE_integer(
    "char_limit", 5000, "Characters per request at most (all texts of a list together)."
)
_BATCH_LIMIT = flags.DEFINE_integer("batch_limit", 64, "Texts per request's list at most.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Keep compiled decoders in this folder (JAX's persistent compilation cache): a restart "
    "with the same model and settings skips most of the compilation. Default: "
    "$XDG_CACHE_HOME/flax-transformer-mt/compiled-decoders (~/.cache when unset); empty: none.",
)
_ACCESS_LOG = flags.DEFINE_bool("access_log", False, "Log every request (uvicorn's access log).")


def fail(message: str) -> NoReturn:
    sys.exit(f"serve.py: error: {message}")


def decode_overrides() -> dict:
    """The decoding flags given (None: take the checkpoint's or the export's config.decode)."""
    return {
        "strategy": _STRATEGY.value,
        "beam_size": _BEAM_SIZE.value,
        "alpha": _ALPHA.value,
        "max_extra_length": _MAX_EXTRA_LENGTH.value,
        "early_stopping": _EARLY_STOPPING.value,
    }


def decode_settings(decode_config: Any) -> DecodeSettings:
    """`decode_config` with the decoding flags; a bad value ends the program (one line)."""
    try:
        return DecodeSettings.from_config(decode_config, **decode_overrides())
    except DecodeSettingsError as error:
        flag_names = "--strategy, --beam_size, --alpha, --max_extra_length"
        fail(f"{str(error).rstrip('.')} (decoding flags: {flag_names}).")


def check_flags() -> None:
    sources = [_WORKDIR.value, _CHECKPOINT.value, _CTRANSLATE2.value]
    if sum(value is not None for value in sources) != 1:
        fail(
            "Pass exactly one of --workdir=DIR, --checkpoint=DIR/checkpoints/STEP or "
            "--ctranslate2=DIR."
        )
    if _MESH_SHAPE.value and not all(
        size.strip().lstrip("-").isdigit() for size in _MESH_SHAPE.value
    ):
        fail(f"--mesh_shape takes integers, e.g. 1,1,-1; got {','.join(_MESH_SHAPE.value)}.")
    decode_settings({})  # the decoding flags' ranges, before anything is loaded
    for name, value, low in [
        ("max_input_length", _MAX_INPUT_LENGTH.value, 2),
        ("max_batch_rows", _MAX_BATCH_ROWS.value, 1),
        ("max_wait_ms", _MAX_WAIT_MS.value, 0),
        ("max_queued", _MAX_QUEUED.value, 1),
        ("request_timeout_s", _REQUEST_TIMEOUT_S.value, 0.001),
        ("char_limit", _CHAR_LIMIT.value, 1),
        ("batch_limit", _BATCH_LIMIT.value, 1),
    ]:
        if value is not None and value < low:
            fail(f"--{name} must be at least {low}, got {value}.")


def load_jax_backend() -> Backend:
    """The checkpoint restored as translate.py restores it, decoding with the flags' settings
    or the checkpoint's config.decode."""
    import jax

    from decoding import keep_compiled_decoders
    from serving.jax_backend import JaxBackend
    from training import partitioning, restoring

    try:
        keep_compiled_decoders(_COMPILATION_CACHE_DIR.value)
    except OSError as error:
        fail(f"--compilation_cache_dir: cannot create {error.filename} ({error.strerror}).")
    mesh = None
    if _MESH_SHAPE.value:
        shape = [int(size) for size in _MESH_SHAPE.value]  # checked by check_flags
        mesh = partitioning.make_mesh(shape, jax.local_devices())
    restored = restoring.restore_for_translation(
        _WORKDIR.value or _CHECKPOINT.value,
        average_last=_AVERAGE_LAST.value,
        config=_CONFIG.value,
        tokenizer_file=_TOKENIZER.value,
        mesh=mesh,
    )
    return JaxBackend(
        restored,
        DecodeSettings.from_config(restored.config.decode, **decode_overrides()),
        max_input_length=_MAX_INPUT_LENGTH.value or max_input_length(restored.config),
        max_rows=_MAX_BATCH_ROWS.value,
    )


def load_ctranslate2_backend() -> Backend:
    from serving.ctranslate2_backend import CTranslate2Backend

    return CTranslate2Backend(
        _CTRANSLATE2.value,
        source_lang=_SOURCE_LANG.value,
        target_lang=_TARGET_LANG.value,
        max_input_length=_MAX_INPUT_LENGTH.value,
        max_rows=_MAX_BATCH_ROWS.value,
        **decode_overrides(),
    )


def main(argv: Sequence[str]) -> None:
    import uvicorn

    if len(argv) > 1:
        fail(f"Unexpected arguments: {' '.join(argv[1:])}")
    check_flags()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)
    std_logging.getLogger("jax").setLevel(std_logging.WARNING)
    settings = ServerSettings(
        max_rows=_MAX_BATCH_ROWS.value,
        max_wait_ms=_MAX_WAIT_MS.value,
        max_queued=_MAX_QUEUED.value,
        request_timeout_s=_REQUEST_TIMEOUT_S.value,
        limits=Limits(char_limit=_CHAR_LIMIT.value, batch_limit=_BATCH_LIMIT.value),
    )
    failures: list[str] = []

    def on_failure(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    load = load_ctranslate2_backend if _CTRANSLATE2.value else load_jax_backend
    config = uvicorn.Config(
        create_app(load, settings, on_failure=on_failure),
        host=_HOST.value,
        port=_PORT.value,
        access_log=_ACCESS_LOG.value,
        http="httptools",  # the C parser (a `serve` dependency): less CPU per request than h11
        timeout_graceful_shutdown=int(_REQUEST_TIMEOUT_S.value) + 5,
        log_config=None,  # absl's logging handler prints uvicorn's lines too
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers
    # that does nothing, so a graceful shut-down exits 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    with contextlib.suppress(SystemExit):  # uvicorn could not listen (it logged why)
        server.run()
    if failures:
        message, code = f"serve.py: error: {failures[0]}", 1
    elif not server.started:
        message, code = f"serve.py: error: could not listen on {_HOST.value}:{_PORT.value}.", 1
    else:
        message, code = "", 0
    exit_now(message, code)


def exit_now(message: str, code: int) -> NoReturn:
    """Exits without interpreter shut-down: a model still compiling in the loader thread
    (a SIGTERM during start-up) would otherwise abort the process."""
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    app.run(main)
