"""Orbax checkpoints of the train state together with the data iterator's position.

A checkpoint is a step directory holding `state` (arrays in OCDBT/TensorStore files plus JSON metadata, via Orbax's
standard handler) and `data` (the grain iterator state as JSON). Nothing in it is pickled, so restoring never runs
code from the checkpoint.

What a crash (SIGKILL, preemption, power loss of the process) can and cannot leave behind:

* A half-written checkpoint is never listed. Orbax writes step N into `N.orbax-checkpoint-tmp*/` and
  renames it to `N/` only once every item is written (for async saves, in the background commit thread). Steps are
  found by matching directory names against `^[0-9]+$`, so the temporary directory is invisible to `latest_step`,
  `all_steps` and `restore`.
* The last good checkpoint is never deleted before the new one is complete. `max_to_keep` garbage collection runs
  in `CheckpointManager._finalize`, which first waits for the new step's commit (the rename above) and only then
  deletes the old steps; for async saves `_finalize` runs on a thread after the commit. So a crash leaves the old
  step, the new step, or both.
* A listed step can still be unreadable (a disk that lost data, a file damaged by hand, a process killed while
  deleting an old step). `Checkpointer.restore_latest` then falls back to the newest step that restores.

What is never saved, and what is checked on the way back:

* A state holding NaN or inf is not saved (`NonFiniteStateError`), and no regular checkpoint is taken while the
  run is in a streak of skipped non-finite steps: it would hold the state from before the streak with those batches
  gone. So `max_to_keep` never rotates a good checkpoint out in favour of a broken or hollow one.
* Every file of a saved step is recorded with its size and SHA-256 in `lmjax_checksums.process_<i>.json` inside the
  step directory (each process records the files it wrote), once the step is final: on a background thread, so an
  async save stays async. A restore first checks every recorded file; a mismatch (one flipped byte is enough) is
  damage like any other, and the previous step is tried. A step without the record (saved by an older lmjax, or
  the process was killed between the commit and the record) restores unverified, with a log line
  (lmjax/checkpoint_checksums.py).
* Running out of disk space while saving is `lmjax.failures.DiskFullError`, one line naming the file and the free
  space; the half-written step is removed (it was never listed) and the earlier steps are complete.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import json
import logging as std_logging
import os
import shutil
import sys
import time
import warnings
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lmjax import failures
from lmjax.checkpoint_checksums import ChecksumRecorder, verify_step



class CheckpointError(ValueError):
  """Checkpoints exist but none of them can be restored."""


class NonFiniteStateError(RuntimeError):
  """The state to be saved holds NaN or inf; it was not saved."""


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int, every: int, async_save: bool = True,
               checksums: bool = True):
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
    self._recorder = ChecksumRecorder(self.manager.is_saving_in_progress) if checksums else None
    self._finite = jax.jit(_all_finite)
    self._saving: int | None = None  # an async save in flight: its errors surface at the next save or wait
    quiet_orbax_failure_logs()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any | None = None, *, force: bool = False) -> bool:
    """Saves every `every` steps (any step with force), unless the state is mid-way through a streak of
    skipped non-finite steps (regular saves only). Raises NonFiniteStateError rather than save NaN or inf, and
    DiskFullError when the filesystem fills up."""
    if not force and step % self.every:
      return False
    streak = int(getattr(state, "nonfinite_streak", 0))
    if streak and not force:
      logging.warning("Not saving the checkpoint of step %d: the last %d steps were skipped as not finite, so it "
                      "would hold the state of step %d with their batches dropped; the next regular checkpoint "
                      "after a finite step is saved as usual.", step, streak, step - streak)
      return False
    if not bool(self._finite(state)):
      newest = self.manager.latest_step()
      raise NonFiniteStateError(
          f"the train state at step {step} holds NaN or inf values, so it was not saved; the checkpoints in "
          f"{self.manager.directory} (newest: {'none' if newest is None else f'step {newest}'}) are untouched. Lower "
          f"optim.learning_rate, raise optim.warmup_steps or check the data, then rerun to resume from them.")
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_failure(e, step)
    self._saving = None
    if saved:
      logging.info("Saving checkpoint at step %d.", step)
      if self.manager.is_saving_in_progress():
        self._saving = step
      if self._recorder is not None:
        self._recorder.record(self._step_dir(step))
    return saved

  def _raise_save_failure(self, error: Exception, step: int) -> None:
    """Re-raises a failed save; one that ran out of disk space as DiskFullError, after removing its partial step
    directory (never listed as a step, and only taking up room)."""
    failed = self._saving if self._saving is not None else step
    self._saving = None
    _collect_abandoned_reads()
    if not failures.is_out_of_space(error):
      raise error
    # Orbax's abandoned writes would print a warning or a traceback each, now or at exit; the failure is reported
    # below in one line.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    if ocp.multihost.process_index() == 0:
      for partial in glob.glob(f"{glob.escape(self._step_dir(failed))}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)
    try:
      self.manager.reload()
      kept = sorted(self.manager.all_steps())
    except Exception:  # pylint: disable=broad-except
      kept = []
    earlier = (f"the earlier checkpoints (steps {', '.join(map(str, kept))}) are complete and were kept" if kept
               else "no earlier checkpoint exists")
    doing = f"while saving the checkpoint of step {failed}" if failed >= 0 else "while saving a checkpoint"
    message = failures.disk_full_message(error, self.manager.directory, doing)
    raise failures.DiskFullError(f"{message.split('; free space')[0]}; {earlier}: free space, then rerun the same "
                                 f"command") from error

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores `state` (shaped like abstract_state) and moves data_iterator to where it was at `step`, after
    checking the files against the checksums recorded when they were saved (ChecksumError on a mismatch)."""
    if self._recorder is not None:
      verify_step(self._step_dir(step))
    if abstract_state is not None:
      check_shapes(os.path.join(self._step_dir(step), "state"), abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and self._has_data(step):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None) -> tuple[Any, int] | None:
    """Restores the newest checkpoint that can be read: (state, step), or None when there is no checkpoint.

    Finalized steps are tried newest first. A step that fails to restore (missing or truncated array files, a
    broken data-iterator JSON, a shape mismatch, ...) is reported with a one-line warning and the previous step is
    tried. data_iterator is moved back to where it was before each failed attempt, and the successful restore
    sets its whole state, so a half-applied attempt leaves no trace.

    The unreadable steps newer than the restored one are renamed to `<step>.unreadable-<unix time>/` (kept for
    inspection, no longer listed as steps) so that training can save those steps again.

    Raises CheckpointError when checkpoints exist but none restores (e.g. they were written by a different model).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    initial_data_state = data_iterator.get_state() if data_iterator is not None else None
    failed: list[int] = []
    first_error = ""
    for step in steps:
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        error = _one_line(e)
        first_error = first_error or f"step {step}: {_one_line(e, 300)}"
        logging.warning("Could not restore checkpoint %s (%s); trying the previous checkpoint.",
                        self._step_dir(step), error)
        failed.append(step)
        if data_iterator is not None:
          data_iterator.set_state(initial_data_state)
      else:
        if failed:
          self._set_aside(failed)
          logging.warning("Resuming from checkpoint %s, the newest one that restores.", self._step_dir(step))
        return state, step
      _collect_abandoned_reads()
    raise CheckpointError(
        f"None of the checkpoints in {self.manager.directory} (steps {', '.join(map(str, steps))}) can be restored "
        f"({first_error}); if the config changed, undo the change; otherwise delete that directory or point "
        f"--workdir elsewhere to start afresh.")

  def _has_data(self, step: int) -> bool:
    """Whether the step was saved with a data position. A state saved without one on purpose (an imported
    checkpoint, lmjax.hf) lists no 'data' item and starts the data from the beginning; a checkpoint that lists the
    item but lost it still fails to restore."""
    # Orbax records the items of a step in its step metadata file; reading it directly avoids the warnings that
    # CheckpointManager.metadata prints for items it has no handler for yet.
    try:
      with open(os.path.join(self._step_dir(step), "_CHECKPOINT_METADATA"), encoding="utf-8") as f:
        return "data" in json.load(f)["item_handlers"]
    except (OSError, ValueError, KeyError, TypeError):
      return True  # unknown: ask for the data, and let the restore say what is wrong

  def _step_dir(self, step: int) -> str:
    return os.path.join(str(self.manager.directory), str(step))

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps out of Orbax's view (a name that is not all digits is not a step)."""
    self.manager.wait_until_finished()
    if ocp.multihost.process_index() == 0:
      stamp = int(time.time())
      for step in steps:
        source = self._step_dir(step)
        target, n = f"{source}.unreadable-{stamp}", 0
        while os.path.exists(target):
          n += 1
          target = f"{source}.unreadable-{stamp}-{n}"
        os.replace(source, target)
        logging.warning("Moved the unreadable checkpoint %s to %s.", source, target)
    if ocp.multihost.process_count() > 1:
      ocp.multihost.sync_global_processes("lmjax_checkpoint_set_aside")
    self.manager.reload()

  def wait(self) -> None:
    """Until the last save is committed and its checksums recorded."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_failure(e, -1 if self._saving is None else self._saving)
    self._saving = None
    if self._recorder is not None:
      self._recorder.wait()

  def close(self) -> None:
    """Waits for the last save (raising its failure), then releases everything even when it failed."""
    error = None
    try:
      self.wait()
    except BaseException as e:  # pylint: disable=broad-except
      error = e
    if self._recorder is not None:
      self._recorder.close()
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if error is None:  # else it is the same failure again; the first report stands
        self._raise_save_failure(e, -1)
    if error is not None:
      raise error


def _path_name(path) -> str:
  parts = []
  for key in path:
    if isinstance(key, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def check_shapes(state_dir: str | os.PathLike, abstract_state: Any) -> None:
  """Compares the shapes and dtypes a saved state records with the state to restore it into, before reading any
  array: a model changed under a checkpoint is then one clear line (ValueError), and no read is started that would
  have to be abandoned half-way (which makes TensorStore print pages of tracebacks)."""
  previous = std_logging.getLogger("absl").level
  std_logging.getLogger("absl").setLevel(std_logging.ERROR)  # "metadata file does not exist" for a sub-item
  try:
    with ocp.StandardCheckpointer() as reader:
      saved = reader.metadata(os.fspath(state_dir)).item_metadata
  except Exception:  # pylint: disable=broad-except
    return  # unreadable metadata: the restore itself says what is wrong
  finally:
    std_logging.getLogger("absl").setLevel(previous)
  stored = {_path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
  wanted = {_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  differ = [name for name in sorted(set(stored) & set(wanted), key=lambda n: (not n.startswith("params/"), n))
            if tuple(getattr(stored[name], "shape", ())) != tuple(wanted[name].shape)
            or np.dtype(getattr(stored[name], "dtype", wanted[name].dtype)) != np.dtype(wanted[name].dtype)]
  if differ:
    name = differ[0]
    more = f" (and {len(differ) - 1} more arrays)" if len(differ) > 1 else ""
    raise ValueError(f"{name} is saved with shape {tuple(stored[name].shape)} and dtype "
                     f"{np.dtype(stored[name].dtype)}, "
                     f"but this run's model has shape {tuple(wanted[name].shape)} and dtype "
                     f"{np.dtype(wanted[name].dtype)}{more}: the checkpoint was written by a different model")


def _all_finite(tree: Any) -> jax.Array:
  from lmjax.state import all_finite  # pylint: disable=import-outside-toplevel
  return all_finite(tree)


# --- one line instead of pages ---------------------------------------------------------------------------------

def _from_orbax(error: BaseException | None) -> bool:
  tb = getattr(error, "__traceback__", None)
  while tb is not None:
    if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return error is not None and "TensorStore" in str(error)


class _OrbaxFailureFilter(std_logging.Filter):
  """Drops the tracebacks Orbax logs (and the un-awaited futures asyncio reports) when a save or restore fails:
  the failure reaches lmjax as an exception and is reported there in one line. Shown again with --verbosity=1."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno < std_logging.ERROR or std_logging.getLogger("absl").isEnabledFor(std_logging.DEBUG):
      return True
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      error = record.exc_info[1] if record.exc_info else None
      return not (_from_orbax(error) or "orbax" in record.getMessage())
    return f"{os.sep}orbax{os.sep}" not in record.pathname


_FILTER = _OrbaxFailureFilter()


def _quiet_closed_loop_callbacks() -> None:
  """After a failed save or restore, Orbax has closed the event loop its reads and writes ran on, but TensorStore
  still completes them on its own threads and calls back into that loop; each such call raises 'RuntimeError: Event
  loop is closed' there and prints its traceback (dozens of them, for one failure that is reported anyway). Calls
  into a loop that is already closed are dropped instead: there is nobody left to run them."""
  loop_class = asyncio.base_events.BaseEventLoop
  if getattr(loop_class.call_soon_threadsafe, "lmjax_quiet", False):
    return
  original = loop_class.call_soon_threadsafe

  def call_soon_threadsafe(self, callback, *args, **kwargs):
    if self.is_closed():
      return None
    return original(self, callback, *args, **kwargs)

  call_soon_threadsafe.lmjax_quiet = True
  loop_class.call_soon_threadsafe = call_soon_threadsafe


def quiet_orbax_failure_logs() -> None:
  for handler in std_logging.getLogger().handlers + [logging.get_absl_handler()]:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
  _quiet_closed_loop_callbacks()


def _collect_abandoned_reads() -> None:
  """Quietly frees the array reads Orbax abandoned when one read of a failed restore raised.

  Orbax reads arrays concurrently; when one read fails the others are dropped un-awaited, and each prints
  "Exception ignored in: <coroutine ...>" with a page of TensorStore spec whenever it is garbage collected. The
  failure was already reported in one line, so collect them now and drop only those reports.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is None or f"{os.sep}orbax{os.sep}" not in code.co_filename:
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
      gc.collect()
  finally:
    sys.unraisablehook = previous


def _one_line(error: BaseException, limit: int = 600) -> str:
  """An exception and its causes in one line, without TensorStore's multi-line spec dumps."""
  parts, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error).split(" See full TensorStore details")[0]
    parts.append(" ".join(f"{type(error).__name__}: {text}".split()))
    error = error.__cause__ or error.__context__
  line = "; caused by ".join(parts)
  return line if len(line) <= limit else line[: limit - 3] + "..."


def load_saved_state(directory: str | os.PathLike, step: int | None = None) -> dict:
  """The saved train state as nested dicts of arrays, without building a model: for tools and tests. The files
  are checked against their recorded checksums first (ChecksumError)."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}; train first or pass a workdir that has checkpoints/.")
  verify_step(os.path.join(os.path.abspath(directory), str(step)))
  # Restored onto this process's first device whatever mesh saved it, so a pod's checkpoint opens on a laptop.
  with ocp.StandardCheckpointer() as reader:
    metadata = reader.metadata(os.path.join(os.path.abspath(directory), str(step), "state")).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return restored["state"]


def has_checkpoints(directory: str | os.PathLike) -> bool:
  """Whether a finished checkpoint exists, without creating anything: finalized steps are integer-named dirs."""
  path = os.fspath(directory)
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))
