"""Runs the real `train.py` in subprocesses for the training tests, with the tiny config of
tests/train_tiny_config.py, and reads what the runs wrote. Every process started here is killed
when its `TrainProcesses` context ends, whatever happened."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "train_tiny_config.py"
TIMEOUT_SECONDS = 300  # a run that takes longer than this is stuck


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """The tiny numbers corpus, generated once per test session (worker) and shared by runs."""
    import input_pipeline
    from tests import train_tiny_config

    directory = tmp_path_factory.mktemp("numbers_data")
    config = train_tiny_config.get_config()
    config.data.prepared_dir = str(directory)
    input_pipeline.prepare(config.data)
    return directory


def environment(num_devices: int) -> dict[str, str]:
    """CPU with `num_devices` simulated devices. XLA's backend optimisation is off: tiny models
    compile in a fraction of the time, and every run of a test uses the same setting."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={num_devices} --xla_backend_optimization_level=0"
    )
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def command(workdir: Path, prepared: Path, overrides: dict, extra_args=()) -> list[str]:
    args = [
        sys.executable,
        str(REPO / "train.py"),
        f"--config={TINY_CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.prepared_dir={prepared}",
    ]
    args += [f"--config.{key}={value}" for key, value in overrides.items()]
    return args + list(extra_args)


class TrainProcesses:
    """A context that starts train.py processes and kills any still running at its end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> TrainProcesses:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    def start(
        self, workdir: Path, prepared: Path, overrides: dict, *, devices: int = 1, extra_args=()
    ) -> subprocess.Popen:
        process = subprocess.Popen(
            command(workdir, prepared, overrides, extra_args),
            cwd=REPO,
            env=environment(devices),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process


def finish(process: subprocess.Popen, timeout: float = TIMEOUT_SECONDS) -> tuple[int, str, str]:
    """(return code, stdout, stderr) of a started process, killing it after `timeout`."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"train.py did not finish in {timeout} s:\n{stderr[-3000:]}")
    return process.returncode, stdout, stderr


def run(workdir: Path, prepared: Path, overrides: dict, *, devices: int = 1, extra_args=()):
    """Runs train.py to the end and checks it succeeded; returns (stdout, stderr)."""
    with TrainProcesses() as processes:
        code, stdout, stderr = finish(
            processes.start(workdir, prepared, overrides, devices=devices, extra_args=extra_args)
        )
    assert code == 0, f"train.py failed ({code}):\n{stderr[-4000:]}"
    return stdout, stderr


def metrics(workdir: Path) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl, without timing-dependent perf/* values."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        records.append({k: v for k, v in record.items() if not k.startswith("perf/")})
    return records


def train_losses(workdir: Path) -> list[float]:
    return [r["train/loss"] for r in metrics(workdir) if "train/loss" in r]


def checkpoint_steps(workdir: Path) -> list[int]:
    """Steps of the complete checkpoints (orbax renames a checkpoint only once written)."""
    directory = Path(workdir) / "checkpoints"
    return (
        sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
        if (directory.is_dir())
        else []
    )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = TIMEOUT_SECONDS):
    """Polls `condition()` until true; fails if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"train.py ended ({process.returncode}) before {what}:\n{stderr[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)


class StderrWatcher:
    """Reads a started process's stderr in a thread (so the pipe never fills), keeping the
    lines and noting when one containing `marker` arrives."""

    def __init__(self, process: subprocess.Popen, marker: str) -> None:
        self.lines: list[str] = []
        self.marker = marker
        self.seen = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.append(line)
            if self.marker in line:
                self.seen.set()

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)
