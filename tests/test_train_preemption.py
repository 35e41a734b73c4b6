"""SIGTERM is honoured within a few step times, whatever log_every_steps is: the loop keeps at
most config.max_steps_in_flight steps dispatched ahead of the device, so it reaches a step
boundary (where it notices the signal) promptly, instead of first running every step it had
queued since its last progress line.

Two runs side by side, preempted at the same moment: one logging every step (it waits for the
device at every step) and one that never logs. Before the bound, the second ran on for as long
as the device needed to work off everything queued since training began."""

import time

import pytest

from tests.train_runner import (  # noqa: F401
    StderrWatcher,
    TrainProcesses,
    checkpoint_steps,
    metrics,
    prepared_dir,
    terminate,
    wait_for,
)

TRAIN_SECONDS = 30  # of training (both compiled), for the host to queue steps
LONG = {
    "num_train_steps": 1_000_000,
    "batch_size": 64,  # a step long enough for the host to run far ahead of it
    "checkpoint_every_steps": 1_000_000,
    "eval_every_steps": 0,
    "num_sample_translations": 0,
}


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_sigterm_exit_does_not_depend_on_log_every_steps(tmp_path, prepared_dir):  # noqa: F811
    configs = {"every_step": {**LONG, "log_every_steps": 1}, "never": {**LONG}}
    configs["never"]["log_every_steps"] = 1_000_000
    with TrainProcesses() as processes:
        started = {
            name: processes.start(tmp_path / name, prepared_dir, overrides)
            for name, overrides in configs.items()
        }
        watchers = {name: StderrWatcher(p, "SIGTERM") for name, p in started.items()}
        # Both compile the same program side by side: once one trains, so does the other.
        every_step = tmp_path / "every_step"
        wait_for(lambda: len(metrics(every_step)) >= 5, started["every_step"], "5 steps")
        time.sleep(TRAIN_SECONDS)
        seconds = {}
        for process in started.values():
            terminate(process)
        sent = time.monotonic()
        for name, process in started.items():
            code = process.wait(timeout=600)
            seconds[name] = time.monotonic() - sent
            assert code == 0, watchers[name].text()[-3000:]
    for name, watcher in watchers.items():
        assert "SIGTERM: saved the checkpoint of step" in watcher.text(), name
        assert checkpoint_steps(tmp_path / name), name
    print(f"SIGTERM to exit: {seconds}")
    # Both wait for at most a couple of steps, then save (first compiling the finiteness
    # check): the same work. The margin covers a loaded machine; without the bound the run
    # that never logs took twice as long here.
    assert seconds["never"] < 1.25 * seconds["every_step"] + 5, seconds
