"""Fault tolerance: SIGKILL at random moments, damaged and half-written checkpoints, and the order of deletion.

A correct resume is bit-exact: batches are a pure function of the batch index and the RNG of a step is
fold_in(rng, step), so a run that was killed and restarted must end with the parameters of a run that was not.
"""

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from conftest import ONE_DEVICE, single_device_env
from lmjax import train
from lmjax.checkpoint import Checkpointer, CheckpointError, NonFiniteStateError, load_saved_state
from lmjax.writers import read_metrics

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"Document {i}: the quick brown fox jumps over the lazy dog {i % 7} times.\n"
               f"It was {'warm' if i % 2 else 'cold'} and the fox was {'happy' if i % 3 else 'tired'}.\n\n"
               for i in range(300))
NUM_STEPS = 60
TMP_DIR = re.compile(r"^\d+\.orbax-checkpoint-tmp")
OCDBT_MAGIC, ZSTD_MAGIC = b"\x0c\xdb", b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "fox.txt"
  path.write_text(TEXT)
  return path


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def steps_on_disk(directory: Path) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if directory.is_dir() else []


def train_records(workdir: Path) -> list[dict]:
  return [r for r in read_metrics(workdir) if r["split"] == "train"]


# ----------------------------------------------------------------------------------------------------------------
# SIGKILL at random moments, restart until done: same parameters and metrics as a run that was never killed.

def command(corpus: Path, workdir: Path, async_save: bool) -> list[str]:
  return [sys.executable, "-m", "lmjax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          "--config.data.source=files", f"--config.data.paths={corpus}", "--config.data.document_split=paragraph",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=5", "--config.train.log_every=5",
          f"--config.train.eval_every={NUM_STEPS}", "--config.model.dropout=0.1",
          f"--config.train.async_checkpoints={async_save}",
          # Not what is tested, and each costs start-up time: samples compile a decoder, plots import matplotlib.
          "--config.train.num_samples=0", "--config.train.plot=False", "--config.train.tensorboard=False"]


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
  # A persistent compilation cache makes restarts cheap; a cached executable computes the same bits.
  env = single_device_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
                          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def run_to_completion(cmd: list[str], env: dict, log: Path) -> None:
  with log.open("a") as out:
    result = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
  assert result.returncode == 0, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def uninterrupted(corpus, subprocess_env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_to_completion(command(corpus, workdir, async_save=False), subprocess_env, workdir / "log.txt")
  return load_saved_state(workdir / "checkpoints")["params"], train_records(workdir)


def run_with_kills(cmd: list[str], env: dict, workdir: Path, rng: random.Random, min_kills: int = 3) -> int:
  """Runs cmd, SIGKILLs it a random moment after it wrote a new checkpoint, and restarts it until it exits 0."""
  checkpoints, log = workdir / "checkpoints", workdir / "log.txt"
  kills = 0
  for _ in range(min_kills + 10):
    newest = max(steps_on_disk(checkpoints), default=0)
    with log.open("a") as out:
      proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
      if kills < min_kills:
        deadline = time.monotonic() + 120
        while proc.poll() is None and max(steps_on_disk(checkpoints), default=0) <= newest:
          assert time.monotonic() < deadline, "no new checkpoint within 120 s"
          time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))  # progress was made; now die somewhere in the next few steps
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          kills += 1
          continue
      returncode = proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert returncode == 0, log.read_text()[-4000:]
    assert kills >= min_kills, f"the run finished after only {kills} kills; shorten the delays"
    return kills
  raise AssertionError(f"the run did not finish after {kills} kills")


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigkill_at_random_moments_then_restart_is_bit_exact(corpus, subprocess_env, uninterrupted, tmp_path,
                                                             async_save):
  rng = random.Random(1234 + async_save)
  kills = run_with_kills(command(corpus, tmp_path, async_save), subprocess_env, tmp_path, rng)
  assert kills >= 3

  final = load_saved_state(tmp_path / "checkpoints")
  assert int(final["step"]) == NUM_STEPS
  reference_params, reference_records = uninterrupted
  leaves_equal(final["params"], reference_params)

  # No batch repeated or skipped: every logged interval exists once and saw exactly the same batches.
  records = train_records(tmp_path)
  assert [r["step"] for r in records] == list(range(5, NUM_STEPS + 1, 5))
  assert [r["step"] for r in reference_records] == list(range(5, NUM_STEPS + 1, 5))
  for got, want in zip(records, reference_records):
    assert got["loss"] == want["loss"], (got, want)
    assert got["grad_norm"] == want["grad_norm"], (got, want)


# ----------------------------------------------------------------------------------------------------------------
# A damaged latest checkpoint: warn, fall back to the previous one, and still end bit-exact.

def short_config(corpus):
  c = tiny.get_config()
  c.data.source = "files"
  c.data.paths = str(corpus)
  c.data.document_split = "paragraph"
  c.model.dropout = 0.1
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every, c.train.log_every = 30, 10, 30, 10
  c.train.num_samples, c.train.plot, c.train.tensorboard = 0, False, False
  return c


@pytest.fixture(scope="module")
def short_runs(corpus, tmp_path_factory):
  """(config, straight, at20): a 30-step run, and the same config stopped at step 20 (checkpoints 10 and 20)."""
  config = short_config(corpus)
  root = tmp_path_factory.mktemp("short")
  train.train_and_evaluate(config, root / "straight", devices=ONE_DEVICE)
  train.train_and_evaluate(config, root / "at20", stop_at=20, devices=ONE_DEVICE)
  assert steps_on_disk(root / "at20" / "checkpoints") == [10, 20]
  return config, root / "straight", root / "at20"


def array_data_files(step_dir: Path) -> list[Path]:
  """The array data files of the step's state (one per writing device or shard group, depending on the mesh)."""
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def truncate_array_file(step_dir: Path) -> None:
  for path in array_data_files(step_dir):
    with path.open("r+b") as f:
      f.truncate(path.stat().st_size // 2)


def overwrite_array_file(step_dir: Path) -> None:
  for path in array_data_files(step_dir):
    path.write_bytes(bytes(path.stat().st_size))


def break_iterator_json(step_dir: Path) -> None:
  (path,) = (step_dir / "data").glob("process_*.json")
  path.write_text('{"next_index": 2')


def delete_array_files(step_dir: Path) -> None:
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()


def flip_one_byte(step_dir: Path) -> None:
  """One bit of one byte in the middle of the largest array file: the kind of damage a disk or a copy does quietly,
  and that decodes to slightly different numbers rather than failing."""
  path = max(array_data_files(step_dir), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


def edit_iterator_position(step_dir: Path) -> None:
  """Valid JSON, a plausible position, the wrong one: only the checksum can tell."""
  (path,) = (step_dir / "data").glob("process_*.json")
  path.write_text(path.read_text().replace("20", "19"))


DAMAGE = {"truncated_array": truncate_array_file, "zeroed_array": overwrite_array_file,
          "missing_arrays": delete_array_files, "broken_iterator_json": break_iterator_json,
          "flipped_byte": flip_one_byte, "edited_iterator_position": edit_iterator_position}


def data_iterator(position: int = 0):
  """A grain iterator whose state has the train iterator's format ({"next_index": n})."""
  it = iter(grain.MapDataset.range(10**6).to_iter_dataset())
  for _ in range(position):
    next(it)
  return it


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_restore_latest_falls_back_past_a_damaged_checkpoint(short_runs, tmp_path, caplog, damage):
  _, _, at20 = short_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(at20 / "checkpoints", directory)
  DAMAGE[damage](directory / "20")
  it = data_iterator(position=7)  # somewhere else: the restore must move it, even after a failed attempt

  checkpointer = Checkpointer(directory, keep=3, every=10, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, step = checkpointer.restore_latest(None, it)
  assert step == 10 and int(state["step"]) == 10
  leaves_equal(state["params"], load_saved_state(at20 / "checkpoints", step=10)["params"])
  assert it.get_state() == {"next_index": 10} and next(it) == 10

  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "trying the previous" in
              r.getMessage()]
  assert len(warnings) == 1 and str(directory / "20") in warnings[0] and "\n" not in warnings[0]
  # The unreadable step is kept for inspection but no longer listed, so training can save step 20 again.
  assert checkpointer.manager.all_steps() == [10]
  assert [p.name for p in directory.glob("20.unreadable-*")]
  checkpointer.save(20, state, it)
  checkpointer.close()
  assert steps_on_disk(directory) == [10, 20]


def test_a_failed_attempt_that_moved_the_iterator_is_undone(short_runs, tmp_path, monkeypatch):
  """Step 20's iterator state restores, its arrays do not: the iterator must end where step 10 left it."""
  _, _, at20 = short_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(at20 / "checkpoints", directory)
  truncate_array_file(directory / "20")
  # Unverified (as saved before checksums were recorded), so the damage shows only once Orbax reads the arrays.
  for record in (directory / "20").glob("lmjax_checksums.process_*.json"):
    record.unlink()
  real_restore = ocp.CheckpointManager.restore
  seen = []

  def restore_data_first(self, step, args=None, **kwargs):
    # Orbax may restore the items in any order; force the worst one: the iterator moves, then the state fails.
    items = dict(args.items())
    if "data" in items:
      real_restore(self, step, args=ocp.args.Composite(data=items["data"]))
      seen.append((step, items["data"].item.get_state()["next_index"]))
    return real_restore(self, step, args=args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_data_first)
  it = data_iterator(position=3)
  checkpointer = Checkpointer(directory, keep=3, every=10, async_save=False)
  _, step = checkpointer.restore_latest(None, it)
  checkpointer.close()
  assert seen[0] == (20, 20)  # the failed attempt did move the iterator
  assert step == 10 and it.get_state() == {"next_index": 10} and next(it) == 10


def test_no_restorable_checkpoint_is_one_clear_error(short_runs, tmp_path):
  _, _, at20 = short_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(at20 / "checkpoints", directory)
  for step in (10, 20):
    delete_array_files(directory / str(step))
  checkpointer = Checkpointer(directory, keep=3, every=10, async_save=False)
  with pytest.raises(CheckpointError) as e:
    checkpointer.restore_latest(None, data_iterator())
  message = str(e.value)
  assert isinstance(e.value, ValueError) and "\n" not in message
  assert str(directory) in message and "--workdir" in message and "delete" in message
  assert steps_on_disk(directory) == [10, 20]  # nothing is moved when nothing restores
  assert Checkpointer(tmp_path / "empty", keep=3, every=10).restore_latest(None, data_iterator()) is None


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated_array", "broken_iterator_json"])
def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_damaged(short_runs, tmp_path, caplog,
                                                                                  damage):
  config, straight, at20 = short_runs
  workdir = tmp_path / "run"
  shutil.copytree(at20, workdir)
  DAMAGE[damage](workdir / "checkpoints" / "20")
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, workdir, devices=ONE_DEVICE)
  assert any(str(workdir / "checkpoints" / "20") in r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING)
  final = load_saved_state(workdir / "checkpoints")
  assert int(final["step"]) == 30
  leaves_equal(final["params"], load_saved_state(straight / "checkpoints")["params"])
  steps = [r["step"] for r in train_records(workdir)]
  assert steps == [10, 20, 30]
  assert [r["loss"] for r in train_records(workdir)] == [r["loss"] for r in train_records(straight)]


# ----------------------------------------------------------------------------------------------------------------
# What is on disk: arrays and JSON, never pickle.

def test_checkpoints_hold_arrays_and_json_only(short_runs, tmp_path, monkeypatch):
  _, _, at20 = short_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(at20 / "checkpoints", directory)
  files = [p for p in directory.rglob("*") if p.is_file()]
  assert len(files) > 10
  for path in files:
    head = path.read_bytes()[:4]
    assert not head.startswith(b"\x80"), f"{path} starts with a pickle opcode"
    if head.startswith((OCDBT_MAGIC, ZSTD_MAGIC)):
      continue  # OCDBT (TensorStore) manifests, b-tree nodes and zstd-compressed array chunks
    if path.name == "commit_success.txt":
      continue
    json.loads(path.read_text())  # everything else is JSON metadata (array metadata, sharding, iterator state)

  def no_pickle(*args, **kwargs):
    raise AssertionError("a checkpoint restore tried to unpickle")

  monkeypatch.setattr(pickle, "loads", no_pickle)
  monkeypatch.setattr(pickle, "load", no_pickle)
  it = data_iterator()
  state, step = Checkpointer(directory, keep=3, every=10, async_save=False).restore_latest(None, it)
  assert step == 20 and int(state["step"]) == 20 and it.get_state() == {"next_index": 20}
  leaves_equal(load_saved_state(directory)["params"], state["params"])


# ----------------------------------------------------------------------------------------------------------------
# Orbax's guarantees that the above relies on, checked against the installed version.

def small_state(step: int) -> dict:
  return {"params": {"w": jnp.full((4, 8), float(step))}, "step": jnp.int32(step)}


def test_a_half_written_checkpoint_is_never_listed_or_restored(tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  checkpointer = Checkpointer(directory, keep=3, every=10, async_save=False)
  it = data_iterator()
  for step in (10, 20):
    checkpointer.save(step, small_state(step), it)
  checkpointer.close()

  # A save killed halfway: the step's files are in a temporary directory that was never renamed.
  partial = directory / "30.orbax-checkpoint-tmp-1234567890"
  shutil.copytree(directory / "20", partial)
  delete_array_files(partial)
  (partial / "data" / "process_0-of-1.json").unlink()

  checkpointer = Checkpointer(directory, keep=3, every=10, async_save=False)
  assert checkpointer.latest_step() == 20 and checkpointer.manager.all_steps() == [10, 20]
  state, step = checkpointer.restore_latest(None, it)
  assert step == 20 and int(state["step"]) == 20
  assert int(load_saved_state(directory)["step"]) == 20
  # Training goes on and writes step 30 for real, leftover or not.
  checkpointer.save(30, small_state(30), it)
  checkpointer.close()
  assert steps_on_disk(directory) == [10, 20, 30] and int(load_saved_state(directory)["step"]) == 30

  # And Orbax does write into such a directory: during a save, only the temporary name exists.
  seen = []
  real_save = grain.checkpoint.CheckpointHandler.save

  def spy(self, item_dir, item=None, args=None):
    seen.append((Path(item_dir).parent.name, sorted(os.listdir(directory))))
    return real_save(self, item_dir, item=item, args=args)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", spy)
  checkpointer = Checkpointer(directory, keep=5, every=10, async_save=False)
  checkpointer.save(40, small_state(40), it)
  checkpointer.close()
  ((step_dir_name, listing),) = seen
  assert TMP_DIR.match(step_dir_name) and step_dir_name.startswith("40.")
  assert "40" not in listing and step_dir_name in listing
  assert steps_on_disk(directory) == [10, 20, 30, 40]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_the_last_good_checkpoint_is_deleted_only_after_the_new_one_is_complete(tmp_path, monkeypatch, async_save):
  directory = tmp_path / "checkpoints"
  checkpointer = Checkpointer(directory, keep=1, every=10, async_save=async_save)
  it = data_iterator()
  checkpointer.save(10, small_state(10), it)
  checkpointer.wait()
  assert steps_on_disk(directory) == [10]

  events = []
  real_save = grain.checkpoint.CheckpointHandler.save

  def spy_write(self, item_dir, item=None, args=None):
    events.append(("write", sorted(os.listdir(directory))))
    return real_save(self, item_dir, item=item, args=args)

  # Every way Orbax removes a step directory goes through the manager's deleter.
  deleter = checkpointer.manager._checkpoint_deleter  # pylint: disable=protected-access
  real_delete_steps = deleter.delete_steps

  def spy_delete(steps):
    listing = sorted(os.listdir(directory))
    complete = int(load_saved_state(directory, step=20)["step"]) == 20 if "20" in listing else False
    events.append(("delete", list(steps), listing, complete))
    return real_delete_steps(steps)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", spy_write)
  monkeypatch.setattr(deleter, "delete_steps", spy_delete)
  checkpointer.save(20, small_state(20), it)
  checkpointer.close()

  write, delete = events
  assert write[0] == "write" and "10" in write[1] and "20" not in write[1]  # 20 is being written, 10 is kept
  assert delete[0] == "delete" and delete[1] == [10]
  assert "10" in delete[2] and "20" in delete[2] and delete[3]  # 10 goes only once 20 is final and restorable
  assert not [n for n in delete[2] if TMP_DIR.match(n)]
  assert steps_on_disk(directory) == [20]


# ----------------------------------------------------------------------------------------------------------------
# Checksums: recorded once a step is final, checked before restoring.

def recorded_files(step_dir: Path) -> dict:
  (record,) = step_dir.glob("lmjax_checksums.process_*.json")
  return json.loads(record.read_text())["files"]


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_every_saved_file_is_recorded_with_its_sha256(tmp_path, async_save):
  checkpointer = Checkpointer(tmp_path, keep=3, every=10, async_save=async_save)
  it = data_iterator()
  for step in (10, 20):
    checkpointer.save(step, small_state(step), it)
  checkpointer.close()
  for step in (10, 20):
    step_dir = tmp_path / str(step)
    files = sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
                   if p.is_file() and not p.name.startswith("lmjax_checksums"))
    recorded = recorded_files(step_dir)
    assert sorted(recorded) == files and "data/process_0-of-1.json" in files
    assert any(f.startswith("state/") for f in files)
    for name, entry in recorded.items():
      content = (step_dir / name).read_bytes()
      assert entry == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def test_a_checkpoint_saved_without_checksums_restores_unverified(short_runs, tmp_path, caplog):
  _, _, at20 = short_runs
  directory = tmp_path / "checkpoints"
  shutil.copytree(at20 / "checkpoints", directory)
  for record in directory.glob("*/lmjax_checksums.process_*.json"):
    record.unlink()  # as saved before checksums were recorded
  with caplog.at_level(logging.INFO):
    state, step = Checkpointer(directory, keep=3, every=10, async_save=False).restore_latest(None, data_iterator())
  assert step == 20 and int(state["step"]) == 20
  assert any("no recorded checksums" in r.getMessage() and "unverified" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------------------------
# A state that is not finite is never saved, and retention never trades a good checkpoint for it.

def train_state(step: int, value: float, streak: int = 0):
  from lmjax.state import TrainState
  return TrainState(step=jnp.int32(step), params={"w": jnp.full((4, 8), value)}, opt_state={"mu": jnp.zeros((4, 8))},
                    rng=jnp.zeros((2,), jnp.uint32), nonfinite_streak=jnp.int32(streak),
                    skipped_steps=jnp.int32(streak))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_state_with_nan_or_inf_is_not_saved_and_the_good_checkpoints_stay(tmp_path, bad):
  checkpointer = Checkpointer(tmp_path, keep=2, every=10, async_save=False)
  it = data_iterator()
  checkpointer.save(10, train_state(10, 1.0), it)
  checkpointer.save(20, train_state(20, 2.0), it)
  for step, force in ((30, False), (40, True)):
    with pytest.raises(NonFiniteStateError, match=f"step {step}.*not saved.*newest: step 20"):
      checkpointer.save(step, train_state(step, bad), it, force=force)
  checkpointer.close()
  assert steps_on_disk(tmp_path) == [10, 20]  # keep=2: a saved 30 would have rotated 10 out
  assert float(load_saved_state(tmp_path)["params"]["w"][0, 0]) == 2.0


def test_no_regular_checkpoint_while_steps_are_being_skipped(tmp_path):
  checkpointer = Checkpointer(tmp_path, keep=2, every=10, async_save=False)
  it = data_iterator()
  checkpointer.save(10, train_state(10, 1.0), it)
  # Finite, but the last 4 steps were skipped: it is step 26's state with 4 batches dropped.
  assert not checkpointer.save(30, train_state(30, 1.0, streak=4), it)
  assert steps_on_disk(tmp_path) == [10]
  assert checkpointer.save(30, train_state(30, 1.0, streak=4), it, force=True)  # a preemption or the end: saved
  checkpointer.close()
  assert steps_on_disk(tmp_path) == [10, 30]


@pytest.mark.slow
def test_nonfinite_updates_from_finite_gradients_never_reach_a_checkpoint(short_runs, tmp_path, monkeypatch):
  """The issue's data loss: a learning rate gone NaN gives finite loss and gradients but NaN updates. Those steps
  are skipped, no checkpoint is taken during the streak, so keep=2 rotates nothing out; the rerun with a sound
  learning rate continues from the last good checkpoint and ends where an undisturbed run ends."""
  from lmjax import optim
  config, straight, at20 = short_runs
  workdir = tmp_path / "run"
  shutil.copytree(at20, workdir)
  real_schedule = optim.learning_rate_schedule

  def nan_from_step_20(optim_config, num_steps):
    schedule = real_schedule(optim_config, num_steps)
    return lambda step: jnp.where(step >= 20, jnp.nan, schedule(step))

  broken = config.copy_and_resolve_references()
  broken.train.num_steps, broken.train.keep_checkpoints, broken.train.max_nonfinite_steps = 40, 2, 15
  monkeypatch.setattr(optim, "learning_rate_schedule", nan_from_step_20)
  with pytest.raises(train.NonFiniteError, match="stopped at step 35"):
    train.train_and_evaluate(broken, workdir, devices=ONE_DEVICE)
  monkeypatch.undo()
  assert steps_on_disk(workdir / "checkpoints") == [10, 20]  # nothing taken at 30, so 10 was not rotated out
  leaves_equal(load_saved_state(workdir / "checkpoints")["params"], load_saved_state(at20 / "checkpoints")["params"])
  assert max(r["skipped_steps"] for r in train_records(workdir)) > 0

  train.train_and_evaluate(config, workdir, devices=ONE_DEVICE)
  final = load_saved_state(workdir / "checkpoints")["params"]
  leaves_equal(final, load_saved_state(straight / "checkpoints")["params"])


# ----------------------------------------------------------------------------------------------------------------
# The run record: config.json changes only once a run has started.

def test_a_resume_that_fails_to_restore_leaves_config_json_alone(short_runs, tmp_path):
  config, _, at20 = short_runs
  workdir = tmp_path / "run"
  shutil.copytree(at20, workdir)
  record = (workdir / "config.json").read_bytes()
  changed = config.copy_and_resolve_references()
  changed.model.d_model, changed.train.allow_config_change = 64, True  # allowed, yet its shapes cannot restore
  with pytest.raises(CheckpointError, match=r"params/.* is saved with shape .*32.* this run's model has shape .*64"):
    train.train_and_evaluate(changed, workdir, devices=ONE_DEVICE)
  assert (workdir / "config.json").read_bytes() == record and not list(workdir.glob("config.*.json"))
  assert steps_on_disk(workdir / "checkpoints") == [10, 20]  # nothing set aside: none of them is damaged


def test_config_json_is_written_atomically(tmp_path, monkeypatch):
  from lmjax import workdir as workdir_lib
  from lmjax.config import base_config
  config = base_config()
  workdir_lib.record_config(config, tmp_path)
  before = (tmp_path / "config.json").read_text()
  config.train.num_steps = 7

  def disk_full(src, dst):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", disk_full)
  with pytest.raises(OSError, match="No space left") as e:
    workdir_lib.record_config(config, tmp_path)
  assert e.value.filename and str(tmp_path) in e.value.filename  # a failed write says which file it was
  assert (tmp_path / "config.json").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no half-written or temporary file


# ----------------------------------------------------------------------------------------------------------------
# A full disk during a save: one line with the path and the free space, the earlier checkpoints intact.

@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch,
                                                                                async_save):
  from lmjax.failures import DiskFullError
  checkpointer = Checkpointer(tmp_path, keep=3, every=10, async_save=async_save)
  it = data_iterator()
  checkpointer.save(10, small_state(10), it)
  checkpointer.wait()
  real_save = grain.checkpoint.CheckpointHandler.save

  def no_space(self, item_dir, item=None, args=None):
    real_save(self, item_dir, item=item, args=args)
    target = Path(item_dir) / "process_0-of-1.json"
    raise OSError(28, "No space left on device", str(target))  # what a write() on a full filesystem raises

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", no_space)
  with pytest.raises(DiskFullError) as e:
    checkpointer.save(20, small_state(20), it)
    checkpointer.close()  # an async save reports its failure when waited for
  message = str(e.value)
  assert "\n" not in message and "step 20" in message and "process_0-of-1.json" in message
  assert re.search(r"\d+(\.\d)? (bytes|KiB|MiB|GiB|TiB) free of", message) and "steps 10" in message
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["10"]  # the half-written step is gone, the earlier one is whole
  state, step = Checkpointer(tmp_path, keep=3, every=10, async_save=False).restore_latest(None, data_iterator())
  assert step == 10 and int(state["step"]) == 10
