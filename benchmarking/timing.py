"""Timing a jitted function: compile seconds (from JAX's own compile events) and step times.

Steps are timed one by one, each waiting for its result, so a step's time is its device time
plus dispatch; the first call (trace, lower, XLA compile, then run) is not a step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

# JAX records these durations for every jit compilation (jax._src.dispatch); their sum is the
# time from Python function to executable.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_seconds() -> Iterator[list[float]]:
    """Collects the compile durations JAX reports inside the block; yields a list whose sum is
    the compile time."""
    durations: list[float] = []

    def listener(event: str, duration_secs: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            durations.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield durations
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def time_calls(call: Callable[[int], Any], num_calls: int) -> tuple[list[float], list[float]]:
    """Wall seconds and process CPU seconds of `call(i)` for i in range(num_calls), each until
    its result is ready. On a machine shared with other work, CPU seconds (summed over this
    process's threads) move much less than wall seconds."""
    wall, cpu = [], []
    for i in range(num_calls):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(call(i))
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def summarize_times(times: list[float], prefix: str) -> dict[str, float]:
    """{prefix_s: median, prefix_min_s, prefix_max_s}."""
    return {
        f"{prefix}_s": statistics.median(times),
        f"{prefix}_min_s": min(times),
        f"{prefix}_max_s": max(times),
    }
