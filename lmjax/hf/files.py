"""Reading and writing the files of a local Hugging Face checkpoint directory.

Weights come from model.safetensors (read through safetensors' numpy API, so no torch is needed), its sharded form
(model.safetensors.index.json), or pytorch_model.bin[.index.json] through torch (the optional `torch` extra). Nothing
is ever downloaded: a hub name given where a directory is expected is a one-line error saying how to fetch it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS_FILE, f"{SAFETENSORS_FILE}.index.json", TORCH_FILE, f"{TORCH_FILE}.index.json")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class HfError(ValueError):
  """A checkpoint lmjax cannot read or write; the message is one line naming the file or field and the fix."""


def checkpoint_dir(hf_dir: str | Path, flag: str = "--hf_dir") -> Path:
  """The directory, or a one-line error; a hub name ('gpt2', 'bert-base-uncased') is never fetched at run time."""
  path = Path(hf_dir)
  if path.is_dir():
    return path
  if path.exists():
    raise HfError(f"{flag}={hf_dir} is a file; give the directory holding config.json and the weights")
  if _HUB_NAME.fullmatch(str(hf_dir)) and not str(hf_dir).startswith("."):
    raise HfError(f"{flag}={hf_dir} is not a local directory, and lmjax does not download checkpoints: fetch it first "
                  f"(`huggingface-cli download {hf_dir} --local-dir DIR`) and pass {flag}=DIR")
  raise HfError(f"{flag}={hf_dir}: no such directory; give a local Hugging Face checkpoint directory")


def read_config(hf_dir: Path) -> dict[str, Any]:
  path = hf_dir / CONFIG_FILE
  if not path.is_file():
    raise HfError(f"{path} is missing; a Hugging Face checkpoint directory needs config.json next to its weights")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise HfError(f"{path} is not valid JSON ({e})") from None


def read_json(path: Path) -> dict[str, Any]:
  """A JSON file that may be absent ({} then)."""
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise HfError(f"{path} is not valid JSON ({e})") from None


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  return load_file(str(path))


def _load_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise HfError(f"{path} needs torch to read (pip install 'lmjax[torch]'), or convert it to "
                  f"model.safetensors") from None
  state = torch.load(str(path), map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _load_sharded(index: Path, load) -> dict[str, np.ndarray]:
  shards = sorted(set(read_json(index).get("weight_map", {}).values()))
  if not shards:
    raise HfError(f"{index} lists no weight files (weight_map is empty)")
  out: dict[str, np.ndarray] = {}
  for shard in shards:
    if not (index.parent / shard).is_file():
      raise HfError(f"{index.parent / shard} is missing (listed in {index.name}); download the whole checkpoint")
    out.update(load(index.parent / shard))
  return out


def read_weights(hf_dir: Path) -> dict[str, np.ndarray]:
  """{name: float32 array} in the checkpoint's own (PyTorch) layout."""
  loaders = {SAFETENSORS_FILE: _load_safetensors, TORCH_FILE: _load_torch}
  for name, load in loaders.items():
    if (hf_dir / name).is_file():
      weights = load(hf_dir / name)
      break
    if (hf_dir / f"{name}.index.json").is_file():
      weights = _load_sharded(hf_dir / f"{name}.index.json", load)
      break
  else:
    raise HfError(f"{hf_dir} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
  # bfloat16 (ml_dtypes) reports kind "V"; every float is computed on in float32.
  return {k: np.asarray(v, np.float32) if v.dtype.kind in "fV" else v for k, v in weights.items()}


def write_weights(hf_dir: Path, weights: dict[str, np.ndarray], name: str = SAFETENSORS_FILE) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
  save_file(arrays, str(hf_dir / name), metadata={"format": "pt"})


def write_json(path: Path, data: dict[str, Any]) -> None:
  path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
