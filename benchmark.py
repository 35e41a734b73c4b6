"""How fast, how close to the hardware: train-step throughput, MFU, compile time, memory and
decoding speed of a config on all local devices.

    python benchmark.py --config=configs/base.py --batch_size=8 --length=64 [--json=FILE]

Batches are synthetic packed rows (--fill_rate of each row carries tokens) or, with
--real_data, the config's own corpus through the input pipeline. Prints a markdown table;
--json writes every figure. See README, "Performance log" and "Running on accelerators".
"""

from __future__ import annotations

from training.host_memory import use_huge_pages

if __name__ == "__main__":
    use_huge_pages()  # before JAX loads: may re-execute this program (training/host_memory.py)

from collections.abc import Sequence

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarking import report
from benchmarking.runner import Options, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/base.py; override fields with --config.FIELD=V."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (after compiling and warm-up).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 2, "Untimed train steps after the compiling one.")
_JSON = flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global rows per step (0 = config.batch_size).")
_LENGTH = flags.DEFINE_integer(
    "length", 0, "Tokens per row, source and target (0 = config.data.max_length)."
)
_FILL = flags.DEFINE_float(
    "fill_rate", 0.9, "Synthetic batches: share of each packed row that carries tokens."
)
_REAL = flags.DEFINE_bool(
    "real_data", False, "Use batches of the config's corpus (input pipeline) instead."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/benchmark", "With --real_data: where the tokenizer is trained or found."
)
_DECODE = flags.DEFINE_bool("decode", True, "Also time greedy and beam-4 decoding.")
_DECODE_BATCH = flags.DEFINE_integer(
    "decode_batch_size", 0, "Sentences per decoding batch (0 = config.decode.batch_size)."
)
_DECODE_REPEATS = flags.DEFINE_integer("decode_repeats", 3, "Timed decoding runs (median).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/base.py")
    from training import distributed
    from training.errors import DistributedSetupError

    try:  # several hosts (TPU pod slices, SLURM, Open MPI): found in the environment
        distributed.initialize()
    except DistributedSetupError as error:
        raise app.UsageError(str(error)) from None
    options = Options(
        steps=_STEPS.value,
        warmup_steps=_WARMUP.value,
        batch_size=_BATCH.value,
        length=_LENGTH.value,
        fill_rate=_FILL.value,
        real_data=_REAL.value,
        workdir=_WORKDIR.value,
        decode=_DECODE.value,
        decode_batch_size=_DECODE_BATCH.value,
        decode_repeats=_DECODE_REPEATS.value,
    )
    config_name = config_flags.get_config_filename(flags.FLAGS["config"])
    try:
        figures = run(_CONFIG.value, options, config_name=config_name)
    except ValueError as error:  # bad flags or config: one line, no traceback
        raise app.UsageError(str(error)) from None
    if jax.process_index() == 0:
        print(report.markdown_table(figures))
        if _JSON.value:
            report.write_json(_JSON.value, figures)


if __name__ == "__main__":
    app.run(main)
