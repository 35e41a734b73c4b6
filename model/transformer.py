"""The encoder-decoder Transformer and its entry points: encode, decode, decode_step.

The module knows nothing of meshes or training: parameters and activations carry logical
axis names ('vocab', 'embed', 'heads', 'kv', 'mlp', 'batch', 'length') that training maps
to mesh axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from model import masks
from model.attention import empty_cache_blocks
from model.config import TransformerConfig
from model.dropout import Dropout
from model.embedding import PositionalEncoding, TokenEmbedding
from model.layers import DecoderLayer, EncoderLayer, layer_norm

Array = jax.Array
# The decoding cache, per sentence (a plain pytree): {'index': scalar int32, the position the
# next step writes; 'history' [batch, beams, max_len] int32: history[b, k, l] is the beam slot
# whose keys/values at position l belong to hypothesis k (beam search reorders only this);
# 'layers': [per decoder layer: {'self_key' [batch, heads, head_dim, max_len * beams] and
# 'self_value' [batch, heads, max_len * beams, head_dim] (column l * beams + slot), each a tuple
# of blocks of consecutive positions (model/attention.py, `empty_cache_blocks`), 'cross_key'
# [batch, heads, head_dim, source_len], 'cross_value' [batch, heads, source_len, head_dim]}]}.
Cache = dict


def _layer_class(cls: type[nn.Module], config: TransformerConfig) -> type[nn.Module]:
    """The layer class, wrapped in `nn.remat` if configured. `deterministic` (the last argument
    of __call__; argnums count `self` as 0) must stay static."""
    if not config.remat:
        return cls
    deterministic_argnum = 3 if cls is EncoderLayer else 5
    return nn.remat(cls, static_argnums=(deterministic_argnum,))


class Encoder(nn.Module):
    config: TransformerConfig
    embedding: TokenEmbedding

    def setup(self) -> None:
        cfg = self.config
        self.positions = PositionalEncoding(cfg)
        self.dropout = Dropout(cfg.dropout_rate)
        layer = _layer_class(EncoderLayer, cfg)
        self.layers = [layer(cfg, name=f"layer_{i}") for i in range(cfg.num_encoder_layers)]
        if cfg.norm_position == "pre":
            self.final_norm = layer_norm(cfg)

    def __call__(
        self, tokens: Array, positions: Array, segment_ids: Array | None, deterministic: bool
    ) -> Array:
        """tokens [batch, source_length] -> encoded [batch, source_length, embed]."""
        mask = masks.attention_segments(tokens, tokens, segment_ids, segment_ids)
        x = self.positions(self.embedding(tokens), positions)
        x = self.dropout(x, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, mask, deterministic)
        if self.config.norm_position == "pre":
            x = self.final_norm(x)
        return x


class Decoder(nn.Module):
    config: TransformerConfig
    embedding: TokenEmbedding

    def setup(self) -> None:
        cfg = self.config
        self.positions = PositionalEncoding(cfg)
        self.dropout = Dropout(cfg.dropout_rate)
        layer = _layer_class(DecoderLayer, cfg)
        self.layers = [layer(cfg, name=f"layer_{i}") for i in range(cfg.num_decoder_layers)]
        if cfg.norm_position == "pre":
            self.final_norm = layer_norm(cfg)
        if not cfg.tie_output_projection:
            self.output_projection = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.parameter_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.xavier_uniform(), ("embed", "vocab")
                ),
            )

    def logits(self, x: Array) -> Array:
        """Final stream [batch, length, embed] -> float32 logits [batch, length, vocab]."""
        if self.config.norm_position == "pre":
            x = self.final_norm(x)
        if self.config.tie_output_projection:
            return self.embedding.attend(x)
        logits = self.output_projection(x).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    def __call__(
        self,
        encoded: Array,  # [batch, source_length, embed]
        source_tokens: Array,  # [batch, source_length]
        targets: Array,  # [batch, target_length]
        positions: Array,  # [batch, target_length]
        source_segment_ids: Array | None,
        target_segment_ids: Array | None,
        deterministic: bool,
    ) -> Array:
        """Teacher forcing: logits [batch, target_length, vocab] predicting `targets`."""
        decoder_inputs = masks.shift_right(targets, target_segment_ids)
        # Validity comes from `targets`: a shifted-in 0 (begin) is a real position.
        self_mask = masks.attention_segments(
            targets, targets, target_segment_ids, target_segment_ids, causal=True
        )
        cross_mask = masks.attention_segments(
            targets, source_tokens, target_segment_ids, source_segment_ids
        )
        x = self.positions(self.embedding(decoder_inputs), positions)
        x = self.dropout(x, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, self_mask, encoded, cross_mask, deterministic)
        return self.logits(x)

    def init_cache(self, encoded: Array, max_decode_length: int, batch_size: int) -> Cache:
        """An empty cache for `batch_size` decoder rows: encoded.shape[0] sentences, each with
        batch_size / encoded.shape[0] hypotheses (beams) in consecutive rows. The
        cross-attention keys/values of `encoded` are computed here, once per sentence."""
        cfg = self.config
        sentences = encoded.shape[0]
        if batch_size % sentences:
            raise ValueError(f"{batch_size} rows do not split evenly over {sentences} sentences.")
        beams = batch_size // sentences
        self_key, self_value = empty_cache_blocks(
            sentences, cfg.num_heads, cfg.head_dim, max_decode_length, beams, cfg.compute_dtype
        )
        layers = []
        for layer in self.layers:
            cross_key, cross_value = layer.cross_key_value(encoded)
            layers.append(
                {
                    "self_key": self_key,
                    "self_value": self_value,
                    "cross_key": cross_key,
                    "cross_value": cross_value,
                }
            )
        history = jnp.broadcast_to(
            jnp.arange(beams, dtype=jnp.int32)[:, None], (sentences, beams, max_decode_length)
        )
        return {"index": jnp.zeros((), jnp.int32), "history": history, "layers": layers}

    def step(self, token: Array, source_tokens: Array, cache: Cache) -> tuple[Array, Cache]:
        """token [batch * beams, 1]: the previous outputs (0 at the start) -> logits
        [batch * beams, vocab] and the cache with position `index` written."""
        index, history = cache["index"], cache["history"]
        sentences, beams, max_len = history.shape
        slots = jnp.arange(beams, dtype=jnp.int32)
        # Every hypothesis writes position `index` into its own slot.
        history = jax.lax.dynamic_update_slice_in_dim(
            history, jnp.broadcast_to(slots[:, None], (sentences, beams, 1)), index, axis=2
        )
        # Hypothesis k sees column l * beams + s iff slot s holds its position l (l <= index).
        self_mask = (history[..., None] == slots) & (jnp.arange(max_len) <= index)[:, None]
        self_mask = self_mask.reshape(sentences, beams, max_len * beams)
        cross_mask = (source_tokens > 0)[:, None, :]  # [batch, 1, source_length]
        positions = jnp.full(token.shape, index, dtype=jnp.int32)
        x = self.positions(self.embedding(token), positions)
        new_layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"], strict=True):
            x, layer_cache = layer.step(x, layer_cache, index, self_mask, cross_mask)
            new_layers.append(layer_cache)
        new_cache = {"index": index + 1, "history": history, "layers": new_layers}
        return self.logits(x)[:, 0, :], new_cache


class Transformer(nn.Module):
    """Encoder-decoder Transformer with a shared source/target/output embedding."""

    config: TransformerConfig

    def setup(self) -> None:
        cfg = self.config
        self.source_embedding = TokenEmbedding(cfg)
        self.target_embedding = (
            self.source_embedding if cfg.share_embeddings else TokenEmbedding(cfg)
        )
        self.encoder = Encoder(cfg, self.source_embedding)
        self.decoder = Decoder(cfg, self.target_embedding)

    def encode(
        self,
        inputs: Array,  # [batch, source_length] token ids, 0 = padding
        inputs_positions: Array | None = None,
        inputs_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """-> encoded [batch, source_length, embed]."""
        if inputs_positions is None:
            inputs_positions = masks.default_positions(inputs)
        return self.encoder(inputs, inputs_positions, inputs_segment_ids, deterministic)

    def decode(
        self,
        encoded: Array,
        inputs: Array,
        targets: Array,  # [batch, target_length]
        targets_positions: Array | None = None,
        inputs_segment_ids: Array | None = None,
        targets_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Teacher-forced decoder -> float32 logits [batch, target_length, vocab]."""
        if targets_positions is None:
            targets_positions = masks.default_positions(targets)
        return self.decoder(
            encoded,
            inputs,
            targets,
            targets_positions,
            inputs_segment_ids,
            targets_segment_ids,
            deterministic,
        )

    def init_cache(self, encoded: Array, max_decode_length: int, batch_size: int) -> Cache:
        """Cache for `decode_step`; see `Decoder.init_cache`."""
        return self.decoder.init_cache(encoded, max_decode_length, batch_size)

    def decode_step(self, token: Array, inputs: Array, cache: Cache) -> tuple[Array, Cache]:
        """One cached step: token [batch, 1] -> (logits [batch, vocab] float32, new cache)."""
        return self.decoder.step(token, inputs, cache)

    def __call__(
        self,
        inputs: Array,
        targets: Array,
        inputs_positions: Array | None = None,
        targets_positions: Array | None = None,
        inputs_segment_ids: Array | None = None,
        targets_segment_ids: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Full forward pass -> float32 logits [batch, target_length, vocab]."""
        encoded = self.encode(inputs, inputs_positions, inputs_segment_ids, deterministic)
        return self.decode(
            encoded,
            inputs,
            targets,
            targets_positions,
            inputs_segment_ids,
            targets_segment_ids,
            deterministic,
        )
