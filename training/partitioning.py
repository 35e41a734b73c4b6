"""The device mesh and where every array lives on it.

One `Mesh` spans all devices of all hosts with three axes:
- `data`: plain data parallelism (parameters replicated, batch split);
- `fsdp`: the batch is split too, and parameters are sharded along their `embed` dimension
  (fully sharded data parallelism: each device keeps a slice, gathered when used);
- `tensor`: heads, feed-forward hidden units and the vocabulary are split (Megatron style).

The model names its array dimensions ('batch', 'embed', 'heads', ...); `LOGICAL_AXIS_RULES`
maps those names to mesh axes. Parameters, optimizer state and batches get `NamedSharding`s
derived from these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from training.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch's rows are split over

# (logical name, mesh axes). Flax applies rules in order and never uses a mesh axis twice in
# one array, so an activation [batch, length, embed] splits batch over (data, fsdp) and keeps
# embed whole, while a parameter [vocab, embed] splits vocab over tensor and embed over fsdp.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with at most one -1 replaced by the devices left over."""
    shape = [int(size) for size in mesh_shape]
    if len(shape) != len(MESH_AXES):
        raise ConfigError(
            f"mesh_shape {tuple(mesh_shape)} must have {len(MESH_AXES)} entries, one per mesh "
            f"axis {MESH_AXES}, e.g. --config.mesh_shape='(-1, 1, 1)'."
        )
    if shape.count(-1) > 1 or any(size == 0 or size < -1 for size in shape):
        raise ConfigError(
            f"mesh_shape {tuple(mesh_shape)}: use positive sizes and at most one -1 (= the rest)."
        )
    known = math.prod(size for size in shape if size != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(
                f"mesh_shape {tuple(mesh_shape)}: {num_devices} devices are not divisible by "
                f"{known}; choose sizes whose product divides the device count."
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"mesh_shape {tuple(mesh_shape)} needs {math.prod(shape)} devices but "
            f"{num_devices} are present; use -1 for one axis to take the rest."
        )
    return tuple(shape)  # type: ignore[return-value]


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: every device of every host) with Auto axis types, so
    that jit propagates shardings from the constraints we give it."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    try:  # lays axes out along the physical interconnect on TPU; a plain reshape elsewhere
        device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_axis_size(mesh: Mesh) -> int:
    """How many ways a batch's rows are split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over (data, fsdp), everything else whole: for every [batch, ...] input array."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def decoding_rows(mesh: Mesh, batch_size: int) -> tuple[int, NamedSharding]:
    """How translate_texts decodes on `mesh`: (batch_size rounded up to a multiple of the
    batch shards, the sharding that splits each batch's rows over them)."""
    ways = batch_axis_size(mesh)
    return -(-batch_size // ways) * ways, batch_sharding(mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (scalars, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _fit_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. a vocabulary of 1001 over a
    tensor axis of 2): that dimension then stays whole along the dropped axis."""
    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axes in zip(shape, entries, strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        kept, ways = [], 1
        for name in names:
            if dim % (ways * mesh.shape[name]) == 0:
                kept.append(name)
                ways *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    fitted_spec = PartitionSpec(*fitted)
    if fitted_spec != PartitionSpec(*entries):
        logging.warning(
            "Array of shape %s sharded as %s instead of %s: the sizes do not divide.",
            tuple(shape),
            fitted_spec,
            PartitionSpec(*entries),
        )
    return fitted_spec


def shardings_for(boxed_abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree whose leaves may be flax `LogicallyPartitioned` boxes (as
    returned by `jax.eval_shape` of an init function); unboxed leaves are replicated.

    The result has the structure of the *unboxed* tree (`nn.unbox`)."""
    logical_specs = nn.get_partition_spec(boxed_abstract_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, LOGICAL_AXIS_RULES)
    shapes = nn.unbox(boxed_abstract_tree)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _fit_to_shape(spec, leaf.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def global_batch(
    local_batch: dict[str, np.ndarray], mesh: Mesh, global_rows: int
) -> dict[str, jax.Array]:
    """This host's rows [global_rows / process_count, ...] -> global arrays [global_rows, ...]
    split over the batch axes. Every host calls this with its own slice."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(
            sharding, array, (global_rows, *array.shape[1:])
        )
        for name, array in local_batch.items()
    }


def describe(mesh: Mesh) -> str:
    """'data=4 fsdp=2 tensor=1 (8 devices: cpu, 2 hosts)'."""
    axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
    platform = mesh.devices.flat[0].platform
    return f"{axes} ({mesh.size} devices: {platform}, {jax.process_count()} hosts)"
