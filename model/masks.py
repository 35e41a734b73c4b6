"""Attention masks (bool, True = may attend) and the right shift of packed targets.

Token id 0 is padding. Segment ids number the examples packed into one row (1, 2, ...; 0 =
padding); attention never crosses a segment boundary. The model passes `AttentionSegments` to
its attention layers, so that a fused kernel can take the segment ids themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class AttentionSegments:
    """Who may attend to whom, as segment ids: query i attends key j iff their ids are equal
    and positive (and j <= i if `causal`). Fused kernels take this form, which keeps packed
    examples apart without a dense mask; `dense()` is the boolean mask of the plain path."""

    query: Array  # [batch, q_len] int32: 1, 2, ... = example of the row; 0 = padding
    key: Array  # [batch, kv_len] int32
    causal: bool = struct.field(pytree_node=False, default=False)

    def dense(self) -> Array:
        """[batch, 1, q_len, kv_len] bool, True = may attend."""
        mask = (self.query > 0)[:, :, None] & (self.query[:, :, None] == self.key[:, None, :])
        if self.causal:
            q_len, kv_len = self.query.shape[1], self.key.shape[1]
            mask &= jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
        return mask[:, None, :, :]


def attention_segments(
    query_tokens: Array,  # [batch, q_len]
    key_tokens: Array,  # [batch, kv_len]
    query_segment_ids: Array | None = None,  # [batch, q_len]
    key_segment_ids: Array | None = None,  # [batch, kv_len]
    causal: bool = False,
) -> AttentionSegments:
    """The segments of `attention_mask`: the given ids at real tokens (or 1 for every real
    token of an unpacked row), 0 at padding."""
    if query_segment_ids is None or key_segment_ids is None:
        query_segment_ids = jnp.ones_like(query_tokens, jnp.int32)
        key_segment_ids = jnp.ones_like(key_tokens, jnp.int32)
    return AttentionSegments(
        query=jnp.where(query_tokens > 0, query_segment_ids, 0).astype(jnp.int32),
        key=jnp.where(key_tokens > 0, key_segment_ids, 0).astype(jnp.int32),
        causal=causal,
    )


def attention_mask(
    query_tokens: Array,  # [batch, q_len]
    key_tokens: Array,  # [batch, kv_len]
    query_segment_ids: Array | None = None,  # [batch, q_len]
    key_segment_ids: Array | None = None,  # [batch, kv_len]
    causal: bool = False,
) -> Array:
    """[batch, 1, q_len, kv_len]: both positions real, same segment, and (if causal) k <= q."""
    segments = attention_segments(
        query_tokens, key_tokens, query_segment_ids, key_segment_ids, causal
    )
    return segments.dense()


def shift_right(targets: Array, segment_ids: Array | None = None) -> Array:
    """Decoder inputs: targets moved one step right, 0 (= begin) at the start of each segment."""
    shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    if segment_ids is not None:
        previous_segment = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
        shifted = jnp.where(segment_ids == previous_segment, shifted, 0)
    return shifted


def default_positions(tokens: Array) -> Array:
    """0, 1, 2, ... for every row: positions of unpacked rows."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
