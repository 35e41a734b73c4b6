"""Test-wide settings: CPU only, 8 simulated devices (tests pick the devices they need)."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# translate.py and serve.py keep compiled decoders under $XDG_CACHE_HOME by default: tests keep
# theirs in a folder of their own, removed at the end, never in the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mt-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The real Multi30k corpus, never copied into the repository
# (see ../shared/data/multi30k/SOURCE.md).
MULTI30K_DIR = REPO_ROOT.parent / "shared" / "data" / "multi30k"
