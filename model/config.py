"""TransformerConfig: the hyper-parameters of the network, and nothing about training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and switches of the encoder-decoder Transformer (Vaswani et al. 2017).

    Defaults are the paper's base model. `configs/*.py` holds the named setups; training
    builds this from `config.model` with `TransformerConfig.from_mapping`.
    """

    vocab_size: int = 37000  # shared source+target vocabulary (id 0 = padding)
    d_model: int = 512  # width of embeddings and of every residual stream
    num_heads: int = 8  # attention heads h
    head_dim: int = 64  # d_k = d_v per head (paper: d_model / h)
    d_ff: int = 2048  # hidden width of the position-wise feed-forward network
    num_encoder_layers: int = 6  # N for the encoder
    num_decoder_layers: int = 6  # N for the decoder
    dropout_rate: float = 0.1  # P_drop on embeddings and on every sub-layer output
    attention_dropout_rate: float = 0.0  # dropout on the attention weights
    relu_dropout_rate: float = 0.0  # dropout on the feed-forward hidden activations
    max_length: int = 256  # longest position the model can embed
    position_embedding: str = "sinusoidal"  # 'sinusoidal' (paper) or 'learned'
    norm_position: str = "post"  # 'post' (paper: LayerNorm(x + Sublayer(x))) or 'pre'
    share_embeddings: bool = True  # one embedding table for source and target
    tie_output_projection: bool = True  # output softmax weights = target embedding
    layer_norm_epsilon: float = 1e-6  # epsilon of every LayerNorm
    dtype: str = "float32"  # compute dtype of activations: 'float32' or 'bfloat16'
    param_dtype: str = "float32"  # storage dtype of parameters
    remat: bool = False  # recompute each layer's activations in the backward pass
    # jax.nn.dot_product_attention backend: 'xla' (any device) or 'cudnn' (fused flash
    # attention on NVIDIA GPUs; needs dtype='bfloat16', no attention dropout)
    attention_implementation: str = "xla"

    def __post_init__(self) -> None:
        checks = {
            "position_embedding must be 'sinusoidal' or 'learned'": self.position_embedding
            in ("sinusoidal", "learned"),
            "norm_position must be 'post' or 'pre'": self.norm_position in ("post", "pre"),
            "dtype must be 'float32' or 'bfloat16'": self.dtype in ("float32", "bfloat16"),
            "attention_implementation must be 'xla' or 'cudnn'": self.attention_implementation
            in ("xla", "cudnn"),
            "param_dtype must be 'float32' or 'bfloat16'": self.param_dtype
            in ("float32", "bfloat16"),
            "d_model must be even (sinusoidal positions pair sin and cos)": self.d_model % 2 == 0,
            "vocab_size, d_model, num_heads, head_dim, d_ff and max_length must be positive": min(
                self.vocab_size,
                self.d_model,
                self.num_heads,
                self.head_dim,
                self.d_ff,
                self.max_length,
            )
            > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"Bad model config: {message}.")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> TransformerConfig:
        """Builds the config from `config.model`, rejecting keys it does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"Unknown model config key(s) {unknown}; known keys are {sorted(known)}. "
                "Check the spelling in your config file or --config.model.* flag."
            )
        return cls(**dict(fields))
