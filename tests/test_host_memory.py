"""training/host_memory.py: the re-execution with glibc's huge-page tunable keeps the process,
its arguments and its interpreter options, and respects the user's own GLIBC_TUNABLES."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from training.host_memory import HUGE_PAGES_TUNABLE, OPT_OUT_VARIABLE

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
from training.host_memory import use_huge_pages
use_huge_pages()
print(json.dumps({{"pid": os.getpid(), "tunables": os.environ.get("GLIBC_TUNABLES"),
                  "argv": sys.argv[1:], "utf8_mode": sys.flags.utf8_mode}}))
"""

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="Linux/glibc only"
)


def run_script(tmp_path: Path, **environment: str) -> tuple[int, dict]:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT_VARIABLE)}
    env.update(environment)
    process = subprocess.Popen(
        [sys.executable, "-X", "utf8", str(script), "--flag=1", "two words"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return process.pid, json.loads(output)


def test_reexecutes_once_with_the_tunable_in_the_same_process(tmp_path):
    pid, seen = run_script(tmp_path)
    assert seen["pid"] == pid
    assert seen["tunables"] == HUGE_PAGES_TUNABLE
    assert seen["argv"] == ["--flag=1", "two words"]
    assert seen["utf8_mode"] == 1  # the interpreter option -X utf8 survived


def test_existing_tunables_and_the_opt_out_are_respected(tmp_path):
    _, seen = run_script(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert seen["tunables"] == "glibc.malloc.arena_max=2"
    _, seen = run_script(tmp_path, **{OPT_OUT_VARIABLE: "0"})
    assert seen["tunables"] is None
