"""The workdir's config.json is the record of a run; a restart must not silently continue a different model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from lmjax import provenance
from lmjax.config import ConfigError, base_config, flatten

# What fixes the shapes of the saved state and the meaning of token ids: changing any of these under an existing
# checkpoint would either fail to restore or continue a different model.
IDENTITY_SECTIONS = ("model", "tokenizer")
IDENTITY_FIELDS = (("data", "seq_len"), ("data", "source"), ("data", "paths"), ("data", "tfds_name"),
                   ("data", "hf_name"), ("data", "hf_data_files"), ("data", "hf_streaming"), ("data", "mixture"))
# Model fields that change how the step computes the same function, never the parameters: a resumed run may switch.
COMPUTE_FIELDS = ("model.attention_impl",)
IDENTITY_PREFIXES = ("finetune.lora.",)  # LoRA adapters are part of the saved parameters


def _is_identity(field: str) -> bool:
  section, _, name = field.partition(".")
  if field in COMPUTE_FIELDS:
    return False
  return section in IDENTITY_SECTIONS or (section, name) in IDENTITY_FIELDS or field.startswith(IDENTITY_PREFIXES)


def changed_fields(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Fields whose value differs. A field missing from the saved record (added to lmjax after that run started)
  counts as its default, so upgrading lmjax does not make old workdirs look like a different model."""
  defaults = flatten(base_config().to_dict())
  a, b = flatten(provenance.config_fields(saved)), flatten(new)
  a = {**{k: v for k, v in defaults.items() if k not in a}, **a}
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_and_record_config(config: ml_collections.ConfigDict, workdir: Path, has_checkpoint: bool) -> None:
  """Refuses to resume a checkpoint written under a different model, tokenizer or data identity.

  Other changes (learning rate, steps, logging) are allowed with a warning. The previous config.json is kept as
  config.<unix time>.json whenever it changes, so the record of what ran is never lost.
  """
  path = workdir / "config.json"
  new = config.to_dict()
  if path.exists():
    try:
      saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path} is not valid JSON ({e}); restore it or start in a new --workdir.") from None
    changes = changed_fields(saved, new)
    identity = {k: v for k, v in changes.items() if _is_identity(k) and k != "train.allow_config_change"}
    if has_checkpoint and identity and not config.train.allow_config_change:
      listed = ", ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in identity.items())
      raise ConfigError(f"--workdir={workdir} holds a run with a different config ({listed}); use a new --workdir, "
                        f"or pass --config.train.allow_config_change=True to resume it anyway.")
    if changes:
      listed = ", ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in changes.items())
      logging.warning("Config differs from the saved %s: %s.", path, listed)
      if jax.process_index() == 0:
        path.rename(workdir / f"config.{int(time.time())}.json")
  if jax.process_index() == 0:
    path.write_text(json.dumps(provenance.with_record(new), indent=2, sort_keys=True) + "\n")
