"""Orbax checkpoints of the train state together with the data iterator's position.

A checkpoint is a step directory holding `state` (arrays, via Orbax's standard handler: no pickle) and `data`
(the grain iterator state as JSON). Orbax writes into a temporary directory and renames it when complete, so a
half-written checkpoint is never listed as a step.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging


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
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_saved_state(directory: str | os.PathLike, step: int | None = None) -> dict:
  """The saved train state as nested dicts of arrays, without building a model: for tools and tests."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {directory}; train first or pass a workdir that has checkpoints/.")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return restored["state"]
