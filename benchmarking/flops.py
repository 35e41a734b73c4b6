"""Model FLOPs of one training step, counted analytically from the config.

Only matrix products are counted, each as 2·m·n·k FLOPs (a multiply and an add), because they
are what the hardware peak measures and they are all but a few percent of the work; LayerNorm,
softmax, dropout, the loss and the optimizer are left out (the usual convention for MFU, e.g.
PaLM, Chowdhery et al. 2022, appendix B). The count is what the implementation computes:

Per example, with source length S, target length T, d = d_model, a = heads·head_dim, f = d_ff,
V = vocab_size:

    encoder layer    Q,K,V projections      2·S·d·3a
                     attention scores QKᵀ   2·S·S·a
                     weighted sum of V      2·S·S·a
                     output projection W^O  2·S·a·d
                     feed-forward           2·S·d·f + 2·S·f·d
    decoder layer    masked self-attention  as the encoder's, with T for S (the full T×T score
                                            matrix is computed, so the causal mask saves nothing)
                     cross-attention        2·T·d·a (Q) + 2·S·d·2a (K,V of the encoder output)
                                            + 2·T·S·a (scores) + 2·T·S·a (weighted sum)
                                            + 2·T·a·d (W^O)
                     feed-forward           2·T·d·f + 2·T·f·d
    output layer     logits x·Eᵀ            2·T·d·V

Padding is counted: the device computes on every position of a packed row, pad or not.
Training costs 3x the forward pass: the backward pass takes two products per forward product,
one for the gradient of the activations and one for the gradient of the weights.
"""

from __future__ import annotations

import dataclasses

from model.config import TransformerConfig


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
    """Forward-pass FLOPs of one batch, split by where they are spent."""

    encoder: int  # all encoder layers
    decoder: int  # all decoder layers (self-attention, cross-attention, feed-forward)
    output_projection: int  # final logits over the vocabulary

    @property
    def total(self) -> int:
        return self.encoder + self.decoder + self.output_projection


def _self_attention_flops(length: int, d: int, a: int) -> int:
    projections = 2 * length * d * 3 * a + 2 * length * a * d
    scores_and_sum = 2 * (2 * length * length * a)
    return projections + scores_and_sum


def _feed_forward_flops(length: int, d: int, f: int) -> int:
    return 2 * (2 * length * d * f)


def forward_flops(
    config: TransformerConfig, batch_size: int, source_length: int, target_length: int
) -> ForwardFlops:
    """Matrix-product FLOPs of one forward pass over [batch_size, length] rows (formula above)."""
    d, a, f = config.d_model, config.num_heads * config.head_dim, config.d_ff
    s, t = source_length, target_length
    encoder_layer = _self_attention_flops(s, d, a) + _feed_forward_flops(s, d, f)
    cross_attention = 2 * t * d * a + 2 * s * d * 2 * a + 2 * (2 * t * s * a) + 2 * t * a * d
    decoder_layer = _self_attention_flops(t, d, a) + cross_attention + _feed_forward_flops(t, d, f)
    return ForwardFlops(
        encoder=batch_size * config.num_encoder_layers * encoder_layer,
        decoder=batch_size * config.num_decoder_layers * decoder_layer,
        output_projection=batch_size * 2 * t * d * config.vocab_size,
    )


def train_step_flops(
    config: TransformerConfig, batch_size: int, source_length: int, target_length: int
) -> int:
    """Model FLOPs of one training step: forward + backward = 3x the forward pass."""
    return 3 * forward_flops(config, batch_size, source_length, target_length).total
