"""A saved run's model held fixed inside another run's steps: a distillation teacher, a DPO reference model.

`open_frozen` opens the run read-only, picks its checkpoint step and traces its model's parameter shapes and logical
axes (nothing is loaded); the task returns those from `Task.frozen_spec`, the trainer derives shardings from them
with the run's own mesh rules, and `restore` reads each array straight into its sharding (every device reads only
its own shards). The parameters are never part of the train state or its checkpoints: they are restored from the
frozen run's workdir each time the run starts or resumes. Every problem is one line naming the config field.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from lmjax.config import ConfigError
from lmjax.saved_run import RunError, SavedRun, open_run, quiet_orbax
from lmjax.state import abstract_params


@dataclasses.dataclass(frozen=True)
class FrozenRun:
  run: SavedRun
  step: int
  model: Any  # its Flax module (with its LoRA adapters, if it trained some)
  abstract: Any  # its parameters' ShapeDtypeStructs
  axes: Any  # and logical PartitionSpecs

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config


def open_saved(field: str, workdir: str) -> SavedRun:
  """The run at `workdir` (named by config field `field`), or a one-line ConfigError."""
  try:
    return open_run(workdir)
  except RunError as e:
    raise ConfigError(f"config.{field}: {e}") from None


def pick_step(run: SavedRun, field: str, step_field: str, step: int) -> int:
  """The checkpoint step to read: `step`, or the latest when it is 0."""
  steps = run.steps
  if not steps:
    raise ConfigError(f"config.{field}={str(run.workdir)!r}: has no checkpoint; train that run first")
  if step and step not in steps:
    raise ConfigError(f"config.{step_field}={step!r}: {run.workdir} has no checkpoint there (steps: "
                      f"{', '.join(map(str, steps))}); use 0 for its latest")
  return step or steps[-1]


def open_frozen(run: SavedRun, step: int, model: Any, init_args: tuple[Any, ...]) -> FrozenRun:
  """The frozen model of `run` at `step`: `model` (built from the run's own config) and its parameter shapes."""
  abstract, axes = abstract_params(model, init_args)
  return FrozenRun(run, step, model, abstract, axes)


def state_path(run: SavedRun, step: int) -> Path:
  return (run.workdir / "checkpoints" / str(step) / "state").absolute()  # Orbax wants absolute paths


def saved_shapes(run: SavedRun, step: int) -> dict[str, tuple[int, ...]]:
  """{keystr path: shape} of the parameters in a checkpoint, read from its metadata (no array is loaded)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with quiet_orbax(), ocp.StandardCheckpointer() as reader:
    saved = reader.metadata(state_path(run, step)).item_metadata["params"]
  return {jax.tree_util.keystr(p): m.shape for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}


def restore(frozen: FrozenRun, shardings: Any, field: str) -> Any:
  """The frozen run's parameters at its step, each array restored directly into its sharding; a checkpoint that
  does not hold what its config.json describes is a one-line error naming `field`."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  flat_saved = saved_shapes(frozen.run, frozen.step)
  for p, want in jax.tree_util.tree_flatten_with_path(frozen.abstract)[0]:
    name = jax.tree_util.keystr(p)
    if flat_saved.get(name) != want.shape:
      raise ConfigError(f"config.{field}={str(frozen.run.workdir)!r}: parameter {name} is "
                        f"{flat_saved.get(name, 'missing')} in checkpoint {frozen.step} but {want.shape} in the model "
                        f"its config.json describes; the run's config and checkpoints disagree")
  target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), frozen.abstract,
                                  shardings)
  restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
  with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(state_path(frozen.run, frozen.step),
                              args=ocp.args.PyTreeRestore(item={"params": target},
                                                          restore_args={"params": restore_args},
                                                          partial_restore=True))
  return restored["params"]


def check_tokenizer(field: str, run: SavedRun, tokenizer: Any, who: str) -> None:
  """Token ids must mean the same in both runs (`who` names the frozen one in the message: 'the teacher')."""
  theirs = run.tokenizer
  if theirs.vocab_size != tokenizer.vocab_size or theirs.fingerprint() != tokenizer.fingerprint():
    raise ConfigError(
        f"config.{field}={str(run.workdir)!r}: {who}'s tokenizer ({theirs.kind}, {theirs.vocab_size} tokens, "
        f"fingerprint {theirs.fingerprint()[:12]}) differs from this run's ({tokenizer.kind}, {tokenizer.vocab_size} "
        f"tokens, {tokenizer.fingerprint()[:12]}); use {who}'s tokenizer settings and training data (or copy its "
        f"tokenizer/ directory into this workdir)")


