"""Test-wide setup: CPU only, and 8 simulated devices so sharding tests can build real meshes."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
