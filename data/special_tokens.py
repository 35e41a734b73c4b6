"""The special token ids, and the two operations on id sequences that depend on them.

Every module that needs an id or one of these operations imports it from here: the tokenizer,
the input pipeline, the searches and the translator.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD_ID = 0  # padding; also the decoder's first input (there is no begin-of-sentence token)
EOS_ID = 1  # end of sentence: appended to every encoded text, ends every search hypothesis
UNK_ID = 2  # a piece the vocabulary does not have


def truncate_keeping_eos(ids: list[int], max_length: int) -> list[int]:
    """`ids` (an encoded text, EOS last) cut to at most `max_length` tokens: the first
    max_length - 1 tokens and EOS."""
    return ids if len(ids) <= max_length else ids[: max_length - 1] + [EOS_ID]


def cut_at_eos(ids: Iterable[int]) -> list[int]:
    """The tokens before the first EOS (all of them if there is none), padding dropped."""
    tokens = []
    for token in ids:
        if token == EOS_ID:
            break
        if token != PAD_ID:
            tokens.append(token)
    return tokens
