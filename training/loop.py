"""The training loop: set up (or resume), train, evaluate, checkpoint, stop cleanly.

`train_and_evaluate(config, workdir)` is the whole of training. Every host runs it; they
agree on everything (same config, same global batches, same steps), and only process 0
writes logs and metrics.

Failure handling:
- Resume: if WORKDIR/checkpoints holds a complete checkpoint, the run continues from the
  newest one (model, optimizer, step and data position), exactly as if never stopped.
- Preemption: SIGTERM makes the run save a checkpoint at the next step boundary and return
  normally (exit code 0), ready to be resumed.
- Divergence: a non-finite loss or gradient raises `TrainingDivergedError` naming the last
  good checkpoint; checkpoints are only written after their steps were checked finite.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from model import Transformer
from training import checkpointing, configuration, evaluation, partitioning
from training import state as train_state
from training.errors import ConfigError, TrainingDivergedError
from training.loss import summarize
from training.metrics import MetricsWriter, Throughput, log_evaluation, progress_line
from training.steps import make_eval_step, make_train_step


class PreemptionWatcher:
    """Notices SIGTERM. On one host: a Python signal handler. On several: JAX's preemption
    service (started by jax.distributed.initialize), which tells every host the same step at
    which to save, whichever host got the signal."""

    def __init__(self) -> None:
        self.multihost = jax.process_count() > 1
        self._signalled = False
        if not self.multihost:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        """Called after every step by every host."""
        if self.multihost:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # the preemption service is disabled
                return False
        return self._signalled


class MetricsWindow:
    """Metric sums of the steps since the last progress line. Per-step results stay on the
    device until `drain` (so steps are dispatched without waiting); `drain` fetches them and
    checks that every step's loss and gradient norm were finite."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.sums: dict[str, float] = {}

    def add(self, step: int, sums: dict[str, jax.Array]) -> None:
        self.pending.append((step, sums))

    def drain(self) -> int | None:
        """Moves pending results into `sums`; returns the first step with a non-finite loss or
        gradient, or None."""
        fetched = jax.device_get([sums for _, sums in self.pending])
        steps = [step for step, _ in self.pending]
        self.pending = []
        for step, sums in zip(steps, fetched, strict=True):
            if not (np.isfinite(sums["loss_sum"]) and np.isfinite(sums["grad_norm_sum"])):
                return step
            for key, value in sums.items():
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
        return None

    def take(self) -> dict[str, float]:
        sums, self.sums = self.sums, {}
        return sums


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True if no leaf of `tree` holds a NaN or an infinity."""
    return jnp.all(jnp.asarray([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def train_scalars(sums: dict[str, float], learning_rate: float) -> dict[str, float]:
    """Metric sums of a window of steps -> the train/* scalars of a progress line."""
    summary = summarize(sums)
    scalars = {f"train/{name}": value for name, value in summary.items()}
    scalars["train/tokens_per_step"] = summary["tokens"] / max(sums["steps"], 1.0)
    scalars["train/learning_rate"] = learning_rate
    return scalars


def prepare_config(config: ml_collections.ConfigDict, vocab_size: int) -> ml_collections.ConfigDict:
    """A resolved copy of `config` whose vocabulary size is the tokenizer's."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.vocab_size = vocab_size
        config.model.vocab_size = vocab_size
    return config


def _check_sizes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    ways = partitioning.batch_axis_size(mesh)
    for name in ("batch_size", "eval_batch_size"):
        rows = config[name]
        if rows % ways or rows % jax.process_count():
            raise ConfigError(
                f"{name}={rows} must be divisible by the {ways} batch shards of the mesh "
                f"{dict(mesh.shape)} and by the {jax.process_count()} processes."
            )


def _check_same_model(saved: dict[str, Any], config: ml_collections.ConfigDict, where: Path):
    current = checkpointing.config_to_json(config)["model"]
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise ConfigError(
            f"The checkpoints in {where} were made with a different model ({details}). "
            "Use a new --workdir, or the model config the run started with."
        )


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Trains `config` in `workdir` up to config.num_train_steps (resuming if possible),
    evaluating, logging and checkpointing on the way (module docstring)."""
    configuration.check_config(config)
    workdir = Path(workdir)
    is_writer = jax.process_index() == 0
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- data and model
    input_pipeline.prepare(config.data)
    tokenizer = input_pipeline.get_tokenizer(
        config.data, workdir, process_index=jax.process_index(), barrier=lambda: _sync("spm")
    )
    config = prepare_config(config, tokenizer.vocab_size)
    mesh = partitioning.make_mesh(config.mesh_shape)
    _check_sizes(config, mesh)
    model_config = configuration.model_config(config)
    model = Transformer(model_config)
    schedule = train_state.learning_rate_schedule(config)
    optimizer = train_state.make_optimizer(config, schedule)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    dropout_seed = int(jax.random.randint(dropout_key, (), 0, 2**31 - 1))

    # ---------------------------------------------------------------- state: new or resumed
    manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    latest = manager.latest_step()
    shardings = train_state.state_shardings(model, optimizer, mesh)
    data_state = None
    if latest is None:
        state, _ = train_state.create_train_state(model, optimizer, mesh, init_key)
    else:
        _check_same_model(checkpointing.saved_model_config(manager, latest), config, workdir)
        abstract = train_state.abstract_train_state(model, optimizer)
        state, data_state = checkpointing.restore_train_state(manager, latest, abstract, shardings)
    start_step = int(jax.device_get(state.step))

    train_batches = input_pipeline.train_iterator(
        config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if latest is not None:
        if data_state is None:
            logging.warning(
                "Checkpoint %d was written by a different number of processes: the training "
                "data restarts from the beginning instead of continuing its exact order.",
                latest,
            )
        else:
            train_batches.set_state(data_state)
        logging.info("Resumed from %s at step %d.", workdir / "checkpoints" / str(latest), latest)

    logging.info(
        "Model: %s parameters, compute dtype %s. Mesh: %s. Devices: %d (%d per host), hosts: %d.",
        f"{train_state.parameter_count(state.params):,}",
        model_config.dtype,
        partitioning.describe(mesh),
        jax.device_count(),
        jax.local_device_count(),
        jax.process_count(),
    )
    logging.info(
        "Batch: %d rows x %d tokens, %d steps, schedule %s, gradient accumulation %d.",
        config.batch_size,
        config.data.max_length,
        config.num_train_steps,
        config.schedule,
        config.grad_accum_steps,
    )

    # ---------------------------------------------------------------- steps and evaluation data
    train_step = make_train_step(
        model,
        optimizer,
        mesh,
        shardings,
        label_smoothing=config.label_smoothing,
        dropout_seed=dropout_seed,
    )
    eval_step = make_eval_step(
        model, mesh, shardings.params, label_smoothing=config.label_smoothing
    )
    eval_batches = input_pipeline.eval_batches(
        config,
        tokenizer,
        config.data.eval_split,
        batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if config.num_eval_batches >= 0:
        eval_batches = eval_batches[: config.num_eval_batches]
    eval_pairs = input_pipeline.raw_examples(config.data, config.data.eval_split)
    num_decoded = max(config.num_bleu_examples, config.num_sample_translations)
    if config.num_bleu_examples < 0:
        num_decoded = len(eval_pairs)
    decoded_pairs = eval_pairs[:num_decoded]

    def evaluate(step: int) -> tuple[dict[str, float], list[str]]:
        """Validation loss and accuracy; BLEU and exact match of decoded sentences; samples."""
        scalars = {
            f"eval/{k}": v
            for k, v in evaluation.evaluate_loss(
                eval_step, state.params, eval_batches, mesh, config.eval_batch_size
            ).items()
        }
        samples = []
        if decoded_pairs:
            hypotheses = evaluation.translate(
                model,
                state.params,
                tokenizer,
                [s for s, _ in decoded_pairs],
                config.decode,
                config.data.max_predict_length,
            )
            references = [t for _, t in decoded_pairs]
            if config.num_bleu_examples != 0:
                scalars["eval/bleu"] = evaluation.corpus_bleu(hypotheses, references)
                scalars["eval/exact_match"] = evaluation.exact_match(hypotheses, references)
            samples = evaluation.sample_lines(
                decoded_pairs, hypotheses, config.num_sample_translations
            )
            if is_writer:
                for line in samples:
                    logging.info("sample: %s", line)
            writer.write_text(step, "samples", "\n\n".join(samples))
        if is_writer:
            log_evaluation(step, scalars)
        return scalars, samples

    # ---------------------------------------------------------------- the loop
    writer = MetricsWriter(workdir, enabled=is_writer)
    writer.drop_after(start_step)
    tokenizer_bytes = tokenizer.to_bytes()
    preemption = PreemptionWatcher()
    window = MetricsWindow()
    throughput = Throughput(start_step, config.num_train_steps)
    last_eval: dict[str, float] = {}
    samples: list[str] = []

    def save(step: int) -> None:
        bad_step = window.drain()
        if bad_step is not None:
            diverged(bad_step)
        if not bool(all_finite(state.params)):  # e.g. an update overflowed after a finite loss
            diverged(step)
        checkpointing.save(manager, state, train_batches.get_state(), config, tokenizer_bytes)

    def diverged(bad_step: int) -> None:
        manager.wait_until_finished()
        good = manager.latest_step()
        where = (
            f"the last good checkpoint is {workdir / 'checkpoints' / str(good)} (step {good})"
            if good is not None
            else "no checkpoint was saved before it"
        )
        writer.close()
        raise TrainingDivergedError(
            f"Training diverged: non-finite loss or gradient at step {bad_step}; {where}. "
            "Lower learning_rate, raise warmup_steps or set grad_clip_norm, then resume."
        )

    accum = config.grad_accum_steps
    step = start_step
    for step in range(start_step + 1, config.num_train_steps + 1):
        batch = partitioning.global_batch(next(train_batches), mesh, config.batch_size)
        state, sums = train_step(state, batch)
        window.add(step, sums)
        last_step = step == config.num_train_steps

        record: dict[str, float] = {}  # this step's line of metrics.jsonl
        if step % config.log_every_steps == 0 or last_step:
            bad_step = window.drain()
            if bad_step is not None:
                diverged(bad_step)
            record |= train_scalars(window.take(), float(schedule((step - 1) // accum)))
            record |= throughput.update(step, record["train/tokens"])
            if is_writer:
                logging.info("%s", progress_line(step, config.num_train_steps, record))

        if (config.eval_every_steps and step % config.eval_every_steps == 0) or last_step:
            last_eval, samples = evaluate(step)
            record |= last_eval
            throughput.restart_clock(step)
        if record:
            writer.write(step, record)

        stop = preemption.should_stop(step)
        if step % config.checkpoint_every_steps == 0 or last_step or stop:
            save(step)
            throughput.restart_clock(step)
        if stop:
            manager.wait_until_finished()
            logging.info("SIGTERM: saved the checkpoint of step %d; exiting to resume later.", step)
            writer.close()
            manager.close()
            return

    if start_step >= config.num_train_steps:
        logging.info("Already trained for %d steps (num_train_steps).", start_step)
        last_eval, samples = evaluate(start_step)
        writer.write(start_step, last_eval)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if is_writer:
        final = {k: round(v, 4) for k, v in last_eval.items()}
        print(f"Finished at step {step}: {json.dumps(final)}")
        print("Sample translations (source  =>  output  [ok or the reference]):")
        print("\n".join(f"  {line}" for line in samples), flush=True)
