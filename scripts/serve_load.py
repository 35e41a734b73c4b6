"""Load on a running serve.py: latency and throughput of one request at a time against N
concurrent single-sentence clients, interleaved (A, B, A, B, ...) so both see the same machine.

    python serve.py --workdir=runs/default --port=5000 &       # wait for /health: 200
    python scripts/serve_load.py --url=http://127.0.0.1:5000 --input=test.en \\
        [--clients=32] [--requests=256] [--rounds=2] [--max_seconds=600]

Each round sends `--requests` sentences one at a time, then the same sentences from
`--clients` threads spread over `--processes` processes (each request one sentence, the next
sentence as soon as the last is answered; one keep-alive connection per client). Prints one
JSON object: for each mode the requests answered, errors, seconds, requests/s and p50/p99
latency in milliseconds over all rounds, and the throughput ratio.
Loopback only; bounded by --requests x --rounds x 2 requests and by --max_seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import multiprocessing
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from absl import app, flags

_URL = flags.DEFINE_string("url", "http://127.0.0.1:5000", "The server (loopback only).")
_INPUT = flags.DEFINE_string(
    "input", None, "Sentences, one per line (default: numbers written out in English)."
)
_SOURCE = flags.DEFINE_string("source", "auto", "The source language sent.")
_TARGET = flags.DEFINE_string("target", None, "The target language (default: GET /languages).")
_CLIENTS = flags.DEFINE_integer("clients", 32, "Concurrent clients in the concurrent mode.")
_REQUESTS = flags.DEFINE_integer("requests", 256, "Requests per mode and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds of (one at a time, concurrent).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 600, "Stop sending after this many seconds.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 120, "Per-request timeout.")
_PROCESSES = flags.DEFINE_integer(
    "processes",
    4,
    "Client processes that share the concurrent clients: threads of one Python process "
    "contend for its interpreter lock and would measure the load script, not the server.",
)


def check_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # not an IP address
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback:
        sys.exit(f"serve_load.py: error: {url} is not a loopback address (127.0.0.1, ::1).")


def sentences() -> list[str]:
    if _INPUT.value:
        lines = Path(_INPUT.value).read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.strip()]
    from num2words import num2words

    return [num2words(n) for n in range(1, 2001, 7)]


_connections = threading.local()  # one keep-alive connection per client thread


def translate(url: str, text: str, target: str) -> None:
    """POST /translate over this thread's keep-alive connection (as browsers and HTTP client
    libraries do), so that a request costs the server a request, not a TCP handshake."""
    if getattr(_connections, "connection", None) is None:
        parts = urllib.parse.urlsplit(url)
        _connections.connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=_TIMEOUT_S.value
        )
    body = json.dumps({"q": text, "source": _SOURCE.value, "target": target})
    try:
        _connections.connection.request(
            "POST", "/translate", body, {"Content-Type": "application/json"}
        )
        response = _connections.connection.getresponse()
        answer = json.loads(response.read())
    except (OSError, http.client.HTTPException):
        _connections.connection.close()
        _connections.connection = None
        raise
    if response.status != 200:
        raise urllib.error.HTTPError(url, response.status, str(answer), response.headers, None)
    answer["translatedText"]


def run_mode(url: str, texts: list[str], target: str, clients: int, deadline: float) -> dict:
    """Sends `texts` from `clients` threads; latencies (s) of the answered ones, errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def one(text: str) -> None:
        if time.monotonic() > deadline:
            return
        start = time.monotonic()
        try:
            translate(url, text, target)
        except (OSError, http.client.HTTPException, KeyError, json.JSONDecodeError):
            with lock:
                errors[0] += 1
            return
        with lock:
            latencies.append(time.monotonic() - start)

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts))
    return {"latencies": latencies, "errors": errors[0], "seconds": time.monotonic() - start}


def run_mode_in_processes(
    pool: ProcessPoolExecutor,
    url: str,
    texts: list[str],
    target: str,
    clients: int,
    deadline: float,
) -> dict:
    """run_mode with `clients` spread over the pool's processes, each sending its share of
    `texts`; the seconds are the wall time of the whole."""
    processes = _PROCESSES.value
    start = time.monotonic()
    shares = [
        pool.submit(run_mode, url, texts[i::processes], target, clients // processes, deadline)
        for i in range(processes)
    ]
    runs = [share.result() for share in shares]
    return {
        "latencies": [latency for run in runs for latency in run["latencies"]],
        "errors": sum(run["errors"] for run in runs),
        "seconds": time.monotonic() - start,
    }


def summary(runs: list[dict]) -> dict:
    latencies = sorted(latency for run in runs for latency in run["latencies"])
    seconds = sum(run["seconds"] for run in runs)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies),
        "errors": sum(run["errors"] for run in runs),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 2) if seconds else None,
        "p50_ms": round(1000 * quantiles[49], 1) if latencies else None,
        "p99_ms": round(1000 * quantiles[98], 1) if latencies else None,
    }


def main(argv: Sequence[str]) -> None:
    url = _URL.value.rstrip("/")
    check_loopback(url)
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        assert response.status == 200
    target = _TARGET.value
    if target is None:
        with urllib.request.urlopen(url + "/languages", timeout=10) as response:
            target = json.loads(response.read())[0]["targets"][0]
    texts = sentences()
    texts = [texts[i % len(texts)] for i in range(_REQUESTS.value)]
    deadline = time.monotonic() + _MAX_SECONDS.value
    if _CLIENTS.value % _PROCESSES.value:
        raise app.UsageError(f"--clients must be a multiple of --processes={_PROCESSES.value}")
    sequential, concurrent = [], []
    with ProcessPoolExecutor(
        _PROCESSES.value, mp_context=multiprocessing.get_context("fork")
    ) as pool:
        list(pool.map(abs, range(_PROCESSES.value)))  # start the processes before timing
        for _ in range(_ROUNDS.value):
            sequential.append(run_mode(url, texts, target, 1, deadline))
            concurrent.append(
                run_mode_in_processes(pool, url, texts, target, _CLIENTS.value, deadline)
            )
    one, many = summary(sequential), summary(concurrent)
    ratio = many["requests_per_s"] / one["requests_per_s"] if one["requests_per_s"] else None
    report = {
        "url": url,
        "rounds": _ROUNDS.value,
        "one_at_a_time": one,
        f"{_CLIENTS.value}_concurrent": many,
        "throughput_ratio": round(ratio, 2) if ratio else None,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
