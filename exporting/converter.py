"""Our Flax Transformer as a CTranslate2 `TransformerSpec`, built with CTranslate2's converter API.

What has to match for CTranslate2 to compute what our model computes (model/*.py):
- weights: CTranslate2's linear layers hold [out, in] matrices, ours [in, out] kernels (the
  attention kernels with (heads, head_dim) axes), so every kernel is flattened and transposed;
  the fused self-attention kernel [embed, 3 (q, k, v), heads, head_dim] becomes CTranslate2's
  fused [q; k; v] rows, and the cross-attention's [embed, 2 (k, v), heads, head_dim] its fused
  [k; v] rows, both in the same head-major order CTranslate2 splits them back into;
- positions: our own table (the paper's interleaved sin/cos from position 0, or the learned
  one), exactly `max_length` rows: CTranslate2's generated table concatenates sin and cos and
  starts at position 1, and a longer input gets CTranslate2's "No position encodings are
  defined for positions >= max_length" error, never positions the model was not trained on;
- embeddings × √d_model, then + position; LayerNorm epsilon; post-LN (the paper) or pre-LN
  with a final LayerNorm per stack; attention scale 1/√head_dim with our head_dim;
- the shared embedding table and the tied output layer (CTranslate2 stores them once);
- special tokens: padding (id 0) is the decoder's begin token, EOS (id 1) ends a sentence and
  is appended to the source as in training, unk is id 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from ctranslate2.converters.converter import Converter
from ctranslate2.specs import common_spec, transformer_spec

from data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from model import TransformerConfig
from model.embedding import sinusoidal_table

# Quantizations whose non-quantized weights CTranslate2 stores in bfloat16. CTranslate2 casts
# to bfloat16 through PyTorch (not a dependency here); ml_dtypes' bfloat16 arrays it stores as is.
BFLOAT16_STORAGE = ("bfloat16", "int8_bfloat16")


def _linear(spec: common_spec.LinearSpec, kernel: np.ndarray, num_in_axes: int = 1, bias=None):
    """Sets a CTranslate2 linear layer from our kernel [*in, *out] (and bias [*out])."""
    in_size = int(np.prod(kernel.shape[:num_in_axes]))
    spec.weight = np.ascontiguousarray(kernel.reshape(in_size, -1).T)  # [out, in]
    if bias is not None:
        spec.bias = np.ascontiguousarray(bias.reshape(-1))


def _layer_norm(spec: common_spec.LayerNormSpec, norm: Mapping[str, np.ndarray]) -> None:
    spec.gamma = norm["scale"]
    spec.beta = norm["bias"]


def _feed_forward(spec: transformer_spec.FeedForwardSpec, ffn: Mapping[str, Any], norm) -> None:
    _linear(spec.linear_0, ffn["wi"]["kernel"], bias=ffn["wi"]["bias"])
    _linear(spec.linear_1, ffn["wo"]["kernel"], bias=ffn["wo"]["bias"])
    _layer_norm(spec.layer_norm, norm)


def _self_attention(spec, attention: Mapping[str, np.ndarray], norm) -> None:
    """qkv [embed, 3, heads, head_dim] -> fused rows [q; k; v]; out [heads, head_dim, embed]."""
    _linear(spec.linear[0], attention["qkv"])
    _linear(spec.linear[1], attention["out"], num_in_axes=2)
    _layer_norm(spec.layer_norm, norm)


def _cross_attention(spec, attention: Mapping[str, np.ndarray], norm) -> None:
    """query [embed, heads, head_dim]; key_value [embed, 2, heads, head_dim] -> rows [k; v]."""
    _linear(spec.linear[0], attention["query"])
    _linear(spec.linear[1], attention["key_value"])
    _linear(spec.linear[2], attention["out"], num_in_axes=2)
    _layer_norm(spec.layer_norm, norm)


class FlaxTransformerConverter(Converter):
    """Converts our encoder-decoder (config, parameters, vocabulary) to CTranslate2.

    `params` is the unboxed parameter tree of `model.Transformer` (any array type NumPy can
    read); `vocabulary[i]` is the piece of token id i, for every id of the model. Use it as
    any CTranslate2 converter: `FlaxTransformerConverter(...).convert(output_dir,
    quantization=...)`.
    """

    def __init__(self, config: TransformerConfig, params: Any, vocabulary: Sequence[str]) -> None:
        if len(vocabulary) != config.vocab_size:
            raise ValueError(
                f"The vocabulary has {len(vocabulary)} tokens but the model {config.vocab_size}."
            )
        self._config = config
        self._params = params
        self._vocabulary = list(vocabulary)
        self._float_dtype = np.float32

    def convert(self, output_dir: str, vmap=None, quantization=None, force=False) -> str:
        self._float_dtype = ml_dtypes.bfloat16 if quantization in BFLOAT16_STORAGE else np.float32
        return super().convert(output_dir, vmap=vmap, quantization=quantization, force=force)

    def _array(self, value: Any) -> np.ndarray:
        return np.asarray(value).astype(self._float_dtype)

    def _load(self) -> transformer_spec.TransformerSpec:
        cfg = self._config
        params = _as_numpy(self._params, self._array)
        pre_norm = cfg.norm_position == "pre"
        encoder = transformer_spec.TransformerEncoderSpec(
            cfg.num_encoder_layers, cfg.num_heads, pre_norm=pre_norm, head_dim=cfg.head_dim
        )
        decoder = transformer_spec.TransformerDecoderSpec(
            cfg.num_decoder_layers, cfg.num_heads, pre_norm=pre_norm, head_dim=cfg.head_dim
        )
        self._set_encoder(encoder, params)
        self._set_decoder(decoder, params)
        spec = transformer_spec.TransformerSpec(encoder, decoder)
        self._set_config(spec)
        spec.register_source_vocabulary(self._vocabulary)
        spec.register_target_vocabulary(self._vocabulary)
        return spec

    def _positions(self, stack: Mapping[str, Any]) -> np.ndarray:
        """[max_length, d_model]: the learned table, or our sinusoidal one."""
        cfg = self._config
        if cfg.position_embedding == "learned":
            return stack["positions"]["position_embedding"]
        return self._array(sinusoidal_table(cfg.max_length, cfg.d_model))

    def _set_encoder(self, spec: transformer_spec.TransformerEncoderSpec, params) -> None:
        encoder = params["encoder"]
        spec.embeddings[0].weight = params["source_embedding"]["embedding"]
        spec.scale_embeddings = True  # × √d_model, as model/embedding.py does
        spec.position_encodings.encodings = self._positions(encoder)
        if self._config.norm_position == "pre":
            _layer_norm(spec.layer_norm, encoder["final_norm"])
        for i, layer_spec in enumerate(spec.layer):
            layer = encoder[f"layer_{i}"]
            _self_attention(
                layer_spec.self_attention,
                layer["self_attention"],
                layer["attention_residual"]["norm"],
            )
            _feed_forward(
                layer_spec.ffn, layer["feed_forward"], layer["feed_forward_residual"]["norm"]
            )

    def _set_decoder(self, spec: transformer_spec.TransformerDecoderSpec, params) -> None:
        cfg = self._config
        decoder = params["decoder"]
        embedding_scope = "source_embedding" if cfg.share_embeddings else "target_embedding"
        embedding = params[embedding_scope]["embedding"]  # [vocab, embed]
        spec.embeddings.weight = embedding
        spec.scale_embeddings = True
        spec.position_encodings.encodings = self._positions(decoder)
        if cfg.norm_position == "pre":
            _layer_norm(spec.layer_norm, decoder["final_norm"])
        if cfg.tie_output_projection:
            spec.projection.weight = embedding  # already [out = vocab, in = embed]
        else:
            _linear(spec.projection, decoder["output_projection"]["kernel"])
        for i, layer_spec in enumerate(spec.layer):
            layer = decoder[f"layer_{i}"]
            _self_attention(
                layer_spec.self_attention,
                layer["self_attention"],
                layer["self_attention_residual"]["norm"],
            )
            _cross_attention(
                layer_spec.attention,
                layer["cross_attention"],
                layer["cross_attention_residual"]["norm"],
            )
            _feed_forward(
                layer_spec.ffn, layer["feed_forward"], layer["feed_forward_residual"]["norm"]
            )

    def _set_config(self, spec: transformer_spec.TransformerSpec) -> None:
        pad, eos, unk = (self._vocabulary[i] for i in (PAD_ID, EOS_ID, UNK_ID))
        spec.config.layer_norm_epsilon = self._config.layer_norm_epsilon
        spec.config.unk_token = unk
        spec.config.eos_token = eos
        spec.config.bos_token = pad  # our begin token is padding: there is no BOS
        spec.config.decoder_start_token = pad
        spec.config.add_source_bos = False
        spec.config.add_source_eos = True  # training appends EOS to every source


def _as_numpy(tree: Any, to_array) -> Any:
    """The parameter tree as nested dicts of NumPy arrays (`to_array` on every leaf)."""
    if isinstance(tree, Mapping):
        return {key: _as_numpy(value, to_array) for key, value in tree.items()}
    return to_array(tree)
