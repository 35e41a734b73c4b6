"""Plot a run's WORKDIR/metrics.jsonl: training loss and validation BLEU against steps.

python plot_metrics.py --workdir=runs/multi30k --output=docs/multi30k.png
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding metrics.jsonl.")
_METRICS = flags.DEFINE_string("metrics", None, "Path to a metrics.jsonl (instead of --workdir).")
_OUTPUT = flags.DEFINE_string("output", None, "PNG to write (default: WORKDIR/metrics.png).")
_TITLE = flags.DEFINE_string("title", None, "Figure title (default: the workdir name).")


def read_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric name: [(step, value)]} from a JSON-lines file; later lines win on repeated steps
    (a resumed run logs some steps again)."""
    by_name: dict[str, dict[int, float]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}).") from None
            step = record.get("step")
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float) and math.isfinite(value):
                    by_name.setdefault(name, {})[int(step)] = float(value)
    return {name: sorted(points.items()) for name, points in by_name.items()}


def plot(series: dict[str, list[tuple[int, float]]], output: Path, title: str) -> None:
    """Two panels sharing the step axis: losses (log scale) and BLEU."""
    figure, (loss_axis, bleu_axis) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
    for name in ("train/loss", "eval/loss"):
        if name in series:
            steps, values = zip(*series[name], strict=True)
            loss_axis.plot(steps, values, label=name, marker="." if name == "eval/loss" else None)
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("label-smoothed cross entropy")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    for name in sorted(n for n in series if n.startswith("eval/") and "bleu" in n):
        steps, values = zip(*series[name], strict=True)
        bleu_axis.plot(steps, values, marker="o", label=name)
    bleu_axis.set_ylabel("BLEU")
    bleu_axis.set_xlabel("step")
    bleu_axis.grid(alpha=0.3)
    if bleu_axis.get_legend_handles_labels()[0]:
        bleu_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(_WORKDIR.value) == bool(_METRICS.value):
        raise app.UsageError("Give exactly one of --workdir or --metrics.")
    path = Path(_METRICS.value or Path(_WORKDIR.value) / "metrics.jsonl")
    if not path.is_file():
        raise app.UsageError(f"{path} does not exist: point --workdir at a training run.")
    series = read_series(path)
    if "train/loss" not in series:
        raise app.UsageError(f"{path} has no 'train/loss' values to plot.")
    output = Path(_OUTPUT.value or path.with_name("metrics.png"))
    plot(series, output, _TITLE.value or path.parent.name)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
