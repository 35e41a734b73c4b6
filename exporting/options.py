"""The `Translator.translate_batch` options that decode an export as translate.py decodes.

CTranslate2's defaults differ from our decoding (decoding/): beam 2 with length penalty
score / length^1 (ours: config.decode.beam_size, GNMT ((5 + length) / 6)^alpha), at least one
output token (ours may end at once), padding allowed as an output (ours never emits it),
inputs up to 1024 tokens and outputs up to 256 (ours: the model's max_length positions; past
them CTranslate2 raises "No position encodings are defined for positions >= max_length").
Greedy search with these options gives our tokens exactly (with one output length limit per
batch, see `decoding_length`); beam search still differs in the length penalty, which
CTranslate2 cannot express (docs/export.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from decoding.settings import DecodeSettings


def translate_options(
    pad_piece: str,
    settings: DecodeSettings,
    *,
    max_input_length: int,
    max_decoding_length: int,
) -> dict[str, Any]:
    """Keyword arguments of `translate_batch` for `settings` (greedy or beam search with its
    beam size and alpha; max_extra_length and batch_size are the caller's: see
    `decoding_length`). `max_input_length` counts the source's EOS (translate.py:
    decoding.settings.max_input_length(config)); `max_decoding_length` is at most the model's
    max_length."""
    return {
        "beam_size": settings.beam_size,
        "length_penalty": settings.alpha,  # the nearest CTranslate2 has to our GNMT penalty
        "max_input_length": max_input_length,
        "max_decoding_length": max_decoding_length,
        "min_decoding_length": 0,  # EOS may come first, as in our searches
        "suppress_sequences": [[pad_piece]],  # padding (id 0) is never an output
    }


def decoding_length(
    source_pieces: Sequence[Sequence[str]],
    *,
    max_extra_length: int,
    max_input_length: int,
    max_length: int,
) -> int:
    """translate_texts' output limit for a batch: the longest source (with EOS, truncated to
    max_input_length) plus max_extra_length, at most max_length. (Ours caps each sentence at
    its own length plus max_extra_length; CTranslate2 has one limit per batch, so translate
    one sentence per call, or sentences of similar length together, to match it.)"""
    longest = max((min(len(p) + 1, max_input_length) for p in source_pieces), default=1)
    return min(longest + max_extra_length, max_length)
