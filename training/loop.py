"""The training loop: set up (or resume), train, evaluate, checkpoint, stop cleanly.

`train_and_evaluate(config, workdir)` is the whole of training. Every host runs it; they
agree on everything (same config, same global batches, same steps), and only process 0
writes logs and metrics.

Failure handling (docs/training.md says what is tested):
- One writer: process 0 holds WORKDIR/run.lock while the run lasts; a second run on a live
  workdir stops at once (training/workdir_lock.py).
- Resume: if WORKDIR/checkpoints holds a complete checkpoint, the run continues from the
  newest one (model, optimizer, step and data position), exactly as if never stopped; a run
  killed during an asynchronous save resumes from the checkpoint before.
- Preemption: SIGTERM makes the run save a checkpoint at the next step boundary and return
  normally (exit code 0), ready to be resumed. At most `config.max_steps_in_flight` steps are
  dispatched ahead of the device, so that boundary is at most that many step times away.
- Divergence: a non-finite loss or gradient raises `TrainingDivergedError` naming the last
  good checkpoint; checkpoints are only written after their steps and parameters were checked
  finite.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

import input_pipeline
from training import checkpointing, configuration, partitioning, restoring, workdir_lock
from training import setup as training_setup
from training import state as train_state
from training.errors import ConfigError, TrainingDivergedError
from training.evaluation import Evaluator
from training.loss import summarize
from training.metrics import MetricsWriter, Throughput, log_evaluation, progress_line


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


class StepResults:
    """The metric sums of the steps since the last progress line.

    Steps are dispatched without waiting for the device, but at most `max_in_flight` ahead:
    `add` of step n waits until step n - max_in_flight + 1 is done (0 = never waits). So the
    loop reaches a step boundary, where SIGTERM is noticed, within that many step times.
    Results stay on the device until `drain` fetches them and checks that every step's loss
    and gradient norm were finite."""

    def __init__(self, max_in_flight: int) -> None:
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        self.sums: dict[str, float] = {}
        self._recent: collections.deque = collections.deque(maxlen=max(max_in_flight, 1))
        self._bounded = max_in_flight > 0

    def add(self, step: int, sums: dict[str, jax.Array]) -> None:
        self.pending.append((step, sums))
        self._recent.append(sums)  # steps n - max_in_flight + 1 ... n
        if self._bounded and len(self._recent) == self._recent.maxlen:
            jax.block_until_ready(self._recent[0])

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
    manager: ocp.CheckpointManager, setup: training_setup.TrainingSetup, workdir: Path
) -> tuple[train_state.TrainState, Any]:
    """(state, data iterator state or None): the newest checkpoint's if there is one, else a
    fresh initialisation from config.seed."""
    latest = manager.latest_step()
    if latest is None:
        return setup.fresh_state(), None
    check_same_model(checkpointing.saved_model_config(manager, latest), setup.config, workdir)
    abstract = train_state.abstract_train_state(setup.model, setup.optimizer)
    state, data_state = restoring.restore_train_state(manager, latest, abstract, setup.shardings)
    logging.info("Resumed from %s at step %d.", workdir / "checkpoints" / str(latest), latest)
    if data_state is None:
        logging.warning(
            "Checkpoint %d holds no training data position: the training data restarts from "
            "the beginning instead of continuing its exact order.",
            latest,
        )
    return state, data_state


def log_setup(setup: training_setup.TrainingSetup, state: train_state.TrainState) -> None:
    config = setup.config
    logging.info(
        "Model: %s parameters, compute dtype %s. Mesh: %s. Devices: %d (%d per host), hosts: %d.",
        f"{train_state.parameter_count(state.params):,}",
        setup.model_config.dtype,
        partitioning.describe(setup.mesh),
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


@dataclasses.dataclass
class Run:
    """What a run keeps from set-up to the end besides its train state (which the loop
    passes around: it is donated and replaced by every step)."""

    setup: training_setup.TrainingSetup
    workdir: Path
    lock: workdir_lock.RunLock
    manager: ocp.CheckpointManager
    writer: MetricsWriter
    train_batches: Any  # input_pipeline.TrainIterator
    evaluate: Evaluator
    tokenizer_bytes: bytes
    last_samples: list[str] = dataclasses.field(default_factory=list)  # of the last evaluation

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.setup.config

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self.writer.close()


def start_run(
    config: ml_collections.ConfigDict, workdir: Path, lock: workdir_lock.RunLock
) -> tuple[Run, train_state.TrainState]:
    """Data, tokenizer, set-up, checkpoint manager: the run and its first state."""
    input_pipeline.prepare(config.data)
    tokenizer = input_pipeline.get_tokenizer(
        config.data, workdir, process_index=jax.process_index(), barrier=lambda: _sync("spm")
    )
    setup = training_setup.build(prepare_config(config, tokenizer.vocab_size))
    config = setup.config
    manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints)
    state, data_state = initial_state(manager, setup, workdir)
    train_batches = input_pipeline.train_iterator(
        config, tokenizer, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if data_state is not None:
        train_batches.set_state(data_state)
    log_setup(setup, state)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    writer.drop_after(int(jax.device_get(state.step)))  # a resumed run logs them again
    run = Run(
        setup=setup,
        workdir=workdir,
        lock=lock,
        manager=manager,
        writer=writer,
        train_batches=train_batches,
        evaluate=Evaluator(config, tokenizer, setup.model, setup.mesh, setup.shardings.params),
        tokenizer_bytes=tokenizer.to_bytes(),
    )
    return run, state


def diverged(run: Run, bad_step: int) -> NoReturn:
    """Raises TrainingDivergedError naming the last good checkpoint."""
    run.manager.wait_until_finished()
    good = run.manager.latest_step()
    where = (
        f"the last good checkpoint is {run.workdir / 'checkpoints' / str(good)} (step {good})"
        if good is not None
        else "no checkpoint was saved before it"
    )
    raise TrainingDivergedError(
        f"Training diverged: non-finite loss or gradient at step {bad_step}; {where}. "
        "Lower learning_rate, raise warmup_steps or set grad_clip_norm, then resume."
    )


def drain(run: Run, results: StepResults) -> None:
    bad_step = results.drain()
    if bad_step is not None:
        diverged(run, bad_step)


def save(run: Run, state: train_state.TrainState, results: StepResults, step: int) -> None:
    """Checks every step since the last check and the parameters, then starts the save."""
    drain(run, results)
    if not bool(all_finite(state.params)):  # e.g. an update overflowed after a finite loss
        diverged(run, step)
    run.lock.check()
    checkpointing.save(
        run.manager, state, run.train_batches.get_state(), run.config, run.tokenizer_bytes
    )


def evaluate(run: Run, state: train_state.TrainState, step: int) -> dict[str, float]:
    """eval/* scalars of `state`; logs them and the sample translations."""
    scalars, samples = run.evaluate(state.params)
    if jax.process_index() == 0:
        for line in samples:
            logging.info("sample: %s", line)
        log_evaluation(step, scalars)
    run.writer.write_text(step, "samples", "\n\n".join(samples))
    run.last_samples = samples
    return scalars


def progress(run: Run, results: StepResults, throughput: Throughput, step: int) -> dict[str, float]:
    """train/* and perf/* scalars of the steps since the last progress line, logged."""
    drain(run, results)
    record = train_scalars(results.take(), run.setup.learning_rate(step))
    record |= throughput.update(step, record["train/tokens"])
    if jax.process_index() == 0:
        logging.info("%s", progress_line(step, run.config.num_train_steps, record))
    return record


def train(run: Run, state: train_state.TrainState) -> tuple[int, dict[str, float]] | None:
    """Trains from state.step to config.num_train_steps; returns (the last step, its
    evaluation), or None if SIGTERM stopped the run (its checkpoint saved)."""
    config = run.config
    start_step = int(jax.device_get(state.step))
    preemption = PreemptionWatcher()
    results = StepResults(config.max_steps_in_flight)
    throughput = Throughput(start_step, config.num_train_steps)
    last_eval: dict[str, float] = {}
    step = start_step
    for step in range(start_step + 1, config.num_train_steps + 1):
        local_batch = next(run.train_batches)
        batch = partitioning.global_batch(local_batch, run.setup.mesh, config.batch_size)
        state, sums = run.setup.train_step(state, batch)
        results.add(step, sums)
        last_step = step == config.num_train_steps

        record: dict[str, float] = {}  # this step's line of metrics.jsonl
        if step % config.log_every_steps == 0 or last_step:
            record |= progress(run, results, throughput, step)
        if (config.eval_every_steps and step % config.eval_every_steps == 0) or last_step:
            last_eval = evaluate(run, state, step)
            record |= last_eval
            throughput.restart_clock(step)
        if record:
            run.writer.write(step, record)

        preempted = preemption.should_stop(step)
        if step % config.checkpoint_every_steps == 0 or last_step or preempted:
            save(run, state, results, step)
            throughput.restart_clock(step)
        if preempted:
            run.manager.wait_until_finished()
            logging.info("SIGTERM: saved the checkpoint of step %d; exiting to resume later.", step)
            return None
    if start_step >= config.num_train_steps:
        logging.info("Already trained for %d steps (num_train_steps).", start_step)
        last_eval = evaluate(run, state, start_step)
    return step, last_eval


def print_summary(run: Run, step: int, last_eval: dict[str, float]) -> None:
    if jax.process_index() != 0:
        return
    final = {k: round(v, 4) for k, v in last_eval.items()}
    print(f"Finished at step {step}: {json.dumps(final)}")
    if run.last_samples:
        print("Sample translations (source  =>  output  [ok, or the reference]):")
        print("\n".join(f"  {line}" for line in run.last_samples), flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """Trains `config` in `workdir` up to config.num_train_steps (resuming if possible),
    evaluating, logging and checkpointing on the way (module docstring)."""
    configuration.check_config(config)
    workdir = Path(workdir).absolute()
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock.hold(workdir) as lock:
        run, state = start_run(config, workdir, lock)
        try:
            finished = train(run, state)
        finally:
            run.close()
    if finished is not None:
        print_summary(run, *finished)
