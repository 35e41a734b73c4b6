"""How long a training run takes from SIGTERM to exit (its preemption checkpoint written).

    python -m benchmarking.preemption --config=configs/default.py \
        --config.log_every_steps=100000 [--repos=OLD_CHECKOUT,.] [--repeats=3] \
        [--train_seconds=30] [--json=FILE]

Starts `train.py` in a fresh workdir, lets it train for --train_seconds after its set-up line,
sends SIGTERM, and times the exit. A first, unmeasured run of each checkout fills its JAX
compilation cache, so that measured runs train (rather than compile) after the set-up line.
Prints JSON: seconds from SIGTERM to exit per run, the step saved, the exit code and the
machine's load. --repos names checkouts (e.g. an older commit unpacked with `git archive`)
whose train.py take turns, on the same prepared data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
SETUP_LINE = "Batch: "  # training/loop.py logs it just before the first step

_CONFIG = flags.DEFINE_string("config", "configs/default.py", "Config file for train.py.")
_REPOS = flags.DEFINE_list(
    "repos", [str(REPO)], "Checkouts whose train.py runs, taking turns (interleaved A/B)."
)
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs, each in a fresh workdir.")
_TRAIN_SECONDS = flags.DEFINE_float(
    "train_seconds", 30.0, "Seconds between the set-up line and SIGTERM."
)
_PREPARED = flags.DEFINE_string(
    "prepared_dir", "", "config.data.prepared_dir shared by every run ('' = a temporary one)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this file.")


def config_overrides(argv: Sequence[str]) -> list[str]:
    """The --config.FIELD=VALUE arguments, passed on to train.py."""
    return [arg for arg in argv if arg.startswith("--config.")]


def time_one_preemption(
    repo: Path,
    config: str,
    overrides: list[str],
    workdir: Path,
    train_seconds: float,
    cache_dir: Path,
) -> dict[str, float | int | None]:
    """One run: start, wait for the set-up line + train_seconds, SIGTERM, time the exit.
    Compiled programs are cached in `cache_dir` (JAX's persistent cache), so that after a
    first run the seconds after the set-up line are spent training, not compiling."""
    process = subprocess.Popen(
        [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *overrides],
        cwd=repo,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_dir)},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    set_up = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        for line in process.stderr:
            lines.append(line)
            if SETUP_LINE in line:
                set_up.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not set_up.wait(timeout=600):
            raise RuntimeError("train.py never reached its first step:\n" + "".join(lines[-20:]))
        time.sleep(train_seconds)
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=1800)
        exit_seconds = time.perf_counter() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    checkpoints = workdir / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    return {
        "load_average_1min": round(os.getloadavg()[0], 1),
        "sigterm_to_exit_s": round(exit_seconds, 2),
        "saved_step": steps[-1] if steps else None,
        "exit_code": code,
    }


def main(argv: Sequence[str]) -> None:
    overrides = config_overrides(argv)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = _PREPARED.value or str(Path(scratch) / "data")
        overrides = [f"--config.data.prepared_dir={prepared}", *overrides]
        runs: dict[str, list] = {repo: [] for repo in _REPOS.value}
        for i in range(_REPEATS.value + 1):  # round 0 fills the compilation caches
            for j, repo in enumerate(_REPOS.value):
                figures = time_one_preemption(
                    Path(repo),
                    _CONFIG.value,
                    overrides,
                    Path(scratch) / f"run{i}_{j}",
                    _TRAIN_SECONDS.value if i else 1.0,
                    Path(scratch) / f"jax_cache_{j}",
                )
                if i:
                    runs[repo].append(figures)
    figures = {
        "config": _CONFIG.value,
        "overrides": overrides,
        "train_seconds": _TRAIN_SECONDS.value,
        "runs": runs,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures, indent=1))
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    known = [arg for arg in sys.argv if not arg.startswith("--config.")]
    app.run(lambda _: main(sys.argv), argv=known)
