"""One run per workdir: process 0 holds WORKDIR/run.lock for as long as the run lasts.

The lock file is JSON naming its holder: host, boot id, pid and that process's start time, when
the run started, and a heartbeat time that a background thread refreshes every
`heartbeat_seconds`. A run that finds the lock held by a live run stops with
`WorkdirLockedError` naming the holder. A lock whose holder is gone is taken over:
- same host (same host name and boot id): the holder's pid no longer runs the process that
  took the lock (killed with kill -9, crashed; a zombie counts as gone). Decided at once.
- another host: the heartbeat is older than `stale_seconds` (by this host's clock), or it is
  not refreshed while this run watches it for `stale_seconds` (a host that vanished). A live
  holder refreshes it within `heartbeat_seconds`, and the new run stops then.
A run that ends (finished, preempted, failed with an error) deletes its lock.

Only process 0 touches the file; process 0 tells every other process of its job what it found,
so the processes of one multi-host job never conflict, and all of them stop together.
If a run finds that another run has taken its lock (a person deleted the file and started a
second run), `check()` raises before its next checkpoint is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from training.errors import WorkdirLockedError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of `pid` from /proc, or None if no such
    process (or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def this_process() -> dict[str, Any]:
    """The identity a lock records."""
    start = _process_start(os.getpid())
    return {
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid": os.getpid(),
        "process_start": start[1] if start else "",
        "job": uuid.uuid4().hex,
        "started": time.time(),
        "heartbeat": time.time(),
    }


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {started})"


def holder_is_gone_here(holder: dict[str, Any]) -> bool | None:
    """For a holder on this host: True if its process is gone, False if it runs. None if the
    holder is on another host (or this host cannot tell)."""
    if holder.get("host") != socket.gethostname() or holder.get("boot_id") != _boot_id():
        return None
    if not holder.get("boot_id"):
        return None  # no /proc: pids cannot be checked
    start = _process_start(int(holder.get("pid", -1)))
    return start is None or start[0] == "Z" or start[1] != holder.get("process_start")


class WorkdirLock:
    """WORKDIR/run.lock, held by this process between `acquire()` and `release()`."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        self.path = Path(workdir) / LOCK_FILE
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.me = this_process()
        self.lost: str | None = None  # why the lock is no longer ours, if it is not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the file

    def _read(self) -> dict[str, Any] | None:
        """The holder recorded in the file; None if there is no file. A file that stays
        unreadable (cut short) counts as a lock of nobody: {}."""
        for _ in range(20):
            try:
                return json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, json.JSONDecodeError):
                time.sleep(0.05)
        return {}

    def _write(self, *, exclusive: bool) -> bool:
        """Writes our record atomically. exclusive: only if there is no lock file (False if
        there was one); else replacing whatever is there."""
        self.me["heartbeat"] = time.time()
        temporary = self.path.with_name(f".{LOCK_FILE}.{self.me['job']}")
        temporary.write_text(json.dumps(self.me))
        try:
            if not exclusive:
                os.replace(temporary, self.path)
                return True
            try:
                os.link(temporary, self.path)  # atomic, fails if the lock exists
            except FileExistsError:
                return False
            return True
        finally:
            temporary.unlink(missing_ok=True)

    def _is_ours(self, holder: dict[str, Any] | None) -> bool:
        return bool(holder) and holder.get("job") == self.me["job"]

    # ------------------------------------------------------------ taking it

    def _gone(self, holder: dict[str, Any]) -> bool:
        """Whether the holder of the lock no longer runs (see the module docstring)."""
        if not holder:
            return True
        here = holder_is_gone_here(holder)
        if here is not None:
            return here
        if time.time() - float(holder.get("heartbeat", 0)) > self.stale_seconds:
            return True
        logging.warning(
            "%s is locked by %s on another host; watching its heartbeat for up to %.0f s.",
            self.path,
            describe(holder),
            self.stale_seconds,
        )
        deadline = time.monotonic() + self.stale_seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.heartbeat_seconds / 4))
            now = self._read()
            if now != holder:
                return now is None  # released (gone) or refreshed / replaced (alive)
        return True

    def acquire(self) -> None:
        """Takes the lock or raises WorkdirLockedError naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if self._write(exclusive=True):
                break
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            if not self._gone(holder):
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use by another run: {describe(holder)} holds "
                    f"{self.path}. Stop that run or use another --workdir (delete the lock "
                    "file only if that run is surely gone)."
                )
            logging.info("Taking over the lock of a run that is gone: %s.", describe(holder))
            self._write(exclusive=False)
            time.sleep(0.1)  # another run taking over at the same moment: one of us wins
            if self._is_ours(self._read()):
                break
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            holder = self._read()
            if not self._is_ours(holder):
                self.lost = (
                    f"another run took over {self.path}: {describe(holder)}"
                    if holder
                    else f"{self.path} was deleted"
                )
                logging.error("Workdir lock lost: %s.", self.lost)
                return
            self._write(exclusive=False)

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._is_ours(self._read()):
            self.path.unlink(missing_ok=True)


def _agree(failure: str | None) -> str | None:
    """Process 0's failure message (or None) on every process of the job."""
    if jax.process_count() == 1:
        return failure
    failed = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
    if int(failed) and failure is None:
        return "process 0 stopped: the workdir is held by another run (see process 0's log)"
    return failure


class RunLock:
    """What the training loop sees of the lock, on every process."""

    def __init__(self, lock: WorkdirLock | None) -> None:
        self._lock = lock

    def check(self) -> None:
        """Raises WorkdirLockedError (on every process) if another run has taken the lock."""
        lost = self._lock.lost if self._lock is not None else None
        lost = _agree(lost)
        if lost is not None:
            raise WorkdirLockedError(f"Stopped before writing more: {lost}.")


@contextlib.contextmanager
def hold(workdir: str | Path, **lock_options: float) -> Iterator[RunLock]:
    """Process 0 takes WORKDIR/run.lock for the block (releasing it at the end, whatever
    happens); every process raises WorkdirLockedError if the workdir is in use."""
    lock = WorkdirLock(workdir, **lock_options) if jax.process_index() == 0 else None
    failure = None
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirLockedError as error:
            failure = str(error)
    failure = _agree(failure)
    if failure is not None:
        raise WorkdirLockedError(failure)
    try:
        yield RunLock(lock)
    finally:
        if lock is not None:
            lock.release()
