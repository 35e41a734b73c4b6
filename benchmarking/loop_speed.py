"""Steps per second of the whole training loop (train.py: data, dispatch, device, logging),
for variants of a config taking turns (interleaved A/B), as the ratio of their medians.

    python -m benchmarking.loop_speed --config=configs/default.py --steps=300 --rounds=3 \
        --variant=bounded:--config.max_steps_in_flight=2 \
        --variant=unbounded:--config.max_steps_in_flight=0

Each run trains --steps steps in a fresh workdir (no evaluation, no checkpoint before the
end) and logs every --steps/6 steps; a run's figure is the median perf/steps_per_second of its
progress lines after the first (which includes compiling). Prints JSON with the load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]

_CONFIG = flags.DEFINE_string("config", "configs/default.py", "Config file for train.py.")
_STEPS = flags.DEFINE_integer("steps", 300, "Train steps per run.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Runs of every variant, taking turns.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "NAME:ARGS, ARGS being train.py flags separated by spaces; 2 or more."
)
_PREPARED = flags.DEFINE_string(
    "prepared_dir", "", "config.data.prepared_dir shared by every run ('' = a temporary one)."
)


def steps_per_second(workdir: Path) -> float:
    """Median perf/steps_per_second of a finished run's progress lines after the first."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["perf/steps_per_second"] for r in records if "perf/steps_per_second" in r]
    return statistics.median(rates[1:])


def run_once(args: list[str], workdir: Path, prepared: str) -> float:
    log_every = max(_STEPS.value // 6, 1)
    command = [
        sys.executable,
        "train.py",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--config.data.prepared_dir={prepared}",
        f"--config.num_train_steps={_STEPS.value}",
        f"--config.log_every_steps={log_every}",
        f"--config.checkpoint_every_steps={_STEPS.value}",
        "--config.eval_every_steps=0",
        "--config.num_bleu_examples=0",
        "--config.num_eval_batches=1",
        *args,
    ]
    # JAX's persistent cache: after the first run, runs do not compile again.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(workdir.parent / "jax_cache")}
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, env=env)
    return steps_per_second(workdir)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1 or len(_VARIANTS.value) < 2:
        raise app.UsageError("Give two or more --variant=NAME:ARGS and nothing else.")
    variants = dict(variant.split(":", 1) for variant in _VARIANTS.value)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    loads = []
    with tempfile.TemporaryDirectory() as scratch:
        prepared = _PREPARED.value or str(Path(scratch) / "data")
        for round_index in range(_ROUNDS.value):
            for name, args in variants.items():
                workdir = Path(scratch) / f"{name}_{round_index}"
                rates[name].append(run_once(args.split(), workdir, prepared))
                loads.append(os.getloadavg()[0])
    medians = {name: statistics.median(values) for name, values in rates.items()}
    first = next(iter(medians))
    figures = {
        "config": _CONFIG.value,
        "steps": _STEPS.value,
        "steps_per_second": rates,
        "median_steps_per_second": medians,
        f"ratio_to_{first}": {name: value / medians[first] for name, value in medians.items()},
        "load_average_1min": loads,
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    app.run(main)
