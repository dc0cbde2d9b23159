"""LoRA adapters in PEFT's format: adapter_config.json and adapter_model.safetensors, which `peft` loads onto the
transformers model of the exported base (`PeftModel.from_pretrained(base, directory)`).

The adapters reach Hugging Face names through the family's own export (`export_params`), which is linear in the
kernels: reshapes, transposes, splits of fused projections, moved vocabulary rows. Exporting a tree that holds
each adapted layer's change (alpha / r) A B and zeros elsewhere gives the change of each HF weight; it has rank at
most r, and its singular value decomposition (in float64) gives PEFT's two factors, exact to float32 rounding. Which
HF modules are adapted follows the same way, from a tree with ones in the adapted kernels. So every family lmjax
exports gets adapter export with nothing of its own but the orientation of its HF weights: [in, out] (GPT-2's
Conv1D, `fan_in_fan_out`) or [out, in] (torch.nn.Linear).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax.hf.files import HfError
from lmjax.models import lora

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
TASK_TYPES = {"next_token": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}


def _kernels(params: Any, fill) -> Any:
  """The base tree with each adapted kernel replaced by fill(its layer's parameters), every other array by zeros."""
  if not isinstance(params, dict):
    return np.zeros_like(params)
  out = {k: _kernels(v, fill) for k, v in params.items() if k not in lora.ADAPTER_NAMES}
  if "lora_a" in params:
    out["kernel"] = fill(params)
  return out


def _factor(change: np.ndarray, rank: int, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(A [r, in], B [out, r]) with B @ A = change [out, in]."""
  u, s, vt = np.linalg.svd(change.astype(np.float64), full_matrices=False)
  if rank < len(s) and s[rank] > 1e-6 * max(s[0], 1e-30):
    raise HfError(f"the change of {name} has rank above {rank}; its export is not a rank-{rank} adapter (a bug in "
                  f"lmjax.hf.peft)")
  root = np.sqrt(s[:rank])
  return (root[:, None] * vt[:rank]).astype(np.float32), (u[:, :rank] * root[None]).astype(np.float32)


def export_adapters(params: Any, settings: lora.LoraSettings, convert: Any, fields: dict[str, Any], vocab: Any,
                    layout: str, interface: str, base_model: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(adapter_config.json contents, adapter_model.safetensors tensors) of an adapted run's host parameters.
  `convert` is the family's Architecture (its export_params); `layout`, 'in_out' or 'out_in', is how its weights
  are stored."""
  probe = convert.export_params(_kernels(params, lambda node: np.ones_like(node["kernel"])), fields, vocab)
  change = convert.export_params(
      _kernels(params, lambda node: lora.delta(np.asarray(node["lora_a"], np.float64),
                                               np.asarray(node["lora_b"], np.float64), settings.scale)), fields, vocab)
  targets = sorted(name for name, value in probe.items() if np.any(value))
  tensors, modules = {}, []
  for name in targets:
    if not name.endswith(".weight") or change[name].ndim != 2:
      raise HfError(f"the adapted weight {name} is not a linear layer's [out, in] matrix in Hugging Face's format; "
                    f"it cannot be a PEFT LoRA module, so adapt other layers (finetune.lora.targets)")
    module = name.removesuffix(".weight")
    out_in = change[name].T if layout == "in_out" else change[name]
    # PEFT scales B @ A by lora_alpha / r; the factors hold the change divided by that.
    a, b = _factor(out_in / settings.scale, settings.rank, name)
    tensors[f"base_model.model.{module}.lora_A.weight"] = a
    tensors[f"base_model.model.{module}.lora_B.weight"] = b
    modules.append(module)
  if not modules:
    raise HfError("the run's adapters reach no weight of the exported model; nothing to export")
  config = {"peft_type": "LORA", "task_type": TASK_TYPES.get(interface), "r": settings.rank,
            "lora_alpha": settings.alpha, "lora_dropout": settings.dropout, "target_modules": modules,
            "fan_in_fan_out": layout == "in_out", "bias": "none", "base_model_name_or_path": base_model or None,
            "inference_mode": True, "modules_to_save": None, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True}
  return config, tensors
