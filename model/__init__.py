"""The paper's encoder-decoder Transformer as pure Flax linen modules (no mesh, no training)."""

from model.config import TransformerConfig
from model.transformer import Cache, Transformer

__all__ = ["Cache", "Transformer", "TransformerConfig"]
