"""Encoder and decoder layers: attention and feed-forward sub-layers with residuals and LayerNorm.

Post-LN (the paper): x = LayerNorm(x + Dropout(Sublayer(x))).
Pre-LN (option):     x = x + Dropout(Sublayer(LayerNorm(x))), with a final LayerNorm per stack.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import linen as nn

from model.attention import MultiHeadAttention, to_cache_layout, write_cache
from model.config import TransformerConfig
from model.dropout import Dropout
from model.masks import AttentionSegments
from model.matmul import dense_dot_general

Array = jax.Array


def layer_norm(config: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with logical names on its scale and bias; statistics in float32."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=config.compute_dtype,
        param_dtype=config.parameter_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied at every position."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        dense = lambda features, names, name: nn.Dense(
            features,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.parameter_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
            dot_general=dense_dot_general,
            name=name,
        )
        h = nn.relu(dense(cfg.d_ff, ("embed", "mlp"), "wi")(x))  # [batch, length, mlp]
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = Dropout(cfg.relu_dropout_rate)(h, deterministic=deterministic)
        y = dense(cfg.d_model, ("mlp", "embed"), "wo")(h)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class Residual(nn.Module):
    """Wraps one sub-layer with dropout, the residual connection and LayerNorm (post or pre)."""

    config: TransformerConfig

    def setup(self) -> None:
        self.norm = layer_norm(self.config)
        self.dropout = Dropout(self.config.dropout_rate)

    def __call__(self, x: Array, sublayer: Callable[[Array], Array], deterministic: bool) -> Array:
        if self.config.norm_position == "pre":
            return x + self.dropout(sublayer(self.norm(x)), deterministic=deterministic)
        return self.norm(x + self.dropout(sublayer(x), deterministic=deterministic))


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    config: TransformerConfig

    def setup(self) -> None:
        self.self_attention = MultiHeadAttention(self.config, self_attention=True)
        self.attention_residual = Residual(self.config)
        self.feed_forward = FeedForward(self.config)
        self.feed_forward_residual = Residual(self.config)

    def __call__(self, x: Array, mask: AttentionSegments, deterministic: bool) -> Array:
        x = self.attention_residual(
            x, lambda y: self.self_attention(y, mask, deterministic=deterministic), deterministic
        )
        return self.feed_forward_residual(
            x, lambda y: self.feed_forward(y, deterministic), deterministic
        )


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, then feed-forward.

    `__call__` runs a whole (teacher-forced) target sequence; `step` runs one new position
    against a key/value cache and returns the updated cache entries.
    """

    config: TransformerConfig

    def setup(self) -> None:
        self.self_attention = MultiHeadAttention(self.config, self_attention=True)
        self.self_attention_residual = Residual(self.config)
        self.cross_attention = MultiHeadAttention(self.config, self_attention=False)
        self.cross_attention_residual = Residual(self.config)
        self.feed_forward = FeedForward(self.config)
        self.feed_forward_residual = Residual(self.config)

    def __call__(
        self,
        x: Array,  # [batch, target_length, embed]
        self_mask: AttentionSegments,  # target vs target, causal
        encoded: Array,  # [batch, source_length, embed]
        cross_mask: AttentionSegments,  # target vs source
        deterministic: bool,
    ) -> Array:
        x = self.self_attention_residual(
            x,
            lambda y: self.self_attention(y, self_mask, deterministic=deterministic),
            deterministic,
        )
        x = self.cross_attention_residual(
            x,
            lambda y: self.cross_attention(y, cross_mask, encoded, deterministic=deterministic),
            deterministic,
        )
        return self.feed_forward_residual(
            x, lambda y: self.feed_forward(y, deterministic), deterministic
        )

    def cross_key_value(self, encoded: Array) -> tuple[Array, Array]:
        """The encoder-decoder attention's keys and values, computed once per sentence, in the
        cache layout (model/attention.py): [batch, heads, head_dim, source_length] and
        [batch, heads, source_length, head_dim]."""
        return to_cache_layout(*self.cross_attention.project_key_value(encoded))

    def step(
        self,
        x: Array,  # [batch * beams, 1, embed]: the newest position of every hypothesis
        cache: dict,  # self_key/self_value: tuples of blocks [batch, heads, ..., columns],
        #               max_len * beams columns in all; cross_key/cross_value [batch, heads,
        #               ..., source_length]
        index: Array,  # scalar int: the position being decoded
        self_mask: Array,  # [batch, beams, max_len * beams]: the cache columns each row sees
        cross_mask: Array,  # [batch, 1, source_length]
    ) -> tuple[Array, dict]:
        """One decoding step (no dropout). Returns (output [batch * beams, 1, embed], updated
        cache)."""

        def self_attend(y: Array) -> Array:
            q, k, v = self.self_attention.project_qkv(y)
            keys, values = write_cache(cache["self_key"], cache["self_value"], k, v, index)
            new_entries["self_key"], new_entries["self_value"] = keys, values
            # Columns l * beams + slot for l <= index are the written ones.
            written = (index + 1) * self_mask.shape[1]
            return self.self_attention.attend_cached(q, keys, values, self_mask, written)

        def cross_attend(y: Array) -> Array:
            q = self.cross_attention.project_query(y)
            return self.cross_attention.attend_cached(
                q, (cache["cross_key"],), (cache["cross_value"],), cross_mask
            )

        new_entries: dict[str, Array] = {}
        x = self.self_attention_residual(x, self_attend, True)
        x = self.cross_attention_residual(x, cross_attend, True)
        x = self.feed_forward_residual(x, lambda y: self.feed_forward(y, True), True)
        return x, {**cache, **new_entries}
