"""Decoding: greedy and beam search over the Transformer's key/value cache, and the entry points
that translate token ids and texts with `DecodeSettings`."""

from decoding.beam_search import BeamSearchResult, beam_search, length_penalty
from decoding.cached_model import EOS_ID, PAD_ID
from decoding.greedy import greedy_search
from decoding.settings import DecodeSettings, DecodeSettingsError
from decoding.translator import (
    cross_attention_weights,
    keep_compiled_decoders,
    translate_texts,
    translate_tokens,
)

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "BeamSearchResult",
    "DecodeSettings",
    "DecodeSettingsError",
    "beam_search",
    "cross_attention_weights",
    "greedy_search",
    "keep_compiled_decoders",
    "length_penalty",
    "translate_texts",
    "translate_tokens",
]
