"""Architectures by name: `model.name` in the config picks one."""

from __future__ import annotations

from typing import Callable

from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.transformer import Decoder

MODEL_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "gpt": Decoder,
}


def build_model(cfg: ModelConfig) -> nn.Module:
  if cfg.name not in MODEL_REGISTRY:
    raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose one of {', '.join(MODEL_REGISTRY)}.")
  return MODEL_REGISTRY[cfg.name](cfg)
