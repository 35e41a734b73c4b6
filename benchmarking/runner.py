"""The whole benchmark: peak, batches, train step, decoding -> one dict of figures."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarking.decoding_speed import benchmark_decoding
from benchmarking.peak import peak_flops
from benchmarking.synthetic import packed_batch
from benchmarking.training_speed import benchmark_training

NUM_DISTINCT_BATCHES = 4  # train steps cycle through this many different batches


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run; see the flags of benchmark.py."""

    steps: int = 10
    warmup_steps: int = 2
    batch_size: int = 0  # 0 = config.batch_size
    length: int = 0  # 0 = config.data.max_length
    fill_rate: float = 0.9
    real_data: bool = False
    workdir: str = "runs/benchmark"
    decode: bool = True
    decode_batch_size: int = 0  # 0 = config.decode.batch_size
    decode_repeats: int = 3


def _with_batch_shape(
    config: ml_collections.ConfigDict, options: Options
) -> ml_collections.ConfigDict:
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = options.batch_size or config.batch_size
        if options.length:
            if not options.real_data and options.length > config.model.max_length:
                raise ValueError(
                    f"--length={options.length} exceeds model.max_length="
                    f"{config.model.max_length}; raise --config.data.max_length or lower --length."
                )
            config.data.max_length = options.length
            if options.real_data:
                config.model.max_length = max(config.model.max_length, options.length)
    return config


def _real_batches(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, list[dict[str, np.ndarray]]]:
    """Batches from the input pipeline (the config's corpus and tokenizer); the config's
    vocabulary size becomes the tokenizer's, as in training."""
    import input_pipeline  # imported here: TFDS and grain load only for --real_data

    tokenizer = input_pipeline.get_tokenizer(
        config.data, workdir, process_index=jax.process_index()
    )
    with config.unlocked():
        config.data.vocab_size = config.model.vocab_size = tokenizer.vocab_size
    iterator = input_pipeline.train_iterator(
        config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )
    return config, list(itertools.islice(iterator, NUM_DISTINCT_BATCHES))


def _synthetic_batches(
    config: ml_collections.ConfigDict, fill_rate: float
) -> list[dict[str, np.ndarray]]:
    """This process's rows of NUM_DISTINCT_BATCHES synthetic packed batches."""
    rng = np.random.default_rng([config.seed, jax.process_index()])
    rows = config.batch_size // jax.process_count()
    return [
        packed_batch(rng, rows, config.data.max_length, config.model.vocab_size, fill_rate)
        for _ in range(NUM_DISTINCT_BATCHES)
    ]


def run(config: ml_collections.ConfigDict, options: Options, config_name: str) -> dict[str, Any]:
    """All figures of the benchmark (see benchmarking/report.py for their names)."""
    if options.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {options.steps}.")
    config = _with_batch_shape(config, options)
    if options.real_data:
        config, batches = _real_batches(config, options.workdir)
    else:
        batches = _synthetic_batches(config, options.fill_rate)
    peak = peak_flops(jax.local_devices())
    figures, (model, params) = benchmark_training(
        config, batches, steps=options.steps, warmup_steps=options.warmup_steps, peak=peak
    )
    figures = {"config": config_name, "real_data": options.real_data, **figures}
    if options.decode:
        sentences = options.decode_batch_size or config.decode.batch_size
        rng = np.random.default_rng(config.seed)
        # The training batches' source rows serve as the sentences (packed rows hold several
        # sentences each; decoding speed depends only on their lengths).
        inputs = np.concatenate([batch["inputs"] for batch in batches])
        inputs = inputs[rng.choice(len(inputs), sentences, replace=len(inputs) < sentences)]
        for beam_size in (1, 4):
            figures.update(
                benchmark_decoding(
                    model,
                    params,
                    inputs,
                    beam_size=beam_size,
                    alpha=config.decode.alpha,
                    repeats=options.decode_repeats,
                )
            )
    return figures
