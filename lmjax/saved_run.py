"""A finished or running lmjax run read back from its workdir: config, tokenizer and parameters.

Used wherever one run starts from another: fine-tuning from a pretraining run (`init_from`), a distillation
teacher, generation, export. Every problem is a one-line `RunError` naming the workdir and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
from pathlib import Path
from typing import Any

import jax
import ml_collections

from lmjax import provenance


class RunError(ValueError):
  """A workdir that is not a usable run; the message is one line naming the workdir and the fix."""


@contextlib.contextmanager
def quiet_orbax():
  """Orbax logs several lines per restore; callers report what they restored themselves."""
  logger = std_logging.getLogger("absl")
  previous = logger.level
  logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(previous)


def checkpoint_steps(workdir: str | Path) -> list[int]:
  checkpoints = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


def load_params(workdir: str | Path, step: int | None = None) -> tuple[Any, int]:
  """(params, step): only the parameters of a saved train state (not the optimizer moments), on one device,
  whatever mesh saved them. step=None takes the latest checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  workdir = Path(workdir)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise RunError(f"{workdir}: no checkpoint in {workdir / 'checkpoints'}; train that run first")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise RunError(f"{workdir}: no checkpoint at step {step} (steps: {', '.join(map(str, steps))})")
  path = (workdir / "checkpoints" / str(step) / "state").resolve()  # orbax reads no metadata from relative paths
  from lmjax.checkpoint_checksums import ChecksumError, verify_step  # pylint: disable=import-outside-toplevel
  try:
    verify_step(path.parent)
  except ChecksumError as e:
    raise RunError(f"{workdir}: the checkpoint of step {step} is damaged ({e}); use another step "
                   f"(steps: {', '.join(map(str, steps))})") from None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with quiet_orbax(), ocp.StandardCheckpointer() as reader:
    metadata = reader.metadata(path).item_metadata
  target = {"params": jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                             metadata["params"])}
  restore_args = jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
  with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                                  partial_restore=True))
  return restored["params"], step


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The run's config.json on top of today's defaults (fields added to lmjax after the run started take their
  defaults), validated."""
  from lmjax.config import ConfigError, base_config, flatten  # pylint: disable=import-outside-toplevel
  from lmjax.config_validation import validate  # pylint: disable=import-outside-toplevel
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise RunError(f"{workdir}: no such directory; give the workdir of a trained run")
  try:
    saved = provenance.config_fields(json.loads((workdir / "config.json").read_text()))
  except FileNotFoundError:
    raise RunError(f"{workdir} has no config.json; is it a run's workdir?") from None
  except json.JSONDecodeError as e:
    raise RunError(f"{workdir / 'config.json'} is not valid JSON ({e})") from None
  config = base_config()
  try:
    config.update_from_flattened_dict(flatten(saved))
    validate(config)
  except (ConfigError, KeyError, TypeError, ValueError) as e:
    raise RunError(f"{workdir / 'config.json'}: {e}") from None
  return config


@dataclasses.dataclass(frozen=True)
class SavedRun:
  workdir: Path
  config: ml_collections.ConfigDict
  tokenizer: Any  # lmjax.data.tokenizers.Tokenizer

  @property
  def steps(self) -> list[int]:
    return checkpoint_steps(self.workdir)

  def model_config(self) -> Any:
    from lmjax.models import model_config  # pylint: disable=import-outside-toplevel
    return model_config(self.config, self.tokenizer.vocab_size)

  def model(self) -> Any:
    """The run's model as it trained: with its LoRA adapters when it trained some (finetune.lora.rank > 0), so
    whatever builds a model from a run (generation, evaluation, a teacher) computes the adapted model."""
    from lmjax.models import lora  # pylint: disable=import-outside-toplevel
    settings = lora.LoraSettings.from_config(self.config)
    model = self.model_config().build()
    return model if settings is None else lora.Adapted(model, settings)

  def load_params(self, step: int | None = None) -> tuple[Any, int]:
    return load_params(self.workdir, step)


def open_run(workdir: str | Path) -> SavedRun:
  """Config and tokenizer of a run (parameters are loaded separately with `.load_params()`)."""
  from lmjax.data.tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
  workdir = Path(workdir)
  config = load_config(workdir)
  if not (workdir / "tokenizer").is_dir():
    raise RunError(f"{workdir} has no tokenizer/; train that run first")
  try:
    tokenizer = load_tokenizer(workdir / "tokenizer")
  except (OSError, ValueError, KeyError) as e:
    raise RunError(f"{workdir / 'tokenizer'} cannot be loaded ({e})") from None
  return SavedRun(workdir, config, tokenizer)
