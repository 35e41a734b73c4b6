"""plot_metrics.py reads metrics.jsonl (with a resumed run's repeated steps) and writes a PNG."""

import json
import subprocess
import sys

import pytest

import plot_metrics
from tests.conftest import REPO_ROOT


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_read_series_keeps_the_last_value_of_a_repeated_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(
        path,
        [
            {"step": 100, "train/loss": 5.0},
            {"step": 200, "train/loss": 4.0, "eval/bleu": 1.5},
            {"step": 200, "train/loss": 3.9},  # the resumed run logged step 200 again
            {"step": 300, "train/loss": float("nan")},  # non-finite values are skipped
        ],
    )
    series = plot_metrics.read_series(path)
    assert series["train/loss"] == [(100, 5.0), (200, 3.9)]
    assert series["eval/bleu"] == [(200, 1.5)]


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        plot_metrics.read_series(path)


def test_command_writes_a_png(tmp_path):
    write_metrics(
        tmp_path / "metrics.jsonl",
        [{"step": s, "train/loss": 6.0 / s, "eval/bleu": float(s)} for s in (1, 2, 3)],
    )
    output = tmp_path / "plot.png"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "plot_metrics.py"),
            f"--workdir={tmp_path}",
            f"--output={output}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
