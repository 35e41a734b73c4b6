"""Speed of greedy and beam search decoding through the decoding package.

The output length is capped at the source length, so untrained (random) parameters, which
rarely emit the end token, decode every step up to the cap: a worst case for the length.
Tokens are the output tokens up to and including the end token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarking import timing
from decoding import EOS_ID, PAD_ID, translate_tokens
from model import Transformer


def generated_tokens(outputs: np.ndarray) -> int:
    """Output tokens [batch, length] up to and including each row's first end token."""
    total = 0
    for row in outputs:
        ids = row.tolist()
        total += ids.index(EOS_ID) + 1 if EOS_ID in ids else sum(i != PAD_ID for i in ids)
    return total


def benchmark_decoding(
    model: Transformer,
    params: Any,
    inputs: np.ndarray,  # [sentences, source_length] int32, 0 = padding
    *,
    beam_size: int,
    alpha: float,
    repeats: int,
) -> dict[str, float]:
    """Median seconds of decoding `inputs` (after a compiling call), as tokens/s and
    sentences/s, under keys decode_{greedy|beamN}_*."""
    name = "greedy" if beam_size == 1 else f"beam{beam_size}"
    max_decode_length = min(inputs.shape[1], model.config.max_length)

    def call(_: int) -> Any:
        return translate_tokens(
            model,
            params,
            inputs,
            beam_size=beam_size,
            alpha=alpha,
            max_decode_length=max_decode_length,
        )

    with timing.compile_seconds() as compile_durations:
        outputs = np.asarray(call(0))
    seconds = timing.summarize_times(timing.time_calls(call, repeats)[0], "time")["time_s"]
    return {
        f"decode_{name}_s": seconds,
        f"decode_{name}_compile_s": sum(compile_durations),
        f"decode_{name}_tokens_per_s": generated_tokens(outputs) / seconds,
        f"decode_{name}_sentences_per_s": inputs.shape[0] / seconds,
    }
