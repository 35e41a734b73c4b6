"""What the training input pipeline costs: tokens per second on one host, CPU seconds per global
batch on process 0 of H hosts, packing efficiency per virtual shard count. Prints JSON.

    python scripts/pipeline_throughput.py --config=configs/multi30k.py --batch_size=256 \\
        [--baseline_dir=DIR] [--rounds=3] [--num_batches=100] [--process_counts=1,2,4,8]

Every figure is measured in a fresh subprocess (`--worker`) that builds the real training
iterator (no prefetch thread, so all its work is in the timed calls), reads --warmup_batches
and times the next --num_batches with `time.process_time` (CPU seconds of the whole process,
threads included) and the wall clock. On a shared machine CPU seconds are the fair figure; the
machine's load average is printed with the figures.

--baseline_dir: another checkout of this project, e.g. made by
`mkdir /tmp/before && git archive COMMIT | tar -x -C /tmp/before`; its pipeline is measured the
same way, alternating with this one round by round, so "before" and "after" see the same load.
Both read the corpus prepared in --prepared_dir.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]

_CONFIG = flags.DEFINE_string("config", "configs/multi30k.py", "Config file (repository path).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch rows.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "Tokens per row.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", "A sentencepiece model file; '' = train one into --workdir."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/throughput", "Where a tokenizer is trained.")
_PREPARED_DIR = flags.DEFINE_string(
    "prepared_dir", ".cache/data", "data.prepared_dir for every measurement."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    str(REPO.parent / "shared" / "data" / "multi30k"),
    "data.dir of a text_files config (default: the Multi30k copy next to this repository).",
)
_BASELINE_DIR = flags.DEFINE_string("baseline_dir", "", "A checkout to compare with ('' = none).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of the throughput figure.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 100, "Batches timed per measurement.")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 3, "Batches read before timing.")
_PROCESS_COUNTS = flags.DEFINE_list("process_counts", ["1", "2", "4", "8"], "Simulated hosts.")
_SHARD_COUNTS = flags.DEFINE_list(
    "shard_counts", ["1", "8", "64", "0"], "data.virtual_shards values for packing efficiency."
)
_EFFICIENCY_BATCHES = flags.DEFINE_integer(
    "efficiency_batches", 60, "Batches over which packing efficiency is counted."
)
_WORKER = flags.DEFINE_bool("worker", False, "Internal: measure once, print one JSON line.")
_CODE_DIR = flags.DEFINE_string("code_dir", str(REPO), "Internal: whose input_pipeline to time.")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", 1, "Internal: hosts simulated.")
_VIRTUAL_SHARDS = flags.DEFINE_integer("virtual_shards", 0, "Internal: data.virtual_shards.")


def measure() -> dict:
    """Worker: times process 0 of --process_count hosts of --code_dir's pipeline."""
    sys.path.insert(0, _CODE_DIR.value)
    import numpy as np

    import input_pipeline

    config_file = Path(_CODE_DIR.value) / _CONFIG.value
    module_spec = importlib.util.spec_from_file_location("measured_config", config_file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = _BATCH_SIZE.value
    config.data.max_length = _MAX_LENGTH.value
    config.data.prepared_dir = _PREPARED_DIR.value
    config.data.prefetch_batches = 0
    if config.data.source == "text_files":
        config.data.dir = _DATA_DIR.value
    if "virtual_shards" in config.data:
        config.data.virtual_shards = _VIRTUAL_SHARDS.value
    if _TOKENIZER.value:
        tokenizer = input_pipeline.Tokenizer.load(_TOKENIZER.value)
    else:
        input_pipeline.prepare(config.data)
        tokenizer = input_pipeline.get_tokenizer(config.data, _WORKDIR.value)
    iterator = input_pipeline.train_iterator(
        config, tokenizer, process_index=0, process_count=_PROCESS_COUNT.value
    )
    for _ in range(_WARMUP_BATCHES.value):
        next(iterator)
    target_tokens = cells = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
        batch = next(iterator)
        target_tokens += int(np.count_nonzero(batch["targets"]))
        cells += batch["targets"].size
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "process_count": _PROCESS_COUNT.value,
        "virtual_shards": _VIRTUAL_SHARDS.value,
        "cpu_s_per_global_batch": cpu / _NUM_BATCHES.value,
        "host_target_tokens_per_cpu_s": target_tokens / cpu,
        "host_target_tokens_per_wall_s": target_tokens / wall,
        "non_pad_fraction": target_tokens / cells,
    }


def run_worker(code_dir: str, **overrides) -> dict:
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        f"--code_dir={code_dir}",
        *(f"--{f}={flags.FLAGS[f].value}" for f in ("config", "batch_size", "max_length")),
        *(f"--{f}={flags.FLAGS[f].value}" for f in ("tokenizer", "warmup_batches", "data_dir")),
        f"--workdir={Path(_WORKDIR.value).absolute()}",
        f"--prepared_dir={Path(_PREPARED_DIR.value).absolute()}",
        *(f"--{key}={value}" for key, value in overrides.items()),
    ]
    result = subprocess.run(args, cwd=code_dir, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"error: the measurement in {code_dir} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _WORKER.value:
        print(json.dumps(measure()))
        return
    codes = {"after": str(REPO)}
    if _BASELINE_DIR.value:
        codes = {"before": str(Path(_BASELINE_DIR.value).absolute()), **codes}
    report = {
        "batch": f"{_BATCH_SIZE.value}x{_MAX_LENGTH.value}",
        "config": _CONFIG.value,
        "cpus": os.cpu_count(),
        "load_average_at_start": load(),
    }
    timed = {"num_batches": _NUM_BATCHES.value}
    print(f"load average {load()}; throughput, one host", file=sys.stderr)
    report["throughput_one_host"] = [
        {"code": name, "round": r, **run_worker(code, **timed)}
        for r in range(_ROUNDS.value)
        for name, code in codes.items()
    ]
    print(f"load average {load()}; process 0 of H hosts", file=sys.stderr)
    hosts = [
        {"code": name, **run_worker(code, process_count=int(h), **timed)}
        for h in _PROCESS_COUNTS.value
        for name, code in codes.items()
    ]
    for name in codes:
        one = next(h for h in hosts if h["code"] == name and h["process_count"] == 1)
        for h in hosts:
            if h["code"] == name:
                h["cpu_vs_1_host"] = h["cpu_s_per_global_batch"] / one["cpu_s_per_global_batch"]
    report["process_0_of_hosts"] = hosts
    print(f"load average {load()}; packing efficiency", file=sys.stderr)
    efficiency = {"num_batches": _EFFICIENCY_BATCHES.value}
    report["packing_by_virtual_shards"] = [
        {
            "virtual_shards": int(v) or _BATCH_SIZE.value,
            "non_pad_fraction": run_worker(str(REPO), virtual_shards=v, **efficiency)[
                "non_pad_fraction"
            ],
        }
        for v in _SHARD_COUNTS.value
    ]
    report["load_average_at_end"] = load()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
