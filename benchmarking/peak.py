"""The peak FLOP/s that MFU is measured against.

On TPUs and NVIDIA GPUs the peak is the vendor's dense bfloat16 matrix-unit figure per chip
(spec sheets, not measured here). On CPUs there is no honest spec figure (it depends on the
vector units, the clock and the cores this process may use), so the benchmark measures it: the
best rate of a large float32 matrix product, which is the kernel the model's matmuls use.
Accelerators missing from the table get a measured bfloat16 matrix product instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Dense (no structured sparsity) bfloat16 peak FLOP/s of one chip, from the vendors' spec sheets.
# Matched against `jax.Device.device_kind` (lower-cased, first matching entry wins, so the more
# specific names come first).
ACCELERATOR_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    # Google Cloud TPU documentation, "TPU versions" / system architecture pages:
    ("tpu v6 lite", 918e12),  # TPU v6e (Trillium): 918 TFLOP/s bf16 per chip
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # TPU v5e: 197 TFLOP/s bf16 per chip
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),  # TPU v5p: 459 TFLOP/s bf16 per chip
    ("tpu v5", 459e12),  # v5p chips report device_kind "TPU v5"
    ("tpu v4", 275e12),  # TPU v4: 275 TFLOP/s bf16 per chip
    # NVIDIA data sheets (the headline bf16 "Tensor Core" figures assume 2:4 sparsity; these
    # are half of them, the dense rate):
    ("h200 nvl", 835e12),  # H200 NVL: 1,671 TFLOP/s sparse
    ("h200", 989e12),  # H200 SXM: 1,979 TFLOP/s sparse
    ("h100 nvl", 835e12),  # H100 NVL: 1,671 TFLOP/s sparse
    ("h100 pcie", 756e12),  # H100 PCIe: 1,513 TFLOP/s sparse
    ("h100", 989e12),  # H100 SXM: 1,979 TFLOP/s sparse
    ("a100", 312e12),  # A100 (SXM and PCIe): 312 TFLOP/s dense bf16 (624 sparse)
)


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of all devices the benchmark runs on, and where the figure comes from."""

    flops_per_s: float
    source: str  # e.g. "vendor spec: TPU v4 bf16 dense x 8 chips" or "measured: ..."


def spec_peak(device_kind: str) -> float | None:
    """The table's per-chip bfloat16 peak for a `device_kind`, or None if it is not listed."""
    kind = device_kind.lower()
    for name, flops in ACCELERATOR_BF16_PEAKS:
        if name in kind:
            return flops
    return None


def measure_matmul_peak(
    device: jax.Device, dtype: jnp.dtype = jnp.float32, size: int = 2048, repeats: int = 5
) -> float:
    """Best FLOP/s of a [size, size] @ [size, size] product on `device` over `repeats` runs.

    The best, not the median: the peak is what the hardware can do, and on a shared machine
    slower runs measure the neighbours.
    """
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(key, (size, size), dtype), device) for key in keys)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(devices: Sequence[jax.Device]) -> Peak:
    """Peak of `devices` together (the local devices of this process, times the process count).

    CPU devices of one process share the host's cores (several simulated CPU devices do not add
    compute), so a CPU peak is measured once per host.
    """
    first = devices[0]
    hosts = jax.process_count()
    if first.platform == "cpu":
        measured = measure_matmul_peak(first, jnp.float32)
        return Peak(
            measured * hosts,
            f"measured: best float32 2048^3 matmul on this host x {hosts} host(s)",
        )
    chips = len(devices) * hosts
    per_chip = spec_peak(first.device_kind)
    if per_chip is not None:
        return Peak(
            per_chip * chips, f"vendor spec: {first.device_kind} bf16 dense x {chips} chip(s)"
        )
    measured = measure_matmul_peak(first, jnp.bfloat16, size=8192)
    return Peak(
        measured * chips,
        f"measured: best bfloat16 8192^3 matmul on one {first.device_kind} x {chips} chip(s) "
        "(not in the spec table)",
    )
