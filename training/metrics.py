"""Where training metrics go: a progress line, TensorBoard event files and WORKDIR/metrics.jsonl.

Only process 0 writes; on the other processes the writer is silent, so callers need no
`if process_index == 0` of their own.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """Appends one JSON object per logged step to WORKDIR/metrics.jsonl and the same scalars to
    TensorBoard (tensorboardX, no TensorFlow needed)."""

    def __init__(self, workdir: str | Path, *, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tensorboard = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR))

    def drop_after(self, step: int) -> None:
        """Forgets records of steps after `step`: a run resumed from the checkpoint at `step`
        logs those steps again, and the file should read as one uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` (e.g. {'train/loss': 2.1}) for `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _json_number(v) for k, v in sorted(scalars.items())}}
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, value, int(step))
        self._tensorboard.flush()

    def write_text(self, step: int, name: str, text: str) -> None:
        """A text entry in TensorBoard (e.g. sample translations)."""
        if self.enabled:
            self._tensorboard.add_text(name, text, int(step))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _json_number(value: Any) -> float | int | str:
    """JSON has no NaN/Infinity: write them as strings so that the file stays valid JSON."""
    value = float(value)
    if math.isfinite(value):
        return value
    return str(value)


class Throughput:
    """Steps and non-padding tokens per second between two progress lines, and the ETA."""

    def __init__(self, start_step: int, total_steps: int) -> None:
        self.total_steps = total_steps
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def update(self, step: int, tokens: float) -> dict[str, float]:
        """perf/* scalars for the steps up to `step`, which trained on `tokens` tokens."""
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        steps_per_second = (step - self._last_step) / seconds
        self._last_step, self._last_time = step, now
        remaining = self.total_steps - step
        return {
            "perf/steps_per_second": steps_per_second,
            "perf/tokens_per_second": tokens / seconds,
            "perf/eta_seconds": remaining / steps_per_second if steps_per_second > 0 else 0.0,
        }

    def restart_clock(self, step: int) -> None:
        """Excludes time spent outside training steps (evaluation, checkpoints)."""
        self._last_step, self._last_time = step, time.perf_counter()


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 65 -> '1m05s', 5 -> '5s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_line(step: int, total_steps: int, scalars: dict[str, float]) -> str:
    """'step 300/3000 | loss 2.3456 | acc 0.412 | lr 1.23e-03 | 5.10 steps/s |
    20.3k tok/s | ETA 8m50s'."""
    return " | ".join(
        [
            f"step {step}/{total_steps}",
            f"loss {scalars['train/loss']:.4f}",
            f"acc {scalars['train/accuracy']:.3f}",
            f"lr {scalars['train/learning_rate']:.3e}",
            f"{scalars['perf/steps_per_second']:.2f} steps/s",
            f"{scalars['perf/tokens_per_second'] / 1000:.1f}k tok/s",
            f"ETA {format_duration(scalars['perf/eta_seconds'])}",
        ]
    )


def log_evaluation(step: int, scalars: dict[str, float]) -> None:
    """One line with every eval/* scalar."""
    parts = [
        f"{name.removeprefix('eval/')} {value:.4f}"
        for name, value in sorted(scalars.items())
        if name.startswith("eval/")
    ]
    logging.info("eval at step %d | %s", step, " | ".join(parts))
