"""Train-step time with the loop's bound on steps in flight against no bound (interleaved A/B).

    python -m benchmarking.in_flight --config=configs/default.py [--steps=20] [--rounds=3]

Builds training's set-up (training/setup.py) on all local devices and runs the train step as
training/loop.py does: a host batch placed on the mesh each step, the metric sums handed to
the loop's `StepResults`, which waits for step n-1 after dispatching step n when
max_steps_in_flight=2 and never waits when it is 0. Blocks of --steps steps alternate between
the two; a block's figure is its wall time per step. Prints JSON: per-block seconds per step,
the medians, their ratio and the load.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarking.synthetic import packed_batch
from training import partitioning
from training import setup as training_setup
from training.loop import StepResults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py.")
_STEPS = flags.DEFINE_integer("steps", 20, "Train steps per block.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Blocks of each variant, taking turns.")
VARIANTS = {"bounded_2": 2, "unbounded": 0}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1 or _CONFIG.value is None:
        raise app.UsageError("--config is required; nothing else.")
    config = _CONFIG.value.copy_and_resolve_references()
    setup = training_setup.build(config)
    rng = np.random.default_rng(config.seed)
    rows = config.batch_size // jax.process_count()
    host_batches = [
        packed_batch(rng, rows, config.data.max_length, config.model.vocab_size) for _ in range(4)
    ]
    state = setup.fresh_state()

    def block(max_in_flight: int, steps: int) -> float:
        nonlocal state
        results = StepResults(max_in_flight)
        start = time.perf_counter()
        for i in range(steps):
            local = host_batches[i % len(host_batches)]
            batch = partitioning.global_batch(local, setup.mesh, config.batch_size)
            state, sums = setup.train_step(state, batch)
            results.add(i, sums)
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / steps

    block(2, 3)  # compile and warm up
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    loads = []
    for _ in range(_ROUNDS.value):
        for name, max_in_flight in VARIANTS.items():
            seconds[name].append(block(max_in_flight, _STEPS.value))
            loads.append(round(os.getloadavg()[0], 1))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        json.dumps(
            {
                "config": config_flags.get_config_filename(flags.FLAGS["config"]),
                "devices": partitioning.describe(setup.mesh),
                "steps_per_block": _STEPS.value,
                "seconds_per_step": seconds,
                "median_seconds_per_step": medians,
                "ratio_bounded_to_unbounded": medians["bounded_2"] / medians["unbounded"],
                "load_average_1min": loads,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
