"""Token embeddings (shared by source, target and output softmax) and positional encodings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from model.config import TransformerConfig

Array = jax.Array


def sinusoidal_table(max_length: int, d_model: int) -> np.ndarray:
    """The paper's encodings, [max_length, d_model] float32, computed in float64.

    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
    """
    positions = np.arange(max_length, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angles = positions / np.power(10000.0, two_i / d_model)
    table = np.zeros((max_length, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)
    return table.astype(np.float32)


class TokenEmbedding(nn.Module):
    """A [vocab, embed] table: `__call__` looks tokens up (× √d_model), `attend` makes logits."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.table = self.param(
            "embedding",
            # Unit-variance rows after the √d_model scale.
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=cfg.d_model**-0.5), ("vocab", "embed")
            ),
            (cfg.vocab_size, cfg.d_model),
            cfg.parameter_dtype,
        )

    def __call__(self, tokens: Array) -> Array:
        """tokens [batch, length] int -> [batch, length, embed] in the compute dtype."""
        cfg = self.config
        table = jnp.asarray(self.table, cfg.compute_dtype)
        x = jnp.take(table, tokens, axis=0) * jnp.asarray(np.sqrt(cfg.d_model), cfg.compute_dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, x: Array) -> Array:
        """x [batch, length, embed] -> logits [batch, length, vocab], always float32."""
        table = jnp.asarray(self.table, self.config.compute_dtype)
        logits = jnp.einsum("ble,ve->blv", x, table, preferred_element_type=jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class PositionalEncoding(nn.Module):
    """Adds positional information from explicit position ids (packed rows restart at 0)."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        if cfg.position_embedding == "learned":
            self.table = self.param(
                "position_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, "embed")),
                (cfg.max_length, cfg.d_model),
                cfg.parameter_dtype,
            )
        else:
            self.table = jnp.asarray(sinusoidal_table(cfg.max_length, cfg.d_model))

    def __call__(self, x: Array, positions: Array) -> Array:
        """x [batch, length, embed] + table[positions [batch, length]]."""
        table = jnp.asarray(self.table, self.config.compute_dtype)
        return x + jnp.take(table, positions, axis=0)
