"""The encoder-decoder attention of one translated sentence as a picture: for every decoder
layer, a heatmap of target subwords (rows) x source subwords (columns), averaged over heads.

Row i is the attention of the decoder position that emits target subword i (the last row
emits the end of sentence). Aligned words light up near the diagonal in word order; heads
that look at the end of sentence or at punctuation show as bright columns.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from matplotlib.figure import Figure

from decoding.cached_model import EOS_ID
from decoding.translator import (
    bucket_length,
    cross_attention_weights,
    encode_texts,
    output_ids,
    translate_tokens,
)
from input_pipeline import Tokenizer
from model import Transformer

MAX_PANEL_COLUMNS = 3


@dataclasses.dataclass
class SentenceAttention:
    source_pieces: list[str]  # source subwords, '</s>' last
    target_pieces: list[str]  # output subwords, '</s>' last
    translation: str
    weights: np.ndarray  # [decoder layers, target, source] float32, mean over heads
    truncated: bool  # the source was longer than the model's maximum and was cut


def _pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    processor = spm.SentencePieceProcessor(model_proto=tokenizer.to_bytes())
    return [processor.id_to_piece(int(i)) for i in ids]


def sentence_attention(
    model: Transformer,
    params,
    tokenizer: Tokenizer,
    text: str,
    *,
    beam_size: int,
    alpha: float,
    max_extra_length: int,
    max_input_length: int,
) -> SentenceAttention:
    """Translates `text` (one sentence) and returns its head-averaged cross-attention."""
    if not text.strip():
        raise ValueError("The attention plot needs a non-empty sentence.")
    (source_ids,), num_truncated = encode_texts(tokenizer, [text], max_input_length)
    model_max = model.config.max_length
    inputs = np.zeros((1, bucket_length(len(source_ids), max_input_length)), np.int32)
    inputs[0, : len(source_ids)] = source_ids
    outputs = translate_tokens(
        model,
        params,
        inputs,
        beam_size=beam_size,
        alpha=alpha,
        max_decode_length=min(inputs.shape[1] + max_extra_length, model_max),
        max_lengths=np.array([min(len(source_ids) + max_extra_length, model_max)], np.int32),
    )
    target_ids = output_ids(np.asarray(outputs)[0])
    target_ids = (target_ids + [EOS_ID])[:model_max]  # teacher-forced, the end included
    weights = cross_attention_weights(model, params, source_ids, target_ids)
    return SentenceAttention(
        source_pieces=_pieces(tokenizer, source_ids),
        target_pieces=_pieces(tokenizer, target_ids),
        translation=tokenizer.decode(target_ids),
        weights=weights.mean(axis=1),  # [layers, target, source]
        truncated=num_truncated > 0,
    )


def plot_attention(attention: SentenceAttention, path: str | Path) -> None:
    """Writes the heatmaps (one panel per decoder layer) to `path` (PNG, or any format
    matplotlib knows from the suffix)."""
    num_layers, num_target, num_source = attention.weights.shape
    columns = min(num_layers, MAX_PANEL_COLUMNS)
    rows = math.ceil(num_layers / columns)
    cell = 0.28  # inches per subword
    panel_width = max(3.0, 1.5 + cell * num_source)
    panel_height = max(3.0, 1.5 + cell * num_target)
    figure = Figure(
        figsize=(columns * panel_width, rows * panel_height + 0.6), layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    for layer, ax in enumerate(axes.flat):
        if layer >= num_layers:
            ax.set_axis_off()
            continue
        image = ax.imshow(attention.weights[layer], cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_title(f"decoder layer {layer + 1}")
        ax.set_xticks(range(num_source), attention.source_pieces, rotation=90, fontsize=8)
        ax.set_yticks(range(num_target), attention.target_pieces, fontsize=8)
        ax.set_xlabel("source subwords")
        ax.set_ylabel("target subwords")
        figure.colorbar(image, ax=ax, shrink=0.8)
    characters_per_line = int(columns * panel_width * 10)  # about 10 per inch at 10 pt
    title = textwrap.fill(f"output: {attention.translation}", characters_per_line)
    figure.suptitle(f"Encoder-decoder attention, mean over heads\n{title}", fontsize=10)
    figure.savefig(path, dpi=100)
