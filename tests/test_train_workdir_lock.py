"""One writer per workdir (training/workdir_lock.py): a second run on a live workdir stops at
once naming the holder; a lock left by a run killed with kill -9, or by a host that vanished,
does not block the resume; a lock refreshed by a live holder on another host does."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.train_runner import (  # noqa: F401
    TrainProcesses,
    checkpoint_steps,
    finish,
    metrics,
    prepared_dir,
    wait_for,
)
from training import workdir_lock
from training.errors import WorkdirLockedError


def foreign_lock(workdir, *, heartbeat: float, host: str = "some-other-host") -> dict:
    """A lock file as a run on another host writes it."""
    holder = {
        "host": host,
        "boot_id": "another-boot",
        "pid": 4242,
        "process_start": "1",
        "job": "foreign",
        "started": heartbeat,
        "heartbeat": heartbeat,
    }
    (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
    return holder


def test_a_live_holder_on_this_host_blocks_and_release_frees(tmp_path):
    first = workdir_lock.WorkdirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(WorkdirLockedError) as error:
            workdir_lock.WorkdirLock(tmp_path).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "\n" not in message
    finally:
        first.release()
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    second = workdir_lock.WorkdirLock(tmp_path)
    second.acquire()
    second.release()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from training import workdir_lock; "
            f"workdir_lock.WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLockedError, match=f"pid {child.pid} "):
            workdir_lock.WorkdirLock(tmp_path).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
    lock = workdir_lock.WorkdirLock(tmp_path)
    lock.acquire()  # immediately: the holder's pid is gone
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_lock_blocks_while_its_heartbeat_goes_on(tmp_path):
    holder = foreign_lock(tmp_path, heartbeat=time.time())
    stop = threading.Event()

    def beat():  # the other host's heartbeat thread
        while not stop.wait(0.2):
            holder["heartbeat"] = time.time()
            (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(WorkdirLockedError, match="pid 4242 on host some-other-host"):
            workdir_lock.WorkdirLock(tmp_path, heartbeat_seconds=0.2, stale_seconds=30).acquire()
        assert time.monotonic() - start < 10  # stops as soon as the heartbeat moves
    finally:
        stop.set()
        thread.join()


def test_a_vanished_hosts_lock_is_taken_over(tmp_path):
    foreign_lock(tmp_path, heartbeat=time.time() - 3600)  # stale by the clock: at once
    lock = workdir_lock.WorkdirLock(tmp_path, stale_seconds=60)
    lock.acquire()
    lock.release()
    foreign_lock(tmp_path, heartbeat=time.time())  # fresh, but never refreshed again
    start = time.monotonic()
    lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_seconds=0.2, stale_seconds=1.0)
    lock.acquire()
    assert time.monotonic() - start >= 1.0
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_run_whose_lock_was_taken_stops_before_writing(tmp_path):
    with workdir_lock.hold(tmp_path, heartbeat_seconds=0.1) as run_lock:
        run_lock.check()
        foreign_lock(tmp_path, heartbeat=time.time())  # someone deleted ours and started
        time.sleep(0.5)
        with pytest.raises(WorkdirLockedError, match="another run took over"):
            run_lock.check()
    assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # not ours: left alone


def test_second_train_py_on_a_live_workdir_stops_and_kill_9_does_not_block(tmp_path, prepared_dir):  # noqa: F811
    long_run = {"num_train_steps": 100_000, "num_sample_translations": 0}
    with TrainProcesses() as processes:
        first = processes.start(tmp_path, prepared_dir, long_run)
        wait_for(lambda: len(metrics(tmp_path)) > 3, first, "3 logged steps")
        code, _, stderr = finish(processes.start(tmp_path, prepared_dir, long_run), timeout=120)
        assert code == 1
        assert "Traceback" not in stderr
        error = stderr.strip().splitlines()[-1]
        assert error.startswith(f"train.py: error: {tmp_path} is in use by another run: ")
        assert f"pid {first.pid} on host {socket.gethostname()}" in error
        assert first.poll() is None, "the first run must go on"

        first.send_signal(signal.SIGKILL)
        first.wait()
        assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # left behind by kill -9
        short = {"num_train_steps": 5, "num_sample_translations": 0}
        code, stdout, stderr = finish(processes.start(tmp_path, prepared_dir, short))
    assert code == 0, stderr[-3000:]
    assert "Taking over the lock of a run that is gone" in stderr
    assert "Distributed: single process" in stderr
    assert "Finished at step" in stdout
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released at the end
