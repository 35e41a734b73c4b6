"""Speed of the train step that training uses, on the device mesh that training would build.

The mesh, model, state, shardings and jitted step are training's own (training/setup.py);
only the batches differ (synthetic packed rows, or real ones taken from the input pipeline),
and they are placed on the devices before timing, so the figures are the devices' and not the
input pipeline's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarking import flops, timing
from benchmarking.peak import Peak
from training import partitioning
from training import setup as training_setup

Batch = dict[str, np.ndarray]


def target_fill_rate(batches: Sequence[Batch]) -> float:
    """Share of target positions that are not padding, over `batches`."""
    return float(np.mean([np.mean(batch["targets"] > 0) for batch in batches]))


def memory_peak_bytes(device: jax.Device) -> int | None:
    """Peak bytes the backend has allocated on `device`, if it reports it (GPU/TPU do, CPU
    does not)."""
    stats = device.memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def benchmark_training(
    config: ml_collections.ConfigDict,
    batches: Sequence[Batch],
    *,
    steps: int,
    warmup_steps: int,
    peak: Peak,
) -> tuple[dict[str, Any], Any]:
    """Times `steps` train steps (after the compiling call and `warmup_steps` more) cycling
    through `batches` (this process's rows of [config.batch_size, length] global batches, as
    the input pipeline gives them).

    Returns (figures, trained parameters) — the parameters serve the decoding benchmark.
    """
    setup = training_setup.build(config)
    mesh, model_config = setup.mesh, setup.model_config
    rows, length = config.batch_size, batches[0]["targets"].shape[1]  # global batch shape
    state = setup.fresh_state()
    device_batches = [partitioning.global_batch(batch, mesh, rows) for batch in batches]

    def call(i: int) -> Any:
        nonlocal state
        state, sums = setup.train_step(state, device_batches[i % len(device_batches)])
        return sums

    with timing.compile_seconds() as compile_durations:
        timing.time_calls(call, 1)
    timing.time_calls(lambda i: call(i + 1), warmup_steps)
    times, cpu_times = timing.time_calls(lambda i: call(i + 1 + warmup_steps), steps)

    figures: dict[str, Any] = timing.summarize_times(times, "step_time")
    figures["step_cpu_s"] = statistics.median(cpu_times)
    step_time = figures["step_time_s"]
    fill_rate = target_fill_rate(batches)
    model_flops = flops.train_step_flops(model_config, rows, length, length)
    figures.update(
        devices=f"{partitioning.describe(mesh)}, {jax.devices()[0].device_kind}",
        batch_shape=f"{rows} x {length}",
        compute_dtype=model_config.dtype,
        attention_implementation=model_config.attention_implementation,
        fill_rate=fill_rate,
        steps=steps,
        tokens_per_s=rows * length / step_time,
        nonpad_tokens_per_s=rows * length * fill_rate / step_time,
        compile_s=sum(compile_durations),
        model_flops_per_step=model_flops,
        achieved_flops_per_s=model_flops / step_time,
        peak_flops=peak.flops_per_s,
        peak_source=peak.source,
        mfu=model_flops / step_time / peak.flops_per_s,
        memory_peak_bytes=memory_peak_bytes(jax.local_devices()[0]),
    )
    return figures, (setup.model, state.params)
