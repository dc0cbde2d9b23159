"""Test-wide setup: CPU only, and 8 simulated devices so sharding tests can build real meshes."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session (lmjax/compile_cache.py): every worker and every run it starts
# shares a fresh temporary directory, so the tiny programs that many tests compile alike are compiled once. Never
# the user's cache. A size limit turns on JAX's file lock around each entry, which the workers write concurrently.
if "LMJAX_COMPILE_CACHE" not in os.environ:  # set already in an xdist worker: the controller made it
  os.environ["LMJAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="lmjax-tests-xla-")
  os.environ["LMJAX_TESTS_OWN_CACHE"] = "1"
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
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
  from lmjax import compile_cache  # pylint: disable=import-outside-toplevel
  compile_cache.enable("auto")  # for the programs tests compile themselves, too


def pytest_unconfigure(config):
  del config
  if os.environ.get("LMJAX_TESTS_OWN_CACHE") and "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(os.environ["LMJAX_COMPILE_CACHE"], ignore_errors=True)
