"""What one converted Hugging Face architecture declares (`Architecture`), and the import `Plan` it fills.

Each family file (gpt2.py, bert.py, llama.py, t5.py, gemma.py) declares its architectures; architectures.py
collects them by HF model_type. An architecture says:

  model_fields(hf, names)          config.model fields of the lmjax equivalent of a config.json (names: the
                                   checkpoint's tensor names, for what the config leaves implicit, such as a
                                   separate output head), or a one-line HfError naming the field lmjax lacks;
  plan(plan, model, vocab)         how each lmjax parameter is made from checkpoint tensors (below);
  mismatches(model)                for export: why an lmjax config.model is not this architecture (empty: it is);
  export_params / export_config    the state dict and config.json transformers loads;
  read_tokenizer(hf_dir, rows)     the checkpoint's tokenizer behind lmjax's interface.

A `Plan` maps each lmjax parameter path ('layer_0/attn/qkv/kernel') to the checkpoint tensors it is made from and
a function of them, without reading any tensor. The importer then reads, converts and places one parameter at a
time, straight onto its sharding, so host memory holds a few tensors, never the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from lmjax.hf.files import HfError
from lmjax.hf.vocab import VocabMap


@dataclasses.dataclass(frozen=True)
class Entry:
  sources: tuple[str, ...]
  make: Callable[..., np.ndarray]


class Plan:
  """lmjax parameter path -> Entry, over the tensor names a checkpoint has."""

  def __init__(self, names: Iterable[str], family: str):
    self.names = set(names)
    self.family = family  # for messages: 'a Llama checkpoint'
    self.entries: dict[str, Entry] = {}
    self._used: set[str] = set()

  def has(self, name: str) -> bool:
    return name in self.names

  def add(self, path: str, sources: str | tuple[str, ...], make: Callable[..., np.ndarray] = lambda x: x) -> None:
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    for name in sources:
      if name not in self.names:
        raise HfError(f"the checkpoint's weights lack {name!r}; is it {self.family} checkpoint saved by "
                      f"transformers?")
    self._used.update(sources)
    self.entries[path] = Entry(sources, make)

  def ignore(self, *names: str) -> None:
    """Tensors the lmjax model has no use for that are not worth a note (tied copies, buffers)."""
    self._used.update(n for n in names if n in self.names)

  def unused(self) -> list[str]:
    return sorted(self.names - self._used)


@dataclasses.dataclass(frozen=True)
class Architecture:
  model_type: str  # HF config.json model_type
  model_name: str  # lmjax config.model.name
  task: str  # the lmjax pretraining objective of the imported model
  model_fields: Callable[[dict[str, Any], set[str]], dict[str, Any]]
  plan: Callable[[Plan, dict[str, Any], VocabMap], None]
  mismatches: Callable[[Any], list[str]]
  export_params: Callable[[dict[str, Any], dict[str, Any], VocabMap], dict[str, np.ndarray]]
  export_config: Callable[[dict[str, Any], VocabMap], dict[str, Any]]
  read_tokenizer: Callable[[Path, int], Any]
  family: str = "a Hugging Face"  # for messages
  # How its dense weights are stored: [out, in] (torch.nn.Linear) or [in, out] (GPT-2's Conv1D); LoRA adapters
  # exported in PEFT's format follow it (lmjax/hf/peft.py).
  weight_layout: str = "out_in"


def needs(model: Any, model_type: str, **fields: Any) -> list[str]:
  """One message per config.model field that differs from what `model_type` needs."""
  return [f"config.model.{field}={model[field]!r} cannot be exported: Hugging Face {model_type} needs "
          f"model.{field}={value!r}" for field, value in fields.items() if model[field] != value]
