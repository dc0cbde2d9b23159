"""Architectures by `model.name`: the registered config classes (lmjax/registry.py MODELS) and their models."""

from __future__ import annotations

from typing import Any

import ml_collections

from lmjax.models.base import ModelConfig
from lmjax.registry import MODELS


def family(name: str) -> type[ModelConfig]:
  """The config class registered under model.name=`name`."""
  return MODELS.get(name)


def model_config(config: ml_collections.ConfigDict | None = None, vocab_size: int = 0, *, name: str = "gpt",
                 **fields: Any) -> ModelConfig:
  """The frozen config the model receives: from a run's config (its model section), or from flat fields named as
  in the config section, for architecture `name` (`model_config(name="gpt", vocab_size=50, position="rope")`).
  Either way, fields that belong to other architectures are ignored, and missing ones take their defaults."""
  if config is not None:
    return family(config.model.name).from_config(config.model, vocab_size)
  chosen = family(name)
  return chosen.from_config(ml_collections.ConfigDict({**chosen.section_fields(), **fields}), vocab_size)


def build_model(cfg: ModelConfig) -> Any:
  return cfg.build()
