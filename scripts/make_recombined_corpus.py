"""A large parallel corpus for scale experiments: Multi30k sentence pairs recombined.

    python scripts/make_recombined_corpus.py --out=/tmp/recombined --pairs=4500000

Each output pair joins 1 to 3 training pairs of Multi30k drawn at random (the English sides
joined by spaces, the German sides likewise, so every line pair is still a translation), which
gives WMT14-like sentence lengths (Multi30k captions are short). Writes OUT/train.en and
OUT/train.de (plain text, --pairs lines each) and copies Multi30k's val and test_2016_flickr
files, so `--config=configs/multi30k.py --config.data.dir=OUT` reads it as a text_files corpus.
Deterministic from --seed. Never commit the output.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from data import text_files  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output folder (created).", required=True)
_PAIRS = flags.DEFINE_integer("pairs", 4_500_000, "Sentence pairs in the training split.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_MULTI30K = flags.DEFINE_string(
    "multi30k_dir",
    str(Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"),
    "Folder of the Multi30k files (train.en.gz, train.de.gz, val.*, test_2016_flickr.*).",
)
CHUNK = 100_000  # pairs generated and written at a time
PARTS_PER_PAIR = (1, 2, 3)  # how many Multi30k pairs one output pair joins...
PARTS_PROBABILITY = (0.3, 0.4, 0.3)  # ...and how often


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    source = Path(_MULTI30K.value)
    pairs = list(
        text_files.read_parallel_lines(
            text_files.find_split_file(str(source), "train", "en"),
            text_files.find_split_file(str(source), "train", "de"),
        )
    )
    english = np.array([e for e, _ in pairs], dtype=object)
    german = np.array([g for _, g in pairs], dtype=object)
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_SEED.value)
    with open(out / "train.en", "w") as en_file, open(out / "train.de", "w") as de_file:
        for start in range(0, _PAIRS.value, CHUNK):
            count = min(CHUNK, _PAIRS.value - start)
            parts = rng.choice(PARTS_PER_PAIR, size=count, p=PARTS_PROBABILITY)
            drawn = rng.integers(0, len(pairs), size=(count, max(PARTS_PER_PAIR)))
            for lines, file in ((english, en_file), (german, de_file)):
                file.writelines(" ".join(lines[drawn[i, : parts[i]]]) + "\n" for i in range(count))
            print(f"{start + count:,} / {_PAIRS.value:,} pairs", end="\r", file=sys.stderr)
    for split in ("val", "test_2016_flickr"):
        for lang in ("en", "de"):
            shutil.copy(text_files.find_split_file(str(source), split, lang), out)
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
