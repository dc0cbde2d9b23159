"""Precomputed teacher logits: the teacher's k largest logits (float16) and their token ids at every position the
distillation matches, for the first N batches of the student's training stream, written once by
`python -m lmjax.distill.precompute` and read back batch by batch while the student trains.

A store is a directory: `<head>_values.npy` [N, B, ..., k] float16, `<head>_indices.npy` [N, B, ..., k] (uint16, or
int32 for vocabularies over 65,536), one pair per distilled head ('lm'; 'mlm' and 'nsp'), and `meta.json`, written
last, describing the stream it follows. Train batch i is a pure function of i (lmjax.data), so row r of stored batch
i is exactly the teacher's view of row r of the student's batch i, also after resuming. The loss is
losses.top_k_kl; its approximation is described there.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np

from lmjax.config import ConfigError, flatten
from lmjax.registry import TASKS

META = "meta.json"
OBJECTIVES = ("causal_lm", "mlm")  # the objectives whose teacher logits can be stored (a classifier's run online)


def stream_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that decide what train batch i holds; a store fits a run whose fields are equal."""
  fields = {f"data.{k}": v for k, v in flatten(config.data.to_dict()).items() if k not in ("data_dir", "num_workers")}
  fields |= {f"tokenizer.{k}": v for k, v in flatten(config.tokenizer.to_dict()).items()}
  fields["train.batch_size"] = config.train.batch_size
  if TASKS.get(config.task).objective() == "mlm":
    fields |= {f"mlm.{k}": v for k, v in flatten(config.mlm.to_dict()).items()}
  return fields


def batch_key(head: str, what: str) -> str:
  return f"teacher_{head}_{what}"


@dataclasses.dataclass(frozen=True)
class TopKStore:
  directory: Path
  meta: dict[str, Any]

  @property
  def num_batches(self) -> int:
    return self.meta["num_batches"]

  @property
  def heads(self) -> dict[str, dict[str, Any]]:
    """head -> {'shape': [B, ..., k] of one batch, 'index_dtype': ...}."""
    return self.meta["heads"]

  def _arrays(self, head: str) -> tuple[np.ndarray, np.ndarray]:
    load = lambda what: np.load(self.directory / f"{head}_{what}.npy", mmap_mode="r")
    return load("values"), load("indices")

  def batch(self, index: int, rows: slice) -> dict[str, np.ndarray]:
    out = {}
    for head in self.heads:
      values, indices = self._arrays(head)
      out[batch_key(head, "values")] = np.asarray(values[index, rows])
      out[batch_key(head, "indices")] = np.asarray(indices[index, rows])
    return out

  def check(self, config: ml_collections.ConfigDict, tokenizer: Any) -> None:
    """One line unless this store follows the run's training stream, tokenizer and length."""
    where = f"config.distill.offline_logits_dir={str(self.directory)!r}"
    if self.meta["tokenizer_fingerprint"] != tokenizer.fingerprint():
      raise ConfigError(f"{where}: its logits use a different tokenizer than this run's; precompute them again "
                        f"for this config")
    mine = stream_fields(config)
    for field, value in mine.items():
      if self.meta["stream"].get(field) != value:
        raise ConfigError(f"{where}: it follows a stream with config.{field}={self.meta['stream'].get(field)!r}, "
                          f"this run has {value!r}; set it back or precompute again")
    if self.num_batches < config.train.num_steps:
      raise ConfigError(f"{where}: it holds {self.num_batches} batches but train.num_steps={config.train.num_steps};"
                        f" precompute at least as many (or train fewer steps)")


def open_store(directory: str | Path) -> TopKStore:
  directory = Path(directory)
  try:
    meta = json.loads((directory / META).read_text())
  except FileNotFoundError:
    raise ConfigError(f"config.distill.offline_logits_dir={str(directory)!r} has no {META}; write it first with "
                      f"python -m lmjax.distill.precompute (same --config)") from None
  return TopKStore(directory, meta)


class _WithTopK(grain.IterDataset):
  """The base train stream with the stored teacher logits of each batch added (this process's rows)."""

  def __init__(self, parent: grain.IterDataset, store: TopKStore, rows: slice):
    super().__init__(parent)
    self.store, self.rows = store, rows

  def __iter__(self) -> grain.DatasetIterator:
    return _WithTopKIterator(self._parent.__iter__(), self.store, self.rows)


class _WithTopKIterator(grain.DatasetIterator):
  def __init__(self, parent: grain.DatasetIterator, store: TopKStore, rows: slice):
    super().__init__(parent)
    self.store, self.rows, self.index = store, rows, 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._parent)
    if self.index >= self.store.num_batches:
      raise ConfigError(f"config.distill.offline_logits_dir={str(self.store.directory)!r} holds "
                        f"{self.store.num_batches} batches; the run needs more")
    extra = self.store.batch(self.index, self.rows)
    self.index += 1
    return {**batch, **extra}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "index": self.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.index = state["index"]


def with_top_k(dataset: grain.IterDataset, store: TopKStore, global_batch_size: int, process_index: int,
               process_count: int) -> grain.IterDataset:
  """Process p reads rows [p*b, (p+1)*b) of each stored global batch, the rows the data pipeline gives it."""
  local = global_batch_size // process_count
  return _WithTopK(dataset, store, slice(process_index * local, (process_index + 1) * local))
