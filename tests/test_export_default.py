"""The default recipe's checkpoint (configs/default.py, what `make train` trains) exported with
export.py: CTranslate2 greedy search gives `translate.py --beam_size=1`'s output on at least
99% of the test split's lines. Slow: it trains the default model first (minutes on a quiet
2-core machine), then runs both commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install '.[export]')")

import exporting  # noqa: E402
from configs import default  # noqa: E402
from decoding.settings import DecodeSettings  # noqa: E402
from input_pipeline import raw_examples  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def run(script: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_ctranslate2_greedy_gives_translate_py_greedy_output(tmp_path):
    workdir, prepared = tmp_path / "run", tmp_path / "data"
    run(
        "train.py",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.prepared_dir={prepared}",
    )
    config = default.get_config()
    config.data.prepared_dir = str(prepared)
    sources = [source for source, _ in raw_examples(config.data, config.data.test_split)]
    (tmp_path / "test.src").write_text("\n".join(sources) + "\n", encoding="utf-8")
    run(
        "translate.py",
        f"--workdir={workdir}",
        "--beam_size=1",
        f"--input={tmp_path / 'test.src'}",
        f"--output={tmp_path / 'ours.txt'}",
        "--noprogress",
    )
    run("export.py", f"--workdir={workdir}", f"--output={tmp_path / 'ct2'}")

    ours = (tmp_path / "ours.txt").read_text(encoding="utf-8").splitlines()
    translator = exporting.ExportedTranslator(tmp_path / "ct2")
    greedy = DecodeSettings.from_config(translator.info["decode"], strategy="greedy")
    theirs = translator.translate(sources, greedy)
    assert len(ours) == len(theirs) == len(sources)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(sources)
    assert same >= 0.99, f"{same:.2%} of lines the same"
