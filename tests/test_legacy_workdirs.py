"""Workdirs written by an earlier lmjax still work: their checkpoints read back bit for bit, the restored model
evaluates to the eval loss that run recorded, and rerunning the user's command resumes training where it stopped.

The workdirs are tests/fixtures/legacy_workdirs/<name>/, tiny finished runs made by
tests/fixtures/make_legacy_workdirs.py (see there for what each holds and how to make them). Each test works on a
copy. The test goes through entry points that outlive reorganizations of models/, tasks/ and the config code: the
command line (python -m lmjax.main), lmjax.train.train_and_evaluate, lmjax.checkpoint.load_saved_state and
lmjax.writers.read_metrics. It does not import lmjax.config: a fixture's config.py does, as a user's config file would.
"""

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import ONE_DEVICE, single_device_env
from lmjax import train
from lmjax.checkpoint import load_saved_state
from lmjax.writers import read_metrics

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_workdirs"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.py").is_file())
# Eval metrics that are sums of per-token log-probabilities (and functions of them): equal up to summation order,
# which differs between the one device that recorded them and the eight simulated devices here.
LOSS_TOLERANCE = 1e-6
# Losses after further training steps; each step's update amplifies rounding differences a little.
RESUME_TOLERANCE = 1e-4


def expected(name: str) -> dict:
  return json.loads((FIXTURES / name / "expected.json").read_text())


def copy_of(name: str, directory: Path) -> Path:
  workdir = directory / name
  shutil.copytree(FIXTURES / name, workdir)
  return workdir


def state_digest(state) -> dict[str, dict]:
  """As make_legacy_workdirs.state_digest: 'path/of/leaf' -> shape, dtype, SHA-256 of the bytes."""
  digest = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    digest[key] = {"shape": list(array.shape), "dtype": str(array.dtype),
                   "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
  return digest


def strings(tree) -> list[str]:
  if isinstance(tree, dict):
    return [s for value in tree.values() for s in strings(value)]
  return [tree] if isinstance(tree, str) else []


def checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def load_config(workdir: Path):
  spec = importlib.util.spec_from_file_location(f"legacy_{workdir.name}_config", workdir / "config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def is_loss(key: str) -> bool:
  return key in ("loss", "nll") or key.endswith("_loss") or "perplexity" in key or key.startswith("bits_per")


# --- resuming, started early ---------------------------------------------------------------------------------------
# Each resume is a training subprocess that mostly compiles. They are started together when this module's first test
# runs, so they overlap with each other and with the in-process tests; each resume test then waits for its own.

def start_resume(name: str, directory: Path) -> tuple[Path, subprocess.Popen, Path]:
  """The command a user reruns to train a finished run further, in a copy of the fixture, from inside that copy."""
  workdir = copy_of(name, directory)
  num_steps = expected(name)["resume"]["num_steps"]
  cmd = [sys.executable, "-m", "lmjax.main", f"--config={workdir / 'config.py'}", f"--workdir={workdir}",
         f"--config.train.num_steps={num_steps}"]
  log = directory / f"{name}.log"
  with log.open("w") as out:
    process = subprocess.Popen(cmd, cwd=workdir, env=single_device_env(), stdout=out, stderr=subprocess.STDOUT)
  return workdir, process, log


@pytest.fixture(scope="module")
def resumes(request, tmp_path_factory):
  """name -> (workdir, process, log) for the resume tests selected in this pytest run; each started on first need,
  all of them at once unless pytest-xdist shares the tests out (a worker then starts only its own)."""
  started: dict[str, tuple[Path, subprocess.Popen, Path]] = {}
  root = tmp_path_factory.mktemp("legacy_resume")

  def get(name: str):
    if name not in started:
      started[name] = start_resume(name, root)
    return started[name]

  if not hasattr(request.config, "workerinput"):
    for item in request.session.items:
      if (getattr(item, "module", None) is request.module
          and getattr(item, "originalname", "") == "test_resume_continues_the_run"):
        get(item.callspec.params["name"])
  yield get
  for _, process, _ in started.values():
    if process.poll() is None:
      process.kill()
      process.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_resumes_first(resumes):
  """Requests `resumes` before the first test of the module, so the subprocesses start right away."""


# --- the tests -----------------------------------------------------------------------------------------------------

def test_fixtures_are_present():
  assert {"gpt", "bert", "encdec"} <= set(NAMES), NAMES
  for name in NAMES:
    names = {p.name for p in (FIXTURES / name).iterdir()}
    assert {"config.py", "config.json", "tokenizer", "checkpoints", "metrics.jsonl", "expected.json"} <= names
    assert "data" not in names  # the caches are rebuilt from the embedded corpus or pairs.tsv
    # A copy must be usable anywhere: no path in the run's record may point outside its directory.
    absolute = [v for v in strings(json.loads((FIXTURES / name / "config.json").read_text()))
                if any(part.strip().startswith(("/", "~")) for part in v.split(","))]
    assert not absolute, (name, absolute)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_reads_back_the_saved_arrays(name, tmp_path):
  """Every array of the latest train state (parameters, optimizer moments, step, RNG) is what was saved."""
  workdir = copy_of(name, tmp_path)
  want = expected(name)
  assert checkpoint_steps(workdir) == want["checkpoint_steps"]
  state = load_saved_state(workdir / "checkpoints")
  assert int(np.asarray(state["step"])) == want["step"]
  got = state_digest(state)
  assert sorted(got) == sorted(want["state"])
  mismatched = [key for key in got if got[key] != want["state"][key]]
  assert not mismatched, mismatched
  assert any(key.startswith("params/") for key in got)


@pytest.mark.parametrize("name", NAMES)
def test_restored_model_evaluates_to_the_recorded_loss(name, tmp_path, monkeypatch):
  """Started again on a finished run, the trainer restores the latest checkpoint into the current model and
  reports the eval metrics of the restored parameters without training: the same numbers the old code logged at
  that step, so the current model is the same function of the same parameters on the same eval batches."""
  workdir = copy_of(name, tmp_path)
  monkeypatch.chdir(workdir)  # relative data paths (encdec's pairs.tsv) are the run's own, as in the CLI test below
  step = expected(name)["step"]
  history = read_metrics(workdir)
  recorded = [r for r in history if r["split"] == "eval" and r["step"] == step][-1]

  metrics = train.train_and_evaluate(load_config(workdir), workdir, devices=ONE_DEVICE)

  losses = [k for k in recorded if is_loss(k)]
  assert "loss" in losses
  for key in losses:
    assert metrics[key] == pytest.approx(recorded[key], rel=LOSS_TOLERANCE), key
  # Accuracies and decoding scores are functions of argmaxes, which rounding could flip only at a near tie.
  for key in set(recorded) - set(losses) - {"step", "split", "time"}:
    assert metrics[key] == pytest.approx(recorded[key], rel=1e-3, abs=1e-3), key
  # Nothing was trained or saved.
  train_records = lambda records: [r for r in records if r["split"] == "train"]
  assert train_records(read_metrics(workdir)) == train_records(history)
  assert checkpoint_steps(workdir) == expected(name)["checkpoint_steps"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_resume_continues_the_run(name, resumes):
  """`python -m lmjax.main` with the old run's config and a higher train.num_steps resumes from the latest
  checkpoint: the old history is kept, the new records start after the saved step, and the losses are those the
  old code got when it resumed the same run (the data position, optimizer state and RNG were all restored)."""
  workdir, process, log = resumes(name)
  try:
    returncode = process.wait(timeout=300)
  except subprocess.TimeoutExpired:
    process.kill()
    raise
  assert returncode == 0, log.read_text()[-4000:]
  want = expected(name)
  step, num_steps = want["step"], want["resume"]["num_steps"]

  old = read_metrics(FIXTURES / name)
  records = read_metrics(workdir)
  assert records[:len(old)] == old
  new = records[len(old):]
  assert new and all(step < r["step"] <= num_steps for r in new), [(r["step"], r["split"]) for r in new]
  reference = want["resume"]["metrics"]
  assert [(r["step"], r["split"]) for r in new] == [(r["step"], r["split"]) for r in reference]
  for got, ref in zip(new, reference):
    assert math.isfinite(got["loss"])
    for key in (k for k in ref if is_loss(k)):
      assert got[key] == pytest.approx(ref[key], rel=RESUME_TOLERANCE), (got["step"], got["split"], key)
    if "learning_rate" in ref:
      assert got["learning_rate"] == pytest.approx(ref["learning_rate"], rel=1e-6)

  # The new checkpoint holds the same kinds of arrays as the old one, at the new step.
  assert checkpoint_steps(workdir)[-1] == num_steps
  state = load_saved_state(workdir / "checkpoints")
  assert int(np.asarray(state["step"])) == num_steps
  got = state_digest(state)
  assert {k: (v["shape"], v["dtype"]) for k, v in got.items()} == \
      {k: (v["shape"], v["dtype"]) for k, v in want["state"].items()}
