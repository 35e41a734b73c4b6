"""Multi-head scaled dot-product attention: softmax(Q Kᵀ / √d_k) V, with masks and a cache.

`dot_product_attention` is the pure formula. `MultiHeadAttention` owns the projections
W^Q, W^K, W^V (fused into one kernel for self-attention) and W^O, and exposes the pieces
that cached decoding needs: projecting keys/values once, and attending with given ones
(`attend_cached` over a per-sentence cache: `to_cache_layout`, `empty_cache_blocks`,
`write_cache`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from model.config import TransformerConfig
from model.dropout import keep_mask, random_seed
from model.fused_attention import FUSED_IMPLEMENTATIONS, fused_attention
from model.masks import AttentionSegments
from model.matmul import project

Array = jax.Array


def dot_product_attention(
    query: Array,  # [batch, q_len, heads, head_dim]
    key: Array,  # [batch, kv_len, heads, head_dim]
    value: Array,  # [batch, kv_len, heads, head_dim]
    mask: AttentionSegments | Array | None,  # segments, or bool broadcastable to
    #                                          [batch, heads, q_len, kv_len] (True = attend)
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    return_weights: bool = False,
    implementation: str = "xla",
) -> tuple[Array, Array | None]:
    """Returns (attention output [batch, q_len, heads, head_dim], weights or None).

    `implementation` 'cudnn' or 'splash' runs a fused kernel (model/fused_attention.py) when
    the mask is given as segments; 'xla', a dense mask, dropout on the attention weights or a
    request for the weights themselves take XLA's `jax.nn.dot_product_attention`, or the
    plain formula below when it cannot give what is asked (dropout, weights).
    """
    wants_plain = return_weights or (dropout_rate > 0.0 and dropout_rng is not None)
    if isinstance(mask, AttentionSegments):
        if implementation in FUSED_IMPLEMENTATIONS and not wants_plain:
            return fused_attention(query, key, value, mask, implementation), None
        mask = mask.dense()
    if not wants_plain:
        if mask is not None:
            mask = jnp.broadcast_to(
                mask, (query.shape[0], mask.shape[1], query.shape[1], key.shape[1])
            )
        output = jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="xla")
        return output, None

    scale = query.shape[-1] ** -0.5
    logits = (
        jnp.einsum("bqnh,bknh->bnqk", query, key, preferred_element_type=jnp.float32) * scale
    )  # [batch, heads, q_len, kv_len]
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = keep_mask(random_seed(dropout_rng), weights.shape, dropout_rate)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    output = jnp.einsum("bnqk,bknh->bqnh", weights.astype(value.dtype), value)
    return output, weights


# ------------------------------------------------------------------ cached decoding
# One decoding step has a single new query position per hypothesis. The cache keeps keys and
# values per *sentence*, in the layouts XLA:CPU's batched matrix products read directly
# (no per-step transposes): keys [batch, heads, head_dim, kv_len], values [batch, heads,
# kv_len, head_dim]. The hypotheses (beams) of a sentence are the rows of one product.
# The self-attention cache is stored in CACHE_BLOCKS blocks of consecutive positions, so that a
# step early in the output reads only the blocks written so far, whole (a prefix slice of one
# array would be a copy).

CACHE_BLOCKS = 4  # self-attention cache blocks: a step reads 1, 2, 3 or all 4 of them


def to_cache_layout(keys: Array, values: Array) -> tuple[Array, Array]:
    """keys, values [batch, length, heads, head_dim] -> keys [batch, heads, head_dim, length],
    values [batch, heads, length, head_dim]."""
    return keys.transpose(0, 2, 3, 1), values.transpose(0, 2, 1, 3)


def empty_cache_blocks(
    batch: int, heads: int, head_dim: int, max_len: int, beams: int, dtype
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Zeroed self-attention keys and values for max_len positions of `beams` slots each, in
    blocks of about max_len / CACHE_BLOCKS positions: keys ([batch, heads, head_dim, columns],
    ...), values ([batch, heads, columns, head_dim], ...), columns = block positions * beams,
    column l * beams + slot for position l (counted from the block's first position)."""
    bounds = sorted({-(-max_len * i // CACHE_BLOCKS) for i in range(CACHE_BLOCKS + 1)})
    widths = [(end - begin) * beams for begin, end in zip(bounds[:-1], bounds[1:], strict=True)]
    keys = tuple(jnp.zeros((batch, heads, head_dim, width), dtype) for width in widths)
    values = tuple(jnp.zeros((batch, heads, width, head_dim), dtype) for width in widths)
    return keys, values


def write_cache(
    keys: tuple[Array, ...],  # blocks [batch, heads, head_dim, columns]
    values: tuple[Array, ...],  # blocks [batch, heads, columns, head_dim]
    new_keys: Array,  # [batch * beams, 1, heads, head_dim]: position `index` of every beam
    new_values: Array,  # [batch * beams, 1, heads, head_dim]
    index: Array,  # scalar int: the position being written
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Writes position `index` of every beam in place: column index * beams + beam, in the block
    that holds it (every other block rewrites one of its columns with itself)."""
    batch, heads, head_dim = keys[0].shape[:3]
    new_keys = new_keys.reshape(batch, -1, heads, head_dim)  # [batch, beams, heads, head_dim]
    new_values = new_values.reshape(batch, -1, heads, head_dim)
    beams = new_keys.shape[1]
    new_keys, new_values = new_keys.transpose(0, 2, 3, 1), new_values.transpose(0, 2, 1, 3)
    start, block_start = index * beams, 0
    written_keys, written_values = [], []
    for block_keys, block_values in zip(keys, values, strict=True):
        width = block_keys.shape[3]
        here = (start >= block_start) & (start < block_start + width)
        offset = jnp.clip(start - block_start, 0, width - beams)
        old_keys = jax.lax.dynamic_slice_in_dim(block_keys, offset, beams, 3)
        old_values = jax.lax.dynamic_slice_in_dim(block_values, offset, beams, 2)
        written_keys.append(
            jax.lax.dynamic_update_slice_in_dim(
                block_keys, jnp.where(here, new_keys, old_keys), offset, 3
            )
        )
        written_values.append(
            jax.lax.dynamic_update_slice_in_dim(
                block_values, jnp.where(here, new_values, old_values), offset, 2
            )
        )
        block_start += width
    return tuple(written_keys), tuple(written_values)


def cached_attention(
    query: Array,  # [batch, rows, heads, head_dim]: one position of each of `rows` hypotheses
    keys: tuple[Array, ...],  # blocks [batch, heads, head_dim, columns], kv_len in all
    values: tuple[Array, ...],  # blocks [batch, heads, columns, head_dim]
    mask: Array,  # bool [batch, rows or 1, kv_len]; True = attend
    columns_in_use: Array | None = None,  # scalar int: columns >= this are all masked
) -> Array:
    """softmax(q Kᵀ / √d_k) V for one query position -> [batch, rows, heads, head_dim], over the
    keys and values concatenated block after block.

    With `columns_in_use`, only the first blocks that hold those columns are read (a
    `lax.switch`): a decoding step early in the output skips the cache's empty blocks. Masked
    columns weigh exactly 0, so the result is the same."""
    if columns_in_use is None or len(keys) == 1:
        return _attend_columns(query, keys, values, mask)
    ends = [0]
    for block in keys:
        ends.append(ends[-1] + block.shape[-1])
    branches = [
        lambda q, k, v, m, n=n: _attend_columns(q, k[:n], v[:n], m[..., : ends[n]])
        for n in range(1, len(keys) + 1)
    ]
    branch = jnp.sum(jnp.asarray(ends[1:-1]) < columns_in_use)  # blocks needed, minus one
    return jax.lax.switch(branch, branches, query, keys, values, mask)


def _attend_columns(
    query: Array, keys: tuple[Array, ...], values: tuple[Array, ...], mask: Array
) -> Array:
    query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    logits = jnp.concatenate(
        [
            jnp.einsum("bqhd,bhdk->bhqk", query, block, preferred_element_type=jnp.float32)
            for block in keys
        ],
        axis=-1,
    )  # [batch, heads, rows, kv_len]
    logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(values[0].dtype)
    out, start = None, 0
    for block in values:  # XLA:CPU: bhqd, then a transpose, is faster than bqhd here
        end = start + block.shape[2]
        part = jnp.einsum("bhqk,bhkd->bhqd", weights[..., start:end], block)
        out, start = part if out is None else out + part, end
    return out.transpose(0, 2, 1, 3)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; `self_attention` fuses the Q, K and V projections in one matmul."""

    config: TransformerConfig
    self_attention: bool

    def setup(self) -> None:
        cfg = self.config
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(-2, -1), batch_axis=(1,))
        if self.self_attention:
            # [embed, 3 (q, k, v), heads, head_dim]
            self.qkv_kernel = self.param(
                "qkv",
                nn.with_logical_partitioning(init, ("embed", None, "heads", "kv")),
                (cfg.d_model, 3, cfg.num_heads, cfg.head_dim),
                cfg.parameter_dtype,
            )
        else:
            # [embed, heads, head_dim] and [embed, 2 (k, v), heads, head_dim]
            self.q_kernel = self.param(
                "query",
                nn.with_logical_partitioning(
                    nn.initializers.xavier_uniform(in_axis=0, out_axis=(-2, -1)),
                    ("embed", "heads", "kv"),
                ),
                (cfg.d_model, cfg.num_heads, cfg.head_dim),
                cfg.parameter_dtype,
            )
            self.kv_kernel = self.param(
                "key_value",
                nn.with_logical_partitioning(init, ("embed", None, "heads", "kv")),
                (cfg.d_model, 2, cfg.num_heads, cfg.head_dim),
                cfg.parameter_dtype,
            )
        # [heads, head_dim, embed]
        self.out_kernel = self.param(
            "out",
            nn.with_logical_partitioning(
                nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=-1),
                ("heads", "kv", "embed"),
            ),
            (cfg.num_heads, cfg.head_dim, cfg.d_model),
            cfg.parameter_dtype,
        )

    def _cast(self, kernel: Array) -> Array:
        return jnp.asarray(kernel, self.config.compute_dtype)

    def project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
        """x [batch, length, embed] -> q, k, v, each [batch, length, heads, head_dim]."""
        # Batch and length stay in front (as in x), so the product is a plain
        # [tokens, embed] x [embed, 3 * heads * head_dim] matmul: an output ordered (q/k/v,
        # batch, ...) made XLA:CPU transpose the kernel and its gradient every step.
        qkv = project(x, self._cast(self.qkv_kernel))  # [batch, length, 3, heads, head_dim]
        qkv = nn.with_logical_constraint(qkv, ("batch", "length", None, "heads", "kv"))
        q, k, v = jnp.unstack(qkv, axis=2)
        return q, k, v

    def project_query(self, x: Array) -> Array:
        """x [batch, length, embed] -> q [batch, length, heads, head_dim] (cross-attention)."""
        q = project(x, self._cast(self.q_kernel))  # [batch, length, heads, head_dim]
        return nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))

    def project_key_value(self, memory: Array) -> tuple[Array, Array]:
        """memory [batch, length, embed] -> k, v [batch, length, heads, head_dim]."""
        kv = project(memory, self._cast(self.kv_kernel))  # [batch, length, 2, heads, head_dim]
        kv = nn.with_logical_constraint(kv, ("batch", "length", None, "heads", "kv"))
        k, v = jnp.unstack(kv, axis=2)
        return k, v

    def attend(
        self, q: Array, k: Array, v: Array, mask: Array | None, deterministic: bool
    ) -> Array:
        """Attention with given projections, then W^O. Returns [batch, q_len, embed]."""
        batch, q_len = q.shape[:2]
        rate = self.config.attention_dropout_rate
        dropout_rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        want_weights = self.is_mutable_collection("intermediates")
        # Cached decoding steps (one query position) gain nothing from a fused kernel.
        implementation = self.config.attention_implementation if q_len > 1 else "xla"
        out, weights = dot_product_attention(
            q,
            k,
            v,
            mask,
            dropout_rate=rate,
            dropout_rng=dropout_rng,
            return_weights=want_weights,
            implementation=implementation,
        )
        if want_weights:
            self.sow("intermediates", "attention_weights", weights)
        out = out.reshape(batch, q_len, *out.shape[2:])
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        y = project(out, self._cast(self.out_kernel), num_contracting=2)  # [batch, q_len, embed]
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))

    def attend_cached(
        self,
        q: Array,
        keys: tuple[Array, ...],
        values: tuple[Array, ...],
        mask: Array,
        columns_in_use: Array | None = None,
    ) -> Array:
        """One decoding step: q [batch * rows, 1, heads, head_dim] against a per-sentence
        cache in blocks (`cached_attention`), then W^O. Returns [batch * rows, 1, embed]."""
        batch = keys[0].shape[0]
        q = q.reshape(batch, -1, *q.shape[2:])  # [batch, rows, heads, head_dim]
        out = cached_attention(q, keys, values, mask, columns_in_use)
        out = out.reshape(-1, 1, *out.shape[2:])  # [batch * rows, 1, heads, head_dim]
        return project(out, self._cast(self.out_kernel), num_contracting=2)

    def __call__(
        self,
        x: Array,  # [batch, q_len, embed]
        mask: Array | None,
        memory: Array | None = None,  # [batch, kv_len, embed] for cross-attention
        deterministic: bool = True,
    ) -> Array:
        if self.self_attention:
            q, k, v = self.project_qkv(x)
        else:
            q = self.project_query(x)
            k, v = self.project_key_value(memory)
        return self.attend(q, k, v, mask, deterministic)
