"""Starting a fine-tuning run from a pretraining run (`finetune.init_from`): checks, tokenizer, parameters.

What is copied: for an encoder fine-tune, the 'encoder' and 'pooler' subtrees, which the pretraining model (Bert)
and every fine-tuning model (lmjax.models.finetune_heads) name alike, while the head starts from its random
initialization; for a decoder (causal_lm, sft, dpo), the whole model. LoRA adapters of the new run start fresh
(lmjax/models/lora.py), and a run that trained adapters of its own is copied as its merged model. Everything is
checked before anything compiles: the run must exist, use the same tokenizer and the same model shape; a mismatch
is one line naming the config fields that differ.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from lmjax.config import ConfigError, flatten
from lmjax.models import family, lora
from lmjax.models.finetune_heads import PRETRAINED_SUBTREES
from lmjax.registry import TASKS
from lmjax.saved_run import RunError, SavedRun, open_run

# model fields that change no parameter shape: a fine-tune may set them differently from its pretraining run.
_FREE_MODEL_FIELDS = ("dropout", "attention_dropout", "attention_impl", "dtype", "remat", "name")


def _open(config: ml_collections.ConfigDict) -> SavedRun:
  try:
    return open_run(config.finetune.init_from)
  except RunError as e:
    raise ConfigError(f"config.finetune.init_from: {e}") from None


def check(config: ml_collections.ConfigDict) -> SavedRun | None:
  """Raises ConfigError unless finetune.init_from names a run whose encoder this config can load."""
  f = config.finetune
  if not f.init_from:
    return None
  run = _open(config)
  if f.init_step and f.init_step not in run.steps:
    raise ConfigError(f"config.finetune.init_step={f.init_step}: {f.init_from} has no checkpoint there "
                      f"(steps: {', '.join(map(str, run.steps)) or 'none'}); use 0 for its latest")
  if not run.steps:
    raise ConfigError(f"config.finetune.init_from={f.init_from!r} has no checkpoint; train that run first")
  # A task on the next-token interface (causal_lm, sft, dpo, seq2seq_lm) continues the whole decoder.
  mine, theirs = TASKS.get(config.task).model_interface, family(run.config.model.name).interface
  if mine == "next_token" and theirs != "next_token":
    raise ConfigError(f"config.finetune.init_from={f.init_from!r} is a model.name={run.config.model.name!r} run; "
                      f"task={config.task!r} starts from a decoder (a causal_lm, sft or dpo run, or an imported one)")
  if mine != "next_token" and not TASKS.get(config.task).trains(family(run.config.model.name)):
    raise ConfigError(f"config.finetune.init_from={f.init_from!r} is a model.name={run.config.model.name!r} run; "
                      f"task={config.task!r} starts from an encoder (a task='mlm' run, or another fine-tuning run)"
                      f"{' or, for classification, a decoder or encoder-decoder' if config.task != 'classification' else ''}")
  saved = flatten(run.config.to_dict())
  mine = flatten(config.to_dict())
  differ = [k for k in sorted(saved) if k.startswith(("model.", "tokenizer.")) and k in mine and saved[k] != mine[k]
            and k.split(".", 1)[1] not in _FREE_MODEL_FIELDS and k != "tokenizer.max_training_chars"]
  if differ:
    listed = ", ".join(f"{k}={mine[k]!r} (the run has {saved[k]!r})" for k in differ)
    raise ConfigError(f"config.finetune.init_from={f.init_from!r}: {listed}; set these to the run's values "
                      f"(its config.json) so its encoder and tokenizer fit this model")
  return run


def copy_tokenizer(run: SavedRun, workdir: Path) -> None:
  """The pretraining run's tokenizer becomes this run's, so token ids mean the same in both."""
  target = workdir / "tokenizer"
  if not target.exists():
    tmp = workdir / f".tokenizer.tmp{os.getpid()}"
    shutil.copytree(run.workdir / "tokenizer", tmp)
    tmp.rename(target)


def _paths(tree: Any) -> dict[str, Any]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _overlay(fresh: Any, loaded: Any) -> Any:
  """The fresh tree with every array taken from `loaded` (same paths), except fresh LoRA adapters."""
  if isinstance(fresh, dict):
    return {k: v if k in lora.ADAPTER_NAMES else _overlay(v, loaded[k]) for k, v in fresh.items()}
  return np.asarray(loaded, fresh.dtype)


def pretrained_params(config: ml_collections.ConfigDict, params: Any) -> tuple[Any, list[str]]:
  """`params` (this model's fresh initialization, any sharding) with the pretrained subtrees of the
  finetune.init_from run in place of their random values: (params as host arrays, the subtrees copied)."""
  run = _open(config)
  saved, step = run.load_params(config.finetune.init_step or None)
  saved = jax.device_get(saved)
  settings = lora.LoraSettings.from_config(run.config)
  if settings is not None:  # a LoRA run continues as the model it computes
    saved = lora.merge(saved, settings.scale)
  whole = TASKS.get(config.task).model_interface == "next_token"  # a decoder continues as a whole
  if not whole:  # the run's parameters as this model's subtrees (a decoder's whole body becomes 'decoder', ...)
    saved = family(run.config.model.name).pretrained_subtrees(dict(saved))
  new, copied = dict(jax.device_get(params)), []
  if not any(name in saved for name in new):
    raise ConfigError(f"config.finetune.init_from={config.finetune.init_from!r} (step {step}) has no "
                      f"'{next(iter(new))}' parameters to start from")
  for name in (list(new) if whole else PRETRAINED_SUBTREES):
    if name not in new:
      continue
    if name not in saved:
      if whole:
        raise ConfigError(f"config.finetune.init_from={config.finetune.init_from!r} (step {step}) has no "
                          f"{name!r} parameters to start from")
      continue  # e.g. a pretraining run without a pooler: this one keeps its fresh pooler
    fresh, loaded = _paths(new[name]), _paths(saved[name])
    for path in sorted(set(fresh) | set(loaded)):
      if path in fresh and path not in loaded and lora.is_adapter(path.split("/")):
        continue  # this run's adapters start fresh
      if path not in fresh or path not in loaded:
        where = "this model" if path not in fresh else f"{config.finetune.init_from}"
        raise ConfigError(f"config.finetune.init_from: parameter {name}/{path} is missing from {where}; the "
                          f"models differ, so set the model section to the run's")
      if fresh[path].shape != loaded[path].shape:
        raise ConfigError(f"config.finetune.init_from: parameter {name}/{path} has shape {loaded[path].shape} in "
                          f"{config.finetune.init_from} but {fresh[path].shape} here; set the model section to the "
                          f"run's")
    new[name] = _overlay(new[name], saved[name])
    copied.append(name)
  return new, copied


def place(params_host: Any, shardings: Any) -> Any:
  """Host arrays onto the devices with the state's shardings; each process supplies the shards it holds."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]), params_host, shardings)
