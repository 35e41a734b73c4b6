"""Fused attention kernels that keep packed examples apart: cuDNN on NVIDIA GPUs, splash on TPUs.

Both take the segments themselves (`AttentionSegments`), never a mask that forgot them:

- 'cudnn': cuDNN's flash attention through `jax.nn.dot_product_attention(implementation=
  'cudnn')`. That public API has no segment ids, so the segments go in as the boolean mask,
  which JAX turns into an additive bias (0, or a large negative number) on every logit: packed
  examples cannot see each other, and padding is masked. The decoder's causal mask is also
  passed as `is_causal`, so the kernel skips the blocks above the diagonal. (JAX's packed
  "THD" cuDNN layout would skip the blocks between examples too, but it is private API, needs a
  Hopper GPU and a static cap on the examples per row that the input pipeline does not enforce:
  a row over the cap would silently attend across examples. Not used.)
- 'splash': the Pallas splash attention kernel for TPUs (jax.experimental.pallas.ops.tpu),
  which takes query and key segment ids; causal is its static mask, so blocks above the
  diagonal are skipped. A Pallas kernel is not partitioned by XLA, so on a mesh it runs per
  shard under `jax.shard_map` (batch and heads split as the model's logical axes say).

Lengths are padded up to what a kernel takes (even for cuDNN with a mask, whole 128-blocks for
splash) with segment id 0, which no real query matches; the padded rows are cut off again.
Neither kernel has dropout on the attention weights: model/config.py rejects that combination.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from model.masks import AttentionSegments

Array = jax.Array

FUSED_IMPLEMENTATIONS = ("cudnn", "splash")
# Length multiples: cuDNN's flash kernel needs even lengths when training with a bias (mask);
# splash tiles queries and keys in blocks of 128 (its default block sizes).
LENGTH_MULTIPLE = {"cudnn": 2, "splash": 128}
SPLASH_BLOCK = 128


def fused_attention(
    query: Array,  # [batch, q_len, heads, head_dim]
    key: Array,  # [batch, kv_len, heads, head_dim]
    value: Array,  # [batch, kv_len, heads, head_dim]
    segments: AttentionSegments,
    implementation: str,
    *,
    interpret: bool = False,
) -> Array:
    """softmax(Q Kᵀ / √d_k + segments' mask) V by a fused kernel -> [batch, q_len, heads, head_dim].

    `interpret` runs the splash kernel in Pallas' interpreter (any backend, slow): the CPU tests
    use it to check the kernel's arguments against XLA attention.
    """
    if implementation not in FUSED_IMPLEMENTATIONS:
        raise ValueError(
            f"No fused attention {implementation!r}; use one of {FUSED_IMPLEMENTATIONS}."
        )
    q_len = query.shape[1]
    query, key, value, segments = pad_lengths(
        query, key, value, segments, LENGTH_MULTIPLE[implementation]
    )
    if implementation == "cudnn":
        out = cudnn_attention(query, key, value, segments)
    else:
        out = splash_attention(query, key, value, segments, interpret=interpret)
    return out[:, :q_len]


def pad_lengths(
    query: Array, key: Array, value: Array, segments: AttentionSegments, multiple: int
) -> tuple[Array, Array, Array, AttentionSegments]:
    """Query and key lengths padded up to a multiple of `multiple`, the new positions in
    segment 0 (padding): real queries never attend to them, and their outputs are dropped."""

    def pad(x: Array, axis: int = 1) -> Array:
        extra = -x.shape[axis] % multiple
        if not extra:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    padded = AttentionSegments(pad(segments.query), pad(segments.key), segments.causal)
    return pad(query), pad(key), pad(value), padded


def cudnn_attention(
    query: Array,
    key: Array,
    value: Array,
    segments: AttentionSegments,
    implementation: str = "cudnn",
) -> Array:
    """cuDNN flash attention with the segments as its mask (module docstring).

    `implementation='xla'` makes exactly the same call through XLA: the reference the CPU tests
    compare the mask and flags against.
    """
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        mask=segments.dense(),  # [batch, 1, q_len, kv_len]: JAX adds it as a bias for cuDNN
        is_causal=segments.causal,
        implementation=implementation,
    )


def splash_attention(
    query: Array,
    key: Array,
    value: Array,
    segments: AttentionSegments,
    *,
    interpret: bool = False,
) -> Array:
    """Pallas splash attention with segment ids, per shard of the current mesh (if any)."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention as splash
    except ImportError as error:  # experimental API: may move between JAX versions
        raise ImportError(
            f"attention_implementation='splash' needs jax.experimental.pallas.ops.tpu."
            f"splash_attention, which this JAX ({jax.__version__}) lacks: {error}. Use "
            "model.attention_implementation='xla'."
        ) from error
    scale = query.shape[-1] ** -0.5  # splash does not scale the logits itself
    causal = segments.causal

    def attend_shard(q: Array, k: Array, v: Array, q_ids: Array, kv_ids: Array) -> Array:
        heads, q_len, kv_len = q.shape[2], q.shape[1], k.shape[1]
        head_mask = (
            splash.CausalMask((q_len, kv_len)) if causal else splash.FullMask((q_len, kv_len))
        )
        kernel = splash.make_splash_mha(
            splash.MultiHeadMask([head_mask] * heads),
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )

        def one_row(q: Array, k: Array, v: Array, q_ids: Array, kv_ids: Array) -> Array:
            # [heads, length, head_dim] per row
            return kernel(q, k, v, segment_ids=splash.SegmentIds(q=q_ids, kv=kv_ids))

        heads_first = lambda x: jnp.swapaxes(
            x, 1, 2
        )  # [batch, len, heads, d] <-> [batch, heads, len, d]
        out = jax.vmap(one_row)(
            heads_first(q * jnp.asarray(scale, q.dtype)),
            heads_first(k),
            heads_first(v),
            q_ids,
            kv_ids,
        )
        return heads_first(out)

    return per_shard(attend_shard, query, key, value, segments.query, segments.key)


def per_shard(fn, query: Array, key: Array, value: Array, q_ids: Array, kv_ids: Array) -> Array:
    """`fn` under `jax.shard_map` over the current mesh, with the batch and heads split as the
    model's logical axis rules say; `fn` itself when no mesh (or a one-device mesh) is set, or
    when the shapes do not divide over it (then XLA gathers the operands: correct, slower)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(query, key, value, q_ids, kv_ids)
    qkv_spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    ids_spec = nn.logical_to_mesh_axes(("batch", "length"))

    def divides(shape: tuple[int, ...], spec: jax.sharding.PartitionSpec) -> bool:
        for size, axes in zip(shape, spec, strict=False):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            if size % math.prod(mesh.shape[name] for name in names):
                return False
        return True

    if not (divides(query.shape, qkv_spec) and divides(key.shape, qkv_spec)):
        return fn(query, key, value, q_ids, kv_ids)
    sharded = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec, ids_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )
    return sharded(query, key, value, q_ids, kv_ids)
