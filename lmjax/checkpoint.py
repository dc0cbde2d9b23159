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
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(ValueError):
  """Checkpoints exist but none of them can be restored."""


class Checkpointer:
  def __init__(self, directory: str | os.PathLike, *, keep: int, every: int, async_save: bool = True):
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any | None = None, *, force: bool = False) -> bool:
    if not force and step % self.every:
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("Saving checkpoint at step %d.", step)
    return saved

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores `state` (shaped like abstract_state) and moves data_iterator to where it was at `step`."""
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
    for step in steps:
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        error = _one_line(e)
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
        f"(see the warnings above); delete that directory or point --workdir elsewhere to start afresh.")

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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
  """The saved train state as nested dicts of arrays, without building a model: for tools and tests."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}; train first or pass a workdir that has checkpoints/.")
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
