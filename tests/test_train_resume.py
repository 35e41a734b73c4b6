"""Failure handling of `train.py`, run for real: killed with SIGKILL mid-run and started again,
then preempted with SIGTERM and started again, a run ends with exactly the metrics of an
uninterrupted one (bitwise, every logged step); SIGTERM saves and exits 0; a diverging run
stops with a message naming the last good checkpoint and never saves non-finite parameters;
a misspelt config key is a one-line error."""

import signal

import jax
import numpy as np
import pytest

from tests.train_runner import (  # noqa: F401
    TrainProcesses,
    checkpoint_steps,
    finish,
    metrics,
    prepared_dir,
    run,
    wait_for,
)
from training import restoring

STEPS = 160
LONG_RUN = {
    "num_train_steps": STEPS,
    "checkpoint_every_steps": 40,
    "log_every_steps": 1,  # every step's loss is compared
    "num_sample_translations": 0,
}


def last_logged_step(workdir) -> int:
    records = metrics(workdir)
    return records[-1]["step"] if records else 0


def test_killed_and_preempted_runs_end_exactly_like_an_uninterrupted_one(tmp_path, prepared_dir):  # noqa: F811
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    with TrainProcesses() as processes:
        reference = processes.start(uninterrupted, prepared_dir, LONG_RUN)

        # 1. SIGKILL once the first checkpoint is complete and training has gone past it.
        first = processes.start(interrupted, prepared_dir, LONG_RUN)
        wait_for(
            lambda: checkpoint_steps(interrupted) and last_logged_step(interrupted) > 50,
            first,
            "the first checkpoint",
        )
        first.send_signal(signal.SIGKILL)
        assert finish(first)[0] == -signal.SIGKILL  # it was still running
        killed_at = last_logged_step(interrupted)
        assert killed_at < STEPS

        # 2. Resume; SIGTERM once it is past where it was killed: it saves at the next step
        # boundary and exits 0.
        second = processes.start(interrupted, prepared_dir, LONG_RUN)
        resumed_from = max(checkpoint_steps(interrupted))
        wait_for(lambda: last_logged_step(interrupted) > killed_at + 5, second, "resumed steps")
        second.send_signal(signal.SIGTERM)
        code, _, stderr = finish(second)
        assert code == 0, stderr[-3000:]
        assert f"Resumed from {interrupted / 'checkpoints' / str(resumed_from)}" in stderr
        preempted_at = last_logged_step(interrupted)
        assert preempted_at < STEPS, "the run ended before SIGTERM arrived"
        assert max(checkpoint_steps(interrupted)) == preempted_at  # saved where it stopped
        assert "SIGTERM: saved the checkpoint of step" in stderr

        # 3. Resume again, to the end.
        code, stdout, stderr = finish(processes.start(interrupted, prepared_dir, LONG_RUN))
        assert code == 0, stderr[-3000:]
        assert f"Finished at step {STEPS}" in stdout
        code, _, stderr = finish(reference)
        assert code == 0, stderr[-3000:]

    expected, actual = metrics(uninterrupted), metrics(interrupted)
    assert [r["step"] for r in actual] == list(range(1, STEPS + 1))
    assert actual == expected  # every step, bitwise (JSON floats round-trip exactly)
    assert "eval/loss" in actual[-1]
    assert checkpoint_steps(interrupted)[-1] == checkpoint_steps(uninterrupted)[-1] == STEPS


def test_diverging_run_stops_cleanly_and_never_saves_nan(tmp_path, prepared_dir):  # noqa: F811
    workdir = tmp_path / "diverging"
    overrides = {
        "num_train_steps": 40,
        "learning_rate": 1e30,  # absurd
        "checkpoint_every_steps": 1,
        "keep_checkpoints": 100,
        "num_sample_translations": 0,
    }
    with TrainProcesses() as processes:
        code, _, stderr = finish(processes.start(workdir, prepared_dir, overrides))
    assert code == 1
    assert "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: Training diverged: non-finite loss or gradient")
    saved = checkpoint_steps(workdir)
    if saved:
        assert f"the last good checkpoint is {workdir / 'checkpoints' / str(saved[-1])}" in error
    else:
        assert "no checkpoint was saved" in error
    for step in saved:
        params = restoring.restore_for_translation(workdir / "checkpoints" / str(step)).params
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_unknown_config_key_is_a_one_line_error(tmp_path, prepared_dir):  # noqa: F811
    with TrainProcesses() as processes:
        code, _, stderr = finish(
            processes.start(tmp_path, prepared_dir, {"lerning_rate": 0.5}), timeout=120
        )
    assert code != 0
    assert "Traceback" not in stderr
    assert "unknown config field" in stderr and "lerning_rate" in stderr
    assert 'Did you mean "learning_rate"' in stderr


def unfinished_saves(workdir) -> list[str]:
    """Checkpoint folders orbax is still writing (they get their final name when complete)."""
    directory = workdir / "checkpoints"
    return [p.name for p in directory.glob("*") if "tmp" in p.name] if directory.is_dir() else []


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_killed_during_an_asynchronous_save_resumes_exactly(tmp_path, prepared_dir):  # noqa: F811
    """kill -9 while a checkpoint is being written in the background: the next run resumes
    from the last complete checkpoint and ends exactly like an uninterrupted run."""
    steps = 60
    overrides = {**LONG_RUN, "num_train_steps": steps, "checkpoint_every_steps": 2}
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    with TrainProcesses() as processes:
        reference = processes.start(uninterrupted, prepared_dir, overrides)
        for _attempt in range(5):  # each attempt resumes where the last one was killed
            run = processes.start(interrupted, prepared_dir, overrides)
            wait_for(
                lambda: checkpoint_steps(interrupted) and unfinished_saves(interrupted),
                run,
                "a save in progress after a complete checkpoint",
                timeout=300,
            )
            run.send_signal(signal.SIGKILL)
            assert finish(run)[0] == -signal.SIGKILL
            if unfinished_saves(interrupted):
                break  # killed mid-save (not just after the rename)
        unfinished = unfinished_saves(interrupted)
        assert unfinished, "never killed during a save"
        complete = max(checkpoint_steps(interrupted))
        assert complete < steps

        code, stdout, stderr = finish(processes.start(interrupted, prepared_dir, overrides))
        assert code == 0, stderr[-3000:]
        assert f"Resumed from {interrupted / 'checkpoints' / str(complete)} at step" in stderr
        assert f"Finished at step {steps}" in stdout
        assert finish(reference)[0] == 0
    assert not unfinished_saves(interrupted)  # the half-written one was cleaned up
    assert metrics(interrupted) == metrics(uninterrupted)  # every step, bitwise
