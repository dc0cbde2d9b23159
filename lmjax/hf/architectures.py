"""The Hugging Face architectures lmjax converts, by HF model_type and by lmjax model.name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from lmjax.hf import bert, gpt2
from lmjax.hf.files import HfError
from lmjax.hf.tokenizers import read_bpe_tokenizer, read_wordpiece_tokenizer


@dataclasses.dataclass(frozen=True)
class Architecture:
  model_type: str  # HF config.json model_type
  model_name: str  # lmjax config.model.name
  task: str  # the lmjax pretraining objective of the imported model
  tokenizer_kind: str
  convert: ModuleType  # model_fields, import_params, export_params, export_config
  read_tokenizer: Callable[[Path, int], Any]
  pre_norm: bool
  # How its dense weights are stored: [out, in] (torch.nn.Linear) or [in, out] (GPT-2's Conv1D); LoRA adapters
  # exported in PEFT's format follow it (lmjax/hf/peft.py).
  weight_layout: str = "out_in"


ARCHITECTURES = {
    "gpt2": Architecture("gpt2", "gpt", "causal_lm", "hf_bpe", gpt2, read_bpe_tokenizer, pre_norm=True,
                         weight_layout="in_out"),
    "bert": Architecture("bert", "bert", "mlm", "hf_wordpiece", bert, read_wordpiece_tokenizer, pre_norm=False),
}
BY_MODEL_NAME = {a.model_name: a for a in ARCHITECTURES.values()}


def for_hf_config(hf: dict[str, Any], path: Path) -> Architecture:
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise HfError(f"{path} model_type={model_type!r} is not supported; lmjax converts {', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


def for_export(model: Any) -> Architecture:
  """The HF architecture that represents this lmjax config.model, or a one-line error naming the field that has no
  HF equivalent."""
  if model.name not in BY_MODEL_NAME:
    raise HfError(f"config.model.name={model.name!r} cannot be exported: Hugging Face GPT-2 and BERT represent "
                  f"model.name 'gpt' and 'bert' only")
  arch = BY_MODEL_NAME[model.name]
  needs = {"position": "learned", "norm": "layernorm", "pre_norm": arch.pre_norm, "use_bias": True}
  for field, value in needs.items():
    if model[field] != value:
      raise HfError(f"config.model.{field}={model[field]!r} cannot be exported: Hugging Face {arch.model_type} "
                    f"needs model.{field}={value!r}")
  if model.activation not in ("gelu", "gelu_exact", "relu"):
    raise HfError(f"config.model.activation={model.activation!r} cannot be exported: Hugging Face {arch.model_type} "
                  f"has a plain MLP (gelu, gelu_exact or relu), not a gated one")
  if model.num_kv_heads not in (0, model.num_heads):
    raise HfError(f"config.model.num_kv_heads={model.num_kv_heads} cannot be exported: Hugging Face "
                  f"{arch.model_type} has one key/value head per query head (num_kv_heads=0)")
  return arch
