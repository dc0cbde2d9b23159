"""The Hugging Face architectures lmjax converts: each family file declares its own (lmjax/hf/adapter.py), and this
module collects them by HF model_type and picks the one that represents an lmjax config on export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmjax.hf import bert, gemma, gpt2, llama, t5
from lmjax.hf.adapter import Architecture
from lmjax.hf.files import HfError

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for family in (gpt2, bert, llama, gemma, t5)
                                          for a in family.ARCHITECTURES}


def for_hf_config(hf: dict[str, Any], path: Path) -> Architecture:
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise HfError(f"{path} model_type={model_type!r} is not supported; lmjax converts {', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


def for_export(model: Any, preferred: str | None = None) -> Architecture:
  """The HF architecture that represents this lmjax config.model (`preferred`, the model_type it was imported
  from, when that one can), or a one-line error naming the field that has no HF equivalent: the first mismatch of
  the architecture that comes closest."""
  candidates = [a for a in ARCHITECTURES.values() if a.model_name == model.name]
  if not candidates:
    names = sorted({a.model_name for a in ARCHITECTURES.values()})
    raise HfError(f"config.model.name={model.name!r} cannot be exported: the Hugging Face architectures lmjax "
                  f"writes represent model.name {', '.join(map(repr, names))}")
  candidates.sort(key=lambda a: a.model_type != preferred)
  refusals = [(a.mismatches(model), a) for a in candidates]
  for reasons, arch in refusals:
    if not reasons:
      return arch
  reasons, _ = min(refusals, key=lambda r: len(r[0]))
  raise HfError(reasons[0])
