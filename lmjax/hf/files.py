"""Reading and writing the files of a local Hugging Face checkpoint directory.

Weights come from model.safetensors (read through safetensors' numpy API, so no torch is needed), its sharded form
(model.safetensors.index.json), or pytorch_model.bin[.index.json] through torch (the optional `torch` extra), one
tensor at a time (`CheckpointWeights`). Nothing is ever downloaded: a hub name given where a directory is expected is a one-line error saying how to fetch it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
HF_CONFIG_FILE = "hf_config.json"  # an imported workdir's copy of the checkpoint's config.json
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


def _float32(x: np.ndarray) -> np.ndarray:
  # bfloat16 (ml_dtypes) reports kind "V"; every float is converted on in float32.
  return np.asarray(x, np.float32) if x.dtype.kind in "fV" else x


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise HfError(f"{TORCH_FILE} needs torch to read (pip install 'lmjax[torch]'), or convert it to "
                  f"{SAFETENSORS_FILE}") from None
  return torch


class CheckpointWeights:
  """A checkpoint's tensors by name, read one at a time: the names (and the file holding each) are known up front
  from the safetensors headers or the shard index, and `read` opens the file, copies out that one tensor as float32
  and closes it again, so no more than the tensor being converted is ever resident. pytorch_model.bin files are
  memory-mapped by torch (torch.load(mmap=True)) and read the same way."""

  def __init__(self, hf_dir: Path):
    self.hf_dir = hf_dir
    self._file_of: dict[str, Path] = {}
    for name in WEIGHT_FILES:
      if (hf_dir / name).is_file():
        files = [hf_dir / name] if not name.endswith(".index.json") else self._shards(hf_dir / name)
        break
    else:
      raise HfError(f"{hf_dir} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    self.files = files
    self._torch_states: dict[Path, Any] = {}
    for path in files:
      for key in self._keys(path):
        self._file_of[key] = path

  @staticmethod
  def _shards(index: Path) -> list[Path]:
    shards = sorted(set(read_json(index).get("weight_map", {}).values()))
    if not shards:
      raise HfError(f"{index} lists no weight files (weight_map is empty)")
    for shard in shards:
      if not (index.parent / shard).is_file():
        raise HfError(f"{index.parent / shard} is missing (listed in {index.name}); download the whole checkpoint")
    return [index.parent / shard for shard in shards]

  def _keys(self, path: Path) -> list[str]:
    if path.name.endswith(".safetensors"):
      from safetensors import safe_open  # pylint: disable=import-outside-toplevel
      with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())
    return list(self._torch_state(path))

  def _torch_state(self, path: Path) -> Any:
    if path not in self._torch_states:
      self._torch_states[path] = _torch().load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return self._torch_states[path]

  @property
  def names(self) -> set[str]:
    return set(self._file_of)

  @property
  def largest_file_bytes(self) -> int:
    return max(path.stat().st_size for path in self.files)

  def read(self, name: str) -> np.ndarray:
    path = self._file_of[name]
    if path.name.endswith(".safetensors"):
      from safetensors import safe_open  # pylint: disable=import-outside-toplevel
      with safe_open(str(path), framework="numpy") as f:
        return _float32(f.get_tensor(name))
    tensor = self._torch_state(path)[name]
    return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()


def read_weights(hf_dir: Path) -> dict[str, np.ndarray]:
  """{name: float32 array} in the checkpoint's own (PyTorch) layout, all at once (small checkpoints and tests)."""
  weights = CheckpointWeights(hf_dir)
  return {name: weights.read(name) for name in sorted(weights.names)}


def write_weights(hf_dir: Path, weights: dict[str, np.ndarray], name: str = SAFETENSORS_FILE) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
  save_file(arrays, str(hf_dir / name), metadata={"format": "pt"})


def write_json(path: Path, data: dict[str, Any]) -> None:
  path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
