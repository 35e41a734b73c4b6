"""serve.py as users run it: a server subprocess on 127.0.0.1 over the tiny checkpoint of
tests/test_translate.py, driven by the real `libretranslatepy` client; its translations are
translate.py's for the same checkpoint and settings, with one client or 32 at once; SIGTERM
during load answers every request in flight and exits 0. Also: the JAX backend's translation
of a sentence does not depend on its batch-mates; bad flags are one-line errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from num2words import num2words

from decoding.settings import DecodeSettings
from serving.jax_backend import JaxBackend
from tests import train_runner
from tests.test_translate import sharp_checkpoint, workdir  # noqa: F401  (fixtures)
from training import restoring

libretranslatepy = pytest.importorskip("libretranslatepy", reason="pip install '.[test]'")

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [num2words(n) for n in (7, 12, 40, 99, 100, 101, 250, 333, 512, 640, 777, 808)]
SENTENCES += [num2words(n) for n in range(901, 921)]  # 32 in all, each under 16 subwords
DECODE_FLAGS = ["--beam_size=2", "--max_extra_length=5"]
SERVER_FLAGS = ["--max_batch_rows=8", "--max_input_length=16", "--max_wait_ms=20"]
START_TIMEOUT_S = 400  # compiling 2 buckets x 4 batch sizes on a loaded 2-core machine


def start_server(checkpoint: Path, port: int, cache: Path, *extra: str) -> subprocess.Popen:
    args = [f"--checkpoint={checkpoint}", f"--port={port}", f"--compilation_cache_dir={cache}"]
    return subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), *args, *DECODE_FLAGS, *SERVER_FLAGS, *extra],
        cwd=REPO,
        env=train_runner.environment(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_healthy(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve.py ended ({process.returncode}):\n{process.stderr.read()[-3000:]}")
        try:
            if get(url + "/health")[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, "serve.py did not become healthy"
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return process.returncode, stderr


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def expected(sharp_checkpoint) -> dict[str, str]:  # noqa: F811
    """translate.py's translation of every sentence, with the server's XLA settings."""
    result = subprocess.run(
        [sys.executable, "translate.py", "--noprogress", f"--checkpoint={sharp_checkpoint}"]
        + DECODE_FLAGS,
        cwd=REPO,
        env=train_runner.environment(1),
        input="\n".join(SENTENCES) + "\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    translations = result.stdout.split("\n")[:-1]
    assert len(translations) == len(SENTENCES) and len(set(translations)) >= 8, translations
    return dict(zip(SENTENCES, translations, strict=True))


@pytest.fixture(scope="module")
def server(sharp_checkpoint, cache):  # noqa: F811
    port = train_runner.free_port()
    process = start_server(sharp_checkpoint, port, cache)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url)
        yield url
    finally:
        code, stderr = stop(process)
    assert code == 0, stderr[-3000:]


@pytest.mark.slow
def test_the_libretranslate_client_gets_translate_py_translations(server, expected):
    client = libretranslatepy.LibreTranslateAPI(server)
    assert client.languages() == [{"code": "en", "name": "English", "targets": ["de"]}]
    for sentence in SENTENCES[:8]:
        assert client.translate(sentence, "en", "de", timeout=60) == expected[sentence]
    assert client.translate(SENTENCES[0], "auto", "de", timeout=60) == expected[SENTENCES[0]]
    with pytest.raises(urllib.error.HTTPError) as error:
        client.translate("one", "fr", "de", timeout=60)
    assert error.value.code == 400
    assert "fr is not supported" in json.loads(error.value.read())["error"]


@pytest.mark.slow
def test_32_concurrent_clients_get_translate_py_translations_batched(server, expected):
    def metric(name: str) -> float:
        text = get(server + "/metrics")[1].decode()
        return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))

    sentences_before = metric("translate_sentences_total")
    batches_before = metric("translate_batch_sentences_count")
    barrier = threading.Barrier(32)

    def one_client(sentence: str) -> str:
        client = libretranslatepy.LibreTranslateAPI(server)
        barrier.wait(timeout=60)
        return client.translate(sentence, "en", "de", timeout=120)

    with ThreadPoolExecutor(32) as pool:
        translations = list(pool.map(one_client, SENTENCES))
    assert translations == [expected[sentence] for sentence in SENTENCES]
    sentences = metric("translate_sentences_total") - sentences_before
    batches = metric("translate_batch_sentences_count") - batches_before
    assert sentences == 32 and batches <= 16, (sentences, batches)  # decoded together


@pytest.mark.slow
def test_sigterm_during_load_answers_every_request_in_flight_and_exits_0(
    sharp_checkpoint,  # noqa: F811
    cache,
    expected,
    server,  # compiles into the cache first: this start-up reads it
):
    port = train_runner.free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(sharp_checkpoint, port, cache)
    outcomes: list[tuple[float, str, str | None]] = []  # (start, sentence, answer or None)
    stop_clients = threading.Event()

    def client(sentence: str) -> None:
        api = libretranslatepy.LibreTranslateAPI(url)
        while not stop_clients.is_set():
            start = time.monotonic()
            try:
                outcomes.append((start, sentence, api.translate(sentence, "en", "de", 60)))
            except OSError:  # refused: the server no longer accepts connections
                outcomes.append((start, sentence, None))
                return

    try:
        wait_healthy(process, url)
        threads = [threading.Thread(target=client, args=(s,)) for s in SENTENCES[:16]]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code, stderr = process.wait(timeout=120), process.stderr.read()
    finally:
        stop_clients.set()
        if process.poll() is None:
            process.kill()
        process.wait()
    for thread in threads:
        thread.join(timeout=60)
    assert code == 0, stderr[-3000:]
    answered = [(sentence, answer) for _, sentence, answer in outcomes if answer is not None]
    assert len(answered) >= 16
    assert all(answer == expected[sentence] for sentence, answer in answered)
    # Every request sent before the signal (and its 0.1 s tick) was answered.
    refused_early = [start for start, _, answer in outcomes if answer is None]
    assert all(start > signalled - 0.2 for start in refused_early), (signalled, refused_early)
    assert "Finished server process" in stderr


@pytest.mark.slow
def test_a_sentence_translates_the_same_alone_and_in_any_batch(sharp_checkpoint):  # noqa: F811
    restored = restoring.restore_for_translation(sharp_checkpoint)
    settings = DecodeSettings.from_config(restored.config.decode, beam_size=2, max_extra_length=5)
    backend = JaxBackend(restored, settings, max_input_length=16, max_rows=8)
    encoded = [backend.encode(sentence) for sentence in SENTENCES]
    by_bucket = [e for e in encoded if e.bucket == encoded[0].bucket][:7]
    alone = [backend.decode_batch([e])[0].text for e in by_bucket]  # 1 row
    together = [d.text for d in backend.decode_batch(by_bucket)]  # 7 rows padded to 8
    reversed_ = [d.text for d in backend.decode_batch(by_bucket[::-1])][::-1]
    assert alone == together == reversed_
    assert len(set(alone)) >= 3, alone
    # Padded to a longer bucket (as when shorter sentences fill a batch's spare rows).
    longer = [e for e in encoded if e.bucket > by_bucket[0].bucket][:1]
    assert longer, [e.bucket for e in encoded]
    mixed = [d.text for d in backend.decode_batch(longer + by_bucket)][1:]
    assert mixed == alone


def serve_command(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), *args],
        cwd=REPO,
        env=train_runner.environment(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_one_line_errors(cases: dict[str, list[str]]) -> None:
    started = {message: serve_command(*args) for message, args in cases.items()}  # in parallel
    for message, process in started.items():
        _, stderr = process.communicate(timeout=300)
        last = stderr.strip().splitlines()[-1]
        assert process.returncode == 1 and last.startswith("serve.py: error: "), stderr[-2000:]
        assert message in last, stderr[-2000:]


def test_help_and_bad_flags_are_one_line_errors():
    helped = serve_command("--help")
    assert_one_line_errors(
        {
            "Pass exactly one of --workdir=DIR": [],
            "--max_batch_rows must be at least 1, got 0": ["--workdir=x", "--max_batch_rows=0"],
            "--mesh_shape takes integers": ["--workdir=x", "--mesh_shape=a,b"],
            "Unexpected arguments: extra": ["--workdir=x", "extra"],
        }
    )
    assert "--max_batch_rows" in helped.communicate(timeout=120)[0]


@pytest.mark.slow
def test_a_model_that_cannot_load_ends_the_server_with_a_one_line_error(tmp_path):
    port = train_runner.free_port
    assert_one_line_errors(
        {
            "is not a CTranslate2 export": [f"--ctranslate2={tmp_path}", f"--port={port()}"],
            "No checkpoint found at": [f"--workdir={tmp_path}", f"--port={port()}"],
        }
    )
