"""Architectures by name: `model.name` in the config picks one."""

from __future__ import annotations

from typing import Callable

from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.encoder import Bert
from lmjax.models.ffnn import FeedForwardLm
from lmjax.models.lstm import LstmLm
from lmjax.models.seq2seq import EncoderDecoder
from lmjax.models.transformer import Decoder

# The count-based 'ngram' model has no parameters to train: lmjax.models.ngram fits it outside this registry.
MODEL_REGISTRY: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "gpt": Decoder,
    "ffnn": FeedForwardLm,
    "lstm": LstmLm,
    "bert": Bert,
    "encdec": EncoderDecoder,
}


def build_model(cfg: ModelConfig) -> nn.Module:
  if cfg.name not in MODEL_REGISTRY:
    raise ValueError(f"config.model.name={cfg.name!r} is unknown; choose one of {', '.join(MODEL_REGISTRY)}.")
  return MODEL_REGISTRY[cfg.name](cfg)
