"""Test-wide settings: CPU only, 8 simulated devices (tests pick the devices they need)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The real Multi30k corpus, never copied into the repository
# (see ../shared/data/multi30k/SOURCE.md).
MULTI30K_DIR = REPO_ROOT.parent / "shared" / "data" / "multi30k"
