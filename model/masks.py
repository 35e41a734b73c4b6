"""Attention masks (bool, True = may attend) and the right shift of packed targets.

Token id 0 is padding. Segment ids number the examples packed into one row (0 = padding);
attention never crosses a segment boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def attention_mask(
    query_tokens: Array,  # [batch, q_len]
    key_tokens: Array,  # [batch, kv_len]
    query_segment_ids: Array | None = None,  # [batch, q_len]
    key_segment_ids: Array | None = None,  # [batch, kv_len]
    causal: bool = False,
) -> Array:
    """[batch, 1, q_len, kv_len]: both positions real, same segment, and (if causal) k <= q."""
    mask = (query_tokens > 0)[:, :, None] & (key_tokens > 0)[:, None, :]
    if query_segment_ids is not None and key_segment_ids is not None:
        mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if causal:
        q_len, kv_len = query_tokens.shape[1], key_tokens.shape[1]
        mask &= jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
    return mask[:, None, :, :]


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
