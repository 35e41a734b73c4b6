"""What preparing a corpus for training costs: time, peak memory, disk. Prints JSON.

    python scripts/make_recombined_corpus.py --out=/tmp/recombined --pairs=4500000
    python scripts/preparation_cost.py --data_dir=/tmp/recombined \\
        --prepared_dir=/tmp/recombined_prepared --tokenizer=runs/multi30k/tokenizer/spm.model

Three phases, in this process, each timed (wall and CPU seconds) with the peak resident memory
after it (`ru_maxrss`, the maximum since the process started): the TFDS preparation of the
text files (array_record), the tokenization into token ids (data/token_ids.py), and the start
of the training iterator plus --num_batches batches; with the resident memory at the end of
each, split into anonymous and file-backed (memory-mapped) pages. Then the disk size of each
result. Use a fresh --prepared_dir to measure a first preparation; a second call shows the
reuse.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

import input_pipeline  # noqa: E402
from configs import multi30k  # noqa: E402
from data import sources, token_ids  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder of SPLIT.LANG files.", required=True)
_PREPARED_DIR = flags.DEFINE_string("prepared_dir", None, "data.prepared_dir.", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "A sentencepiece model.", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch rows.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 50, "Training batches read at the end.")


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def resident_now() -> dict[str, int]:
    """Resident memory now, MiB: anonymous (the process's own data) and file-backed (pages
    of memory-mapped files such as the token ids, which the kernel can drop at will)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[f"{name[3:].lower()}_rss_mib_now"] = int(value.split()[0]) // 1024
    return fields


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = multi30k.get_config()
    config.data.dir = _DATA_DIR.value
    config.data.prepared_dir = _PREPARED_DIR.value
    config.data.prefetch_batches = 0
    config.batch_size = _BATCH_SIZE.value
    tokenizer = input_pipeline.Tokenizer.load(_TOKENIZER.value)
    phases = {}

    def timed(name, work):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        phases[name] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "peak_rss_mib_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            **resident_now(),
        }
        print(name, phases[name], file=sys.stderr)
        return result

    timed("prepare_corpus", lambda: input_pipeline.prepare(config.data))
    ids_dir = timed(
        "tokenize_once",
        lambda: token_ids.prepare_token_ids(config.data, tokenizer, config.data.train_split),
    )

    def first_batches():
        iterator = input_pipeline.train_iterator(
            config, tokenizer, process_index=0, process_count=1
        )
        for _ in range(_NUM_BATCHES.value):
            next(iterator)

    timed("iterator_start_and_batches", first_batches)
    corpus_dir = Path(sources.builder(config.data).data_dir)
    text_bytes = sum(f.stat().st_size for f in Path(_DATA_DIR.value).glob("train.*"))
    report = {
        "train_examples": token_ids.TokenIds.open(ids_dir).num_examples,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "phases": phases,
        "disk_mib": {
            "train_text_files": round(text_bytes / 2**20, 1),
            "prepared_corpus_all_splits": round(disk_bytes(corpus_dir) / 2**20, 1),
            "train_token_ids": round(disk_bytes(ids_dir) / 2**20, 1),
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
