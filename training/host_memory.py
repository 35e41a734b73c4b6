"""Host memory: put XLA's large per-run buffers on transparent huge pages (Linux, glibc).

XLA:CPU allocates the temporary buffer of every executable run with malloc; for the base
model's train step at 8 x 64 tokens that is 514 MB, which glibc maps fresh on every step and
the kernel then faults in 4 KiB at a time. With glibc's tunable `glibc.malloc.hugetlb=1`,
malloc advises transparent huge pages for such mappings, and the faults nearly vanish
(docs/performance.md has the counts and step times). On GPU/TPU hosts only host-side
allocations are affected.

glibc reads tunables only when a process starts, so `use_huge_pages` re-executes the running
program (same PID, arguments, standard streams) with the tunable set. Entry points call it
before importing JAX. It does nothing when GLIBC_TUNABLES is already set (the user's choice
wins), off Linux/glibc, or with TRANSFORMER_HUGE_PAGES=0 in the environment.
"""

from __future__ import annotations

import os
import platform
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_VARIABLE = "TRANSFORMER_HUGE_PAGES"  # set to 0 to keep the default allocator settings


def use_huge_pages() -> None:
    """Re-executes this program with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless it is
    already set, unsupported, or opted out of. Returns only when no re-execution happens."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    if "GLIBC_TUNABLES" in os.environ or os.environ.get(OPT_OUT_VARIABLE) == "0":
        return
    environment = dict(os.environ, GLIBC_TUNABLES=HUGE_PAGES_TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps the interpreter's own options (-u, -X ...) as well as the script's.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
