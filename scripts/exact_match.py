"""Exact-match accuracy and BLEU of a trained checkpoint on a held-out split.

    python scripts/exact_match.py --checkpoint=runs/default [--num_examples=-1] [--beam_size=4]

Restores the newest checkpoint of a workdir (or a given checkpoints/<step> folder) with
`training.restoring.restore_for_translation`, translates the first `num_examples` sentences of
the split with the checkpoint's decode settings, and prints the share of outputs equal to the
reference, sacreBLEU and the decoding time; on the numbers corpus also the exact match of each
magnitude band (numbers of 1 digit, 2 digits, ...). Then the same figures as one JSON line.
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
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", -1, "Sentences to translate (-1 = all).")
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
    from data import numbers
    from decoding import DecodeSettings, DecodeSettingsError, translate_texts
    from decoding.settings import max_input_length
    from training import evaluation, restoring

    try:
        restored = restoring.restore_for_translation(_CHECKPOINT.value)
        settings = DecodeSettings.from_config(restored.config.decode, beam_size=_BEAM_SIZE.value)
    except (restoring.RestoreError, DecodeSettingsError) as error:
        sys.exit(f"exact_match.py: error: {error}")
    config = restored.config
    split = _SPLIT.value or config.data.test_split
    pairs = input_pipeline.raw_examples(config.data, split)
    if _NUM_EXAMPLES.value >= 0:
        pairs = pairs[: _NUM_EXAMPLES.value]

    start = time.perf_counter()
    hypotheses = translate_texts(
        restored.model,
        restored.params,
        restored.tokenizer,
        [s for s, _ in pairs],
        settings,
        max_input_length(config),
    )
    seconds = time.perf_counter() - start
    references = [t for _, t in pairs]
    correct = [h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True)]
    figures = {
        "split": split,
        "examples": len(pairs),
        "beam_size": settings.beam_size,
        "exact_match": evaluation.exact_match(hypotheses, references),
        "bleu": evaluation.corpus_bleu(hypotheses, references),
        "decode_seconds": round(seconds, 1),
    }
    wrong = [(p, h) for p, h, ok in zip(pairs, hypotheses, correct, strict=True) if not ok]
    for (source, reference), hypothesis in wrong[: _SHOW.value]:
        print(f"wrong: {source}  =>  {hypothesis}  (reference: {reference})")
    print(
        f"{split}: exact match {figures['exact_match']:.2%} of {len(pairs)} sentences, "
        f"BLEU {figures['bleu']:.2f}, beam {figures['beam_size']}, decoding {seconds:.1f} s"
    )
    if config.data.source == "numbers":
        drawn = numbers.numbers_of_split(config.data, split)[: len(pairs)]
        bands = numbers.exact_match_by_band([numbers.digit_count(n) for n in drawn], correct)
        for digits, (count, share) in bands.items():
            print(f"  {digits}-digit numbers: exact match {share:.2%} of {count}")
        figures["exact_match_by_digits"] = {str(d): share for d, (_, share) in bands.items()}
        figures["examples_by_digits"] = {str(d): count for d, (count, _) in bands.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    app.run(main)
