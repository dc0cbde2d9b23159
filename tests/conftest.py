"""Test-wide setup: CPU only, and 8 simulated devices so sharding tests can build real meshes."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests (and the runs they start) keep no persistent compilation cache (lmjax/compile_cache.py); a cache shared by
# the session was measured to make the whole suite no faster (experiments/benchmarks/README.md).
os.environ.setdefault("LMJAX_COMPILE_CACHE", "off")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def single_device_env(**extra: str) -> dict[str, str]:
  """The environment for a training subprocess that tests one process's behaviour (signals, restarts, CLI errors):
  one CPU device, since 8 simulated devices on a 2-core machine only make each step slower."""
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=1".strip(),
              **extra)


def pytest_configure(config):
  # `make test` runs everything; `pytest -m "not slow"` skips the tests that start training processes.
  config.addinivalue_line("markers", "slow: a test that runs training subprocesses for more than a few seconds "
                                     "(deselect locally with -m 'not slow'; CI runs them)")
