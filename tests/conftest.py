"""Test-wide setup: CPU only, and 8 simulated devices so sharding tests can build real meshes."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session (lmjax/compile_cache.py), made fresh by the first process that
# loads this file and inherited by the xdist workers and the runs the tests start: many tests compile the same
# small programs again (a resumed run, the straight run it is compared with). It never outlives the session, so
# no test reads what an older checkout compiled.
if "LMJAX_COMPILE_CACHE" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="lmjax-test-xla-")
  os.environ["LMJAX_COMPILE_CACHE"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = f"{flags} --xla_force_host_platform_device_count=8"
# The suite's programs are tiny and compiled once or twice each, so LLVM's optimization passes cost more than the
# speed they buy: without them the suite takes about a sixth less time. The tests compare runs made under the same
# flags, and references with tolerances, so no result depends on the backend's optimization level.
_UNOPTIMIZED = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in flags:
  flags = f"{flags} {_UNOPTIMIZED}"
os.environ["XLA_FLAGS"] = flags.strip()

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # pylint: disable=wrong-import-position

from lmjax import compile_cache  # pylint: disable=wrong-import-position

compile_cache.enable("auto")  # in-process programs too, not only those that train_and_evaluate compiles

# What in-process training runs pass as train_and_evaluate(devices=...), unless they test sharding: on a 2-core
# machine, 8 simulated devices only make each step slower (a fifth of a fine-tuning test's time).
ONE_DEVICE = jax.devices()[:1]


def single_device_env(optimize: bool = False, **extra: str) -> dict[str, str]:
  """The environment for a training subprocess that tests one process's behaviour (signals, restarts, CLI errors):
  one CPU device, since 8 simulated devices on a 2-core machine only make each step slower. `optimize` gives LLVM
  its passes back, for a run of hundreds of steps, whose time goes to running the program rather than compiling it."""
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  if optimize:
    flags = flags.replace(_UNOPTIMIZED, "")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=1".strip(),
              **extra)


_TRAIN_AND_REPORT = """
import json, sys
import ml_collections
from lmjax import train
final = train.train_and_evaluate(ml_collections.ConfigDict(json.loads(sys.argv[1])), sys.argv[2])
print(json.dumps({k: float(v) for k, v in final.items()}))
"""


def train_in_subprocess(config, workdir, *, timeout: int = 600) -> dict[str, float]:
  """`train.train_and_evaluate(config, workdir)` in a one-device process with LLVM's passes back; returns the
  final evaluation. Only for a run of hundreds of steps, whose time goes to executing rather than compiling
  (test_bert's 600-step run: 33 s in-process on one device, 26 s here); shorter runs are faster in-process."""
  result = subprocess.run([sys.executable, "-c", _TRAIN_AND_REPORT, json.dumps(config.to_dict()), str(workdir)],
                          cwd=REPO, env=single_device_env(optimize=True), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def pytest_configure(config):
  # `make test` runs everything; `pytest -m "not slow"` skips the tests that start training processes.
  config.addinivalue_line("markers", "slow: a test that runs training subprocesses for more than a few seconds "
                                     "(deselect locally with -m 'not slow'; CI runs them)")
