"""sacreBLEU and speed of CTranslate2 (float32 and int8 exports) against our decoding, side by
side in one run, on a held-out split. Prints one JSON object.

    python scripts/ctranslate2_compare.py --workdir=/work/runs/multi30k [--average_last=5] \\
        [--num_examples=-1] [--repeats=2] [--greedy]

Restores the checkpoint (training.restoring.restore_for_translation), exports it twice into a
temporary directory (exporting.export_checkpoint: float32 and int8), and translates the first
`num_examples` source sentences of the config's test split with the config's decode settings
(or greedy search): ours with translate_texts, CTranslate2 with exporting.ExportedTranslator.
A first pass per system warms up (our compilations, CTranslate2's allocations) and gives the
translations; then `repeats` timed passes, interleaved (ours, float32, int8, ours, ...).
Speeds are sentences/s of those passes; compare them only within one run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (newest checkpoint), or a step.")
_AVERAGE_LAST = flags.DEFINE_integer("average_last", 1, "Average the last N checkpoints.")
_SPLIT = flags.DEFINE_string("split", None, "Split to translate (default: config's test split).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", -1, "Sentences to translate (-1 = all).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed passes per system, interleaved.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Greedy search instead of config.decode's beam.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "CTranslate2 intra_threads (0: CTranslate2's default, all cores)."
)


def timed_passes(systems: dict[str, Callable[[], list[str]]], repeats: int) -> dict:
    """{name: [seconds of each timed pass]}, the systems interleaved pass by pass."""
    seconds = {name: [] for name in systems}
    for _ in range(repeats):
        for name, translate in systems.items():
            start = time.perf_counter()
            translate()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def same_lines(a: Sequence[str], b: Sequence[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1 or _WORKDIR.value is None:
        raise app.UsageError("Pass --workdir=DIR (and no positional arguments).")

    import dataclasses

    import exporting
    import input_pipeline
    from decoding import DecodeSettings, translate_texts
    from decoding.scoring import bleu
    from decoding.settings import max_input_length
    from training import restoring

    restored = restoring.restore_for_translation(_WORKDIR.value, average_last=_AVERAGE_LAST.value)
    config = restored.config
    settings = DecodeSettings.from_config(config.decode)
    if _GREEDY.value:
        settings = dataclasses.replace(settings, strategy="greedy", beam_size=1)
    split = _SPLIT.value or config.data.test_split
    pairs = input_pipeline.raw_examples(config.data, split)
    if _NUM_EXAMPLES.value >= 0:
        pairs = pairs[: _NUM_EXAMPLES.value]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]

    with tempfile.TemporaryDirectory() as directory:
        translators = {}
        for quantization in ("float32", "int8"):
            output = exporting.export_checkpoint(
                restored, Path(directory) / quantization, quantization
            )
            translators[f"ctranslate2_{quantization}"] = exporting.ExportedTranslator(
                output, intra_threads=_THREADS.value
            )
        systems = {
            "ours": lambda: translate_texts(
                restored.model,
                restored.params,
                restored.tokenizer,
                sources,
                settings,
                max_input_length(config),
            ),
            **{
                name: (lambda t=translator: t.translate(sources, settings))
                for name, translator in translators.items()
            },
        }
        start = time.perf_counter()
        outputs = {}
        warm_up_seconds = {}
        for name, translate in systems.items():
            start = time.perf_counter()
            outputs[name] = translate()
            warm_up_seconds[name] = round(time.perf_counter() - start, 2)
        seconds = timed_passes(systems, _REPEATS.value)

    figures = {
        "checkpoints_dir": str(restored.checkpoints_dir),
        "steps": restored.steps,
        "split": split,
        "sentences": len(sources),
        "settings": dataclasses.asdict(settings),
        "ctranslate2_length_penalty": "score / length^alpha (ours: GNMT ((5+length)/6)^alpha)",
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "systems": {
            name: {
                "bleu": round(bleu(outputs[name], references).score, 2),
                "same_lines_as_ours": round(same_lines(outputs[name], outputs["ours"]), 4),
                "first_pass_seconds": warm_up_seconds[name],
                "seconds": [round(s, 2) for s in seconds[name]],
                "sentences_per_second": round(len(sources) / min(seconds[name]), 1)
                if seconds[name]
                else None,
            }
            for name in systems
        },
        "bleu_signature": bleu(outputs["ours"], references).signature,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    app.run(main)
