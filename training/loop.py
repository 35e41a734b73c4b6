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
  good checkpoint; checkpoints are only written after their steps and parameters were checked
  finite.
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
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from model import Transformer
from training import checkpointing, configuration, partitioning
from training import state as train_state
from training.errors import ConfigError, TrainingDivergedError
from training.evaluation import Evaluator
from training.loss import summarize
from training.metrics import MetricsWriter, Throughput, log_evaluation, progress_line
from training.steps import make_train_step


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


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    ways = partitioning.batch_axis_size(mesh)
    for name in ("batch_size", "eval_batch_size"):
        rows = config[name]
        if rows % ways or rows % jax.process_count():
            raise ConfigError(
                f"{name}={rows} must be divisible by the {ways} batch shards of the mesh "
                f"{dict(mesh.shape)} and by the {jax.process_count()} processes."
            )


def check_same_model(saved: dict[str, Any], config: ml_collections.ConfigDict, where: Path):
    current = checkpointing.config_to_json(config)["model"]
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise ConfigError(
            f"The checkpoints in {where} were made with a different model ({details}). "
            "Use a new --workdir, or the model config the run started with."
        )


def initial_state(
    manager: ocp.CheckpointManager,
    model: Transformer,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    config: ml_collections.ConfigDict,
    workdir: Path,
) -> tuple[train_state.TrainState, train_state.TrainState, Any]:
    """(state, its shardings, data iterator state or None): the newest checkpoint's if there
    is one, else a fresh initialisation from config.seed."""
    shardings = train_state.state_shardings(model, optimizer, mesh)
    latest = manager.latest_step()
    if latest is None:
        init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
        state, _ = train_state.create_train_state(model, optimizer, mesh, init_key)
        return state, shardings, None
    check_same_model(checkpointing.saved_model_config(manager, latest), config, workdir)
    abstract = train_state.abstract_train_state(model, optimizer)
    state, data_state = checkpointing.restore_train_state(manager, latest, abstract, shardings)
    logging.info("Resumed from %s at step %d.", workdir / "checkpoints" / str(latest), latest)
    if data_state is None:
        logging.warning(
            "Checkpoint %d holds no training data position: the training data restarts from "
            "the beginning instead of continuing its exact order.",
            latest,
        )
    return state, shardings, data_state


def log_setup(config, model_config, state, mesh) -> None:
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


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Trains `config` in `workdir` up to config.num_train_steps (resuming if possible),
    evaluating, logging and checkpointing on the way (module docstring)."""
    configuration.check_config(config)
    workdir = Path(workdir).absolute()
    is_writer = jax.process_index() == 0
    if is_writer:
        workdir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- set up
    input_pipeline.prepare(config.data)
    tokenizer = input_pipeline.get_tokenizer(
        config.data, workdir, process_index=jax.process_index(), barrier=lambda: _sync("spm")
    )
    config = prepare_config(config, tokenizer.vocab_size)
    mesh = partitioning.make_mesh(config.mesh_shape)
    check_batch_sizes(config, mesh)
    model_config = configuration.model_config(config)
    model = Transformer(model_config)
    schedule = train_state.learning_rate_schedule(config)
    optimizer = train_state.make_optimizer(config, schedule)
    manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    state, shardings, data_state = initial_state(manager, model, optimizer, mesh, config, workdir)
    start_step = int(jax.device_get(state.step))
    train_batches = input_pipeline.train_iterator(
        config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if data_state is not None:
        train_batches.set_state(data_state)
    log_setup(config, model_config, state, mesh)

    train_step = make_train_step(
        model,
        optimizer,
        mesh,
        shardings,
        label_smoothing=config.label_smoothing,
        dropout_seed=config.seed + 1,
    )
    evaluate = Evaluator(config, tokenizer, model, mesh, shardings.params)
    writer = MetricsWriter(workdir, enabled=is_writer)
    writer.drop_after(start_step)  # a resumed run logs the steps after its checkpoint again
    tokenizer_bytes = tokenizer.to_bytes()
    preemption = PreemptionWatcher()
    window = MetricsWindow()
    throughput = Throughput(start_step, config.num_train_steps)

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

    def save(step: int) -> None:
        bad_step = window.drain()
        if bad_step is not None:
            diverged(bad_step)
        if not bool(all_finite(state.params)):  # e.g. an update overflowed after a finite loss
            diverged(step)
        checkpointing.save(manager, state, train_batches.get_state(), config, tokenizer_bytes)

    def run_evaluation(step: int) -> tuple[dict[str, float], list[str]]:
        scalars, samples = evaluate(state.params)
        if is_writer:
            for line in samples:
                logging.info("sample: %s", line)
            log_evaluation(step, scalars)
        writer.write_text(step, "samples", "\n\n".join(samples))
        return scalars, samples

    # ---------------------------------------------------------------- train
    last_eval: dict[str, float] = {}
    samples: list[str] = []
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
            learning_rate = float(schedule((step - 1) // config.grad_accum_steps))
            record |= train_scalars(window.take(), learning_rate)
            record |= throughput.update(step, record["train/tokens"])
            if is_writer:
                logging.info("%s", progress_line(step, config.num_train_steps, record))
        if (config.eval_every_steps and step % config.eval_every_steps == 0) or last_step:
            last_eval, samples = run_evaluation(step)
            record |= last_eval
            throughput.restart_clock(step)
        if record:
            writer.write(step, record)

        preempted = preemption.should_stop(step)
        if step % config.checkpoint_every_steps == 0 or last_step or preempted:
            save(step)
            throughput.restart_clock(step)
        if preempted:
            manager.wait_until_finished()
            logging.info("SIGTERM: saved the checkpoint of step %d; exiting to resume later.", step)
            writer.close()
            manager.close()
            return

    # ---------------------------------------------------------------- finish
    if start_step >= config.num_train_steps:
        logging.info("Already trained for %d steps (num_train_steps).", start_step)
        last_eval, samples = run_evaluation(start_step)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if is_writer:
        final = {k: round(v, 4) for k, v in last_eval.items()}
        print(f"Finished at step {step}: {json.dumps(final)}")
        if samples:
            print("Sample translations (source  =>  output  [ok, or the reference]):")
            print("\n".join(f"  {line}" for line in samples), flush=True)
