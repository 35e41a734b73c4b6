"""Exact-match accuracy and BLEU of a trained checkpoint on a held-out split.

    python scripts/exact_match.py --checkpoint=runs/default [--num_examples=1000] [--beam_size=4]

Restores the newest checkpoint of a workdir (or a given checkpoints/<step> folder) with
`training.checkpointing.restore_for_inference`, translates the first `num_examples` sentences
of the split with the config's decoding settings, and prints the share of outputs equal to the
reference, sacreBLEU, and the decoding time, then the same figures as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir (newest checkpoint) or one checkpoints/<step> folder."
)
_SPLIT = flags.DEFINE_string("split", None, "Split to score (default: the config's test split).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 1000, "Sentences to translate (-1 = all).")
_BEAM_SIZE = flags.DEFINE_integer(
    "beam_size", None, "Beam size (1 = greedy; default: the config's decode.beam_size)."
)
_SHOW = flags.DEFINE_integer("show", 5, "Wrong translations to print, as examples.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CHECKPOINT.value is None:
        raise app.UsageError("--checkpoint is required (a training workdir, e.g. runs/default).")

    import input_pipeline
    from model import Transformer
    from training import evaluation
    from training.checkpointing import restore_for_inference
    from training.configuration import model_config

    try:
        config, params, tokenizer = restore_for_inference(_CHECKPOINT.value)
    except FileNotFoundError as error:
        sys.exit(f"exact_match.py: error: {error}")
    split = _SPLIT.value or config.data.test_split
    pairs = input_pipeline.raw_examples(config.data, split)
    if _NUM_EXAMPLES.value >= 0:
        pairs = pairs[: _NUM_EXAMPLES.value]
    if _BEAM_SIZE.value is not None:
        config.decode.beam_size = _BEAM_SIZE.value

    start = time.perf_counter()
    hypotheses = evaluation.translate(
        Transformer(model_config(config)),
        params,
        tokenizer,
        [s for s, _ in pairs],
        config.decode,
        config.data.max_predict_length,
    )
    seconds = time.perf_counter() - start
    references = [t for _, t in pairs]
    figures = {
        "split": split,
        "examples": len(pairs),
        "beam_size": config.decode.beam_size,
        "exact_match": evaluation.exact_match(hypotheses, references),
        "bleu": evaluation.corpus_bleu(hypotheses, references),
        "decode_seconds": round(seconds, 1),
    }
    wrong = [(p, h) for p, h in zip(pairs, hypotheses, strict=True) if h.strip() != p[1].strip()]
    for (source, reference), hypothesis in wrong[: _SHOW.value]:
        print(f"wrong: {source}  =>  {hypothesis}  (reference: {reference})")
    print(
        f"{split}: exact match {figures['exact_match']:.2%} of {len(pairs)} sentences, "
        f"BLEU {figures['bleu']:.2f}, beam {figures['beam_size']}, decoding {seconds:.1f} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
