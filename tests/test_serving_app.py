"""The server in-process (Starlette's TestClient) over a stand-in backend that reverses and
upper-cases words: every endpoint, every client error (always JSON, never a 500), start-up
and its failure, timeouts, a full queue; and the batcher's grouping, waiting and dropping of
cancelled sentences. The real decoders are tested in tests/test_serve.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from starlette.testclient import TestClient

from decoding.translator import bucket_length
from serving.app import ServerSettings, create_app
from serving.backend import Decoded, Encoded
from serving.batching import Batcher, QueueFull
from serving.metrics import ServerMetrics
from serving.requests import Limits


class WordsBackend:
    """A word is a token; the translation is the words reversed, upper-cased."""

    source_lang, target_lang, max_rows, description = "en", "de", 8, "reversed words"

    def __init__(self, *, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s, self.gate = delay_s, gate
        self.batches: list[list[tuple]] = []

    def encode(self, text: str) -> Encoded:
        words = tuple(text.split())
        return Encoded(words[:16], bucket_length(len(words) + 1, 32), len(words) > 16)

    def decode_batch(self, batch):
        self.batches.append([e.tokens for e in batch])
        time.sleep(self.delay_s)
        return [Decoded(" ".join(reversed(e.tokens)).upper(), len(e.tokens)) for e in batch]

    def warm_up(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(timeout=30)


def settings(**changes) -> ServerSettings:
    values = dict(
        max_rows=8,
        max_wait_ms=5,
        max_queued=100,
        request_timeout_s=10,
        limits=Limits(char_limit=200, batch_limit=4),
    )
    return ServerSettings(**{**values, **changes})


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.01)


@pytest.fixture
def client():
    with TestClient(create_app(WordsBackend, settings())) as client:
        wait_ready(client)
        yield client


# ---------------------------------------------------------------- endpoints


def test_health_is_503_until_loaded_then_ok():
    gate = threading.Event()
    app = create_app(lambda: WordsBackend(gate=gate), settings())
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        assert client.get("/health").json() == {"status": "loading"}
        response = client.post("/translate", json={"q": "a b", "source": "en", "target": "de"})
        assert response.status_code == 503 and "loading" in response.json()["error"]
        assert client.get("/languages").status_code == 503
        gate.set()
        wait_ready(client)
        assert client.get("/health").json() == {"status": "ok"}


def test_a_failed_load_is_reported_by_health_and_the_callback():
    failures = []

    def load():
        raise FileNotFoundError("No checkpoint found at /nowhere: check --workdir.")

    with TestClient(create_app(load, settings(), on_failure=failures.append)) as client:
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json() == {"status": "failed", "error": failures[0]}
        assert "No checkpoint found at /nowhere" in failures[0]
        translate = client.post("/translate", data={"q": "a", "source": "en", "target": "de"})
        assert translate.status_code == 503 and "failed to load" in translate.json()["error"]


def test_translate_json_form_query_and_lists(client):
    def translated(**kwargs):
        response = client.post("/translate", **kwargs)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()

    fields = {"source": "en", "target": "de"}
    assert translated(json={"q": "one two", **fields}) == {"translatedText": "TWO ONE"}
    assert translated(json={"q": ["a b", "  ", "c"], **fields}) == {
        "translatedText": ["B A", "", "C"]
    }
    assert translated(data={"q": "x y", "source": "auto", "target": "de"}) == {
        "translatedText": "Y X"
    }
    assert translated(files={"q": (None, "m n"), "source": (None, "en"), "target": (None, "de")})
    assert translated(params={"q": "p q", **fields}) == {"translatedText": "Q P"}
    # Lines are sentences: each is translated, blank lines kept, CRLF read as LF.
    assert translated(json={"q": "a b\r\n\nc d", **fields}) == {"translatedText": "B A\n\nD C"}
    assert translated(json={"q": "ü ß", "format": "text", "api_key": "", **fields}) == {
        "translatedText": "SS Ü"
    }


def test_languages_ignores_a_body_on_get(client):
    response = client.request(
        "GET",
        "/languages",
        content=b"",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json() == [{"code": "en", "name": "English", "targets": ["de"]}]
    with_body = client.request("GET", "/languages", content=b"api_key=x")
    assert with_body.json() == response.json()


def test_metrics_count_requests_errors_batches_and_tokens(client):
    client.post("/translate", json={"q": ["a b c", "d"], "source": "en", "target": "de"})
    client.post("/translate", json={"q": "a", "source": "fr", "target": "de"})
    client.post("/translate", content=b"{", headers={"Content-Type": "application/json"})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in [
        'translate_requests_total{endpoint="translate"} 3.0',
        'translate_errors_total{kind="unsupported_language"} 1.0',
        'translate_errors_total{kind="bad_request"} 1.0',
        "translate_sentences_total 2.0",
        "translate_source_tokens_total 4.0",
        "translate_output_tokens_total 4.0",
        "translate_batch_sentences_count",
        "translate_queue_wait_seconds_bucket",
        "translate_decode_seconds_sum",
        "translate_request_seconds_count 1.0",
        "translate_queued_sentences 0.0",
    ]:
        assert line in text, line


# ---------------------------------------------------------------- client errors: 4xx JSON


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"json": {"source": "en", "target": "de"}}, 400, "missing q parameter"),
        ({"json": {"q": "", "source": "en", "target": "de"}}, 400, "missing q parameter"),
        ({"json": {"q": [], "source": "en", "target": "de"}}, 400, "missing q parameter"),
        ({"json": {"q": 5, "source": "en", "target": "de"}}, 400, "q must be a string or a list"),
        ({"json": {"q": ["a", 2], "source": "en", "target": "de"}}, 400, "a list of strings"),
        ({"json": {"q": "a", "target": "de"}}, 400, "missing source parameter"),
        ({"json": {"q": "a", "source": "en"}}, 400, "missing target parameter"),
        ({"json": {"q": "a", "source": ["en"], "target": "de"}}, 400, "source must be a string"),
        (
            {"json": {"q": "a", "source": "fr", "target": "de"}},
            400,
            "fr is not supported as source",
        ),
        (
            {"json": {"q": "a", "source": "en", "target": "fr"}},
            400,
            "fr is not supported as target",
        ),
        ({"json": {"q": "a", "source": "en", "target": "auto"}}, 400, "auto is not supported"),
        (
            {"json": {"q": "a", "source": "en", "target": "de", "format": "html"}},
            400,
            "format 'html' is not supported: send plain text",
        ),
        (
            {"json": {"q": "a", "source": "en", "target": "de", "alternatives": 2}},
            400,
            "no alternative translations",
        ),
        (
            {"data": {"q": "a", "source": "en", "target": "de", "alternatives": "two"}},
            400,
            "alternatives must be an integer",
        ),
        (
            {"json": {"q": ["a"] * 5, "source": "en", "target": "de"}},
            400,
            "5 texts exceed the batch limit of 4",
        ),
        (
            {"json": {"q": ["a" * 150, "b" * 51], "source": "en", "target": "de"}},
            400,
            "201 characters exceed the limit of 200",
        ),
        (
            {"content": b'{"q": "a", ', "headers": {"Content-Type": "application/json"}},
            400,
            "malformed JSON",
        ),
        (
            {"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ({"json": ["a", "en", "de"]}, 400, "the JSON body must be an object, got list"),
        ({"content": b"x" * 900_000}, 413, "The request body is over"),
        (
            {
                "content": b"--b\r\nContent-Disposition: form-data; name=q\r\n\r\nhi",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            400,
            "Invalid request",
        ),
    ],
)
def test_client_errors_are_json_with_libretranslate_status(client, kwargs, status, message):
    response = client.post("/translate", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"], response.json()
    again = client.post("/translate", json={"q": "still up", "source": "en", "target": "de"})
    assert again.json() == {"translatedText": "UP STILL"}


def test_unknown_paths_and_methods_are_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = client.get("/translate")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}


def test_a_slow_decoder_times_out_and_drops_the_queued_sentences():
    backend = WordsBackend(delay_s=0.5)
    app = create_app(lambda: backend, settings(request_timeout_s=0.2, max_rows=1))
    with TestClient(app) as client:
        wait_ready(client)
        fields = {"source": "en", "target": "de"}
        response = client.post("/translate", json={"q": ["a", "b", "c", "d"], **fields})
        assert response.status_code == 503
        assert "did not finish within 0.2 s" in response.json()["error"]
        time.sleep(0.6)  # the batch started before the timeout ends; the rest never start
        assert backend.batches == [[("a",)]]
        later = client.post("/translate", json={"q": "e f", **fields})
        assert later.status_code == 503  # 0.5 s decoding > 0.2 s timeout
        assert 'translate_errors_total{kind="timeout"} 2.0' in client.get("/metrics").text


def test_a_full_queue_answers_503():
    gate_decoder = threading.Event()

    class Blocked(WordsBackend):
        def decode_batch(self, batch):
            gate_decoder.wait(timeout=30)
            return super().decode_batch(batch)

    app = create_app(Blocked, settings(max_queued=3, max_rows=1))
    with TestClient(app) as client:
        wait_ready(client)
        fields = {"source": "en", "target": "de"}
        results = []
        first = threading.Thread(
            target=lambda: results.append(client.post("/translate", json={"q": ["a"], **fields}))
        )
        first.start()
        time.sleep(0.2)  # "a" is decoding (blocked); the queue is empty
        full = client.post("/translate", json={"q": ["b", "c", "d", "e"], **fields})
        assert full.status_code == 503 and "server is busy" in full.json()["error"]
        gate_decoder.set()
        first.join()
        assert results[0].json() == {"translatedText": ["A"]}


# ---------------------------------------------------------------- the batcher


def encoded(length: int, name: str) -> Encoded:
    return Encoded((name,) * length, bucket_length(length, 32), False)


def test_batcher_groups_by_bucket_fills_with_shorter_caps_rows_and_keeps_order():
    calls = []

    def decode(batch):
        calls.append([e.tokens[0] for e in batch])
        return [Decoded(e.tokens[0], 1) for e in batch]

    batcher = Batcher(decode, max_rows=4, max_wait_s=0.05, max_queued=100, metrics=ServerMetrics())
    short = [encoded(3, f"s{i}") for i in range(6)]  # bucket 8
    long = [encoded(20, f"l{i}") for i in range(3)]  # bucket 32
    futures = batcher.submit([short[0], long[0], short[1], long[1], short[2], short[3]])
    futures += batcher.submit([short[4], long[2], short[5]])
    batcher.start()
    results = [future.result(timeout=10).text for future in futures]
    batcher.stop()
    assert results == ["s0", "l0", "s1", "l1", "s2", "s3", "s4", "l2", "s5"]
    # The long bucket's spare row takes the oldest short sentence; a short batch never takes
    # a long sentence.
    assert calls == [["s0", "s1", "s2", "s3"], ["l0", "l1", "l2", "s4"], ["s5"]]


def test_batcher_waits_for_batch_mates_at_most_max_wait_and_drops_cancelled():
    calls, started = [], []

    def decode(batch):
        started.append(time.monotonic())
        calls.append([e.tokens[0] for e in batch])
        return [Decoded(e.tokens[0], 1) for e in batch]

    batcher = Batcher(decode, max_rows=8, max_wait_s=0.3, max_queued=3, metrics=ServerMetrics())
    batcher.start()
    submitted = time.monotonic()
    first, dropped = batcher.submit([encoded(2, "a"), encoded(2, "gone")])
    assert dropped.cancel()
    with pytest.raises(QueueFull):
        batcher.submit([encoded(2, "x")] * 2)  # 2 queued + 2 > 3: all or none
    (second,) = batcher.submit([encoded(2, "b")])
    assert second.result(timeout=10).text == "b" and first.result().text == "a"
    assert 0.25 <= started[0] - submitted < 5  # waited for batch-mates, then went
    assert calls == [["a", "b"]]
    batcher.stop()
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit([encoded(2, "late")])


def test_batcher_stop_decodes_what_is_queued_and_a_decoder_error_fails_only_its_batch():
    def decode(batch):
        if batch[0].tokens[0] == "bad":
            raise RuntimeError("decoder bug")
        return [Decoded(e.tokens[0], 1) for e in batch]

    batcher = Batcher(decode, max_rows=8, max_wait_s=60, max_queued=10, metrics=ServerMetrics())
    batcher.start()
    bad = batcher.submit([encoded(2, "bad")])[0]  # first, so its (short) bucket goes first
    good: list[Future] = batcher.submit([encoded(20, "ok"), encoded(20, "ok")])
    batcher.stop()  # does not wait the 60 s: stopping makes every bucket ready
    assert [future.result(timeout=0).text for future in good] == ["ok", "ok"]
    with pytest.raises(RuntimeError, match="decoder bug"):
        bad.result(timeout=0)


def test_batcher_waits_after_a_decode_so_the_clients_it_answered_can_join():
    """B arrives while A decodes (0.8 s); C arrives 0.4 s after A's answer. Counting B's wait
    (1 s) from its arrival would start B alone 0.2 s after A's end; counting it from A's end
    lets C join."""
    calls, decoding = [], threading.Event()

    def decode(batch):
        calls.append([e.tokens[0] for e in batch])
        decoding.set()
        time.sleep(0.8 if batch[0].tokens[0] == "a" else 0)
        return [Decoded(e.tokens[0], 1) for e in batch]

    batcher = Batcher(decode, max_rows=8, max_wait_s=1.0, max_queued=10, metrics=ServerMetrics())
    batcher.start()
    (a,) = batcher.submit([encoded(2, "a")])
    assert decoding.wait(timeout=10)
    (b,) = batcher.submit([encoded(2, "b")])
    a.result(timeout=10)
    time.sleep(0.4)
    (c,) = batcher.submit([encoded(2, "c")])
    assert (b.result(timeout=10).text, c.result(timeout=10).text) == ("b", "c")
    batcher.stop()
    assert calls == [["a"], ["b", "c"]]
