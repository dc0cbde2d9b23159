"""Weighted mixtures of sources (data.mixture): which rows of each training batch come from which source.

The rows of the whole run are positions 0, 1, 2, ... (batch k holds [k*G, (k+1)*G)). Source i gets c_i(P) of the
first P positions, where c(P) apportions P by the weights with Sainte-Lague/Webster's rule: each position goes to
the source with the highest w_i / (rows so far + 1/2). The rule is house-monotone (more positions never give a
source fewer), so batch k takes c_i((k+1)G) - c_i(kG) rows from source i, and every prefix of the run is within
about one row of its weights: the realized proportions match the weights exactly in the long run and closely at
every step. Inside a batch the rows are shuffled by (seed, k), so no source sits in fixed rows.

Each source is read as its own stream of rows: a cached source's row j is a pure function of j (its own epoch
permutation of windows, or its own example stream), so the batch is a pure function of k; a streamed source
(data.hf_streaming) hands out its next rows and keeps its position in its state. The iterator's state is the batch
index and the streams' positions, which the checkpoint records: a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from lmjax.data.text_files import DataError

Batch = dict[str, np.ndarray]


def allocate(total: int, weights: Sequence[float]) -> np.ndarray:
  """c(total): rows of the first `total` positions per source (Webster apportionment; ties to the lower index)."""
  w = np.asarray(weights, np.float64) / float(np.sum(weights))
  n = w.shape[0]
  counts = np.floor(total * w + 0.5).astype(np.int64)
  next_key = lambda i: (w[i] / (counts[i] + 0.5), -i)  # the priority of source i's next row
  last_key = lambda i: (w[i] / (counts[i] - 0.5), -i)  # the priority of the last row it holds
  while counts.sum() < total:
    counts[max(range(n), key=next_key)] += 1
  while counts.sum() > total:
    counts[min((i for i in range(n) if counts[i] > 0), key=last_key)] -= 1
  while True:  # the held rows must be exactly the `total` highest priorities
    gain = max(range(n), key=next_key)
    holders = [i for i in range(n) if counts[i] > 0]
    if not holders:
      break
    lose = min(holders, key=last_key)
    if gain == lose or next_key(gain) <= last_key(lose):
      break
    counts[gain] += 1
    counts[lose] -= 1
  return counts


class RowSource(Protocol):
  """Rows of one source. A cached source computes rows from their indices (`rows`); a streamed one (`streamed`
  True) hands out the next `take(n)` rows and has a JSON state."""

  streamed: bool

  def rows(self, indices: np.ndarray) -> Batch: ...

  def take(self, n: int) -> Batch: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


class Plan:
  """Which source and which of its rows each row of global batch k is."""

  def __init__(self, weights: Sequence[float], global_batch_size: int, seed: int):
    self.weights, self.global_batch_size, self.seed = list(weights), global_batch_size, seed

  def assignment(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(source [G], that source's row index [G]) of the rows of global batch `batch_index`."""
    G = self.global_batch_size
    before = allocate(batch_index * G, self.weights)
    counts = allocate((batch_index + 1) * G, self.weights) - before
    source_G = np.repeat(np.arange(len(self.weights)), counts)
    source_G = source_G[np.random.default_rng([self.seed % 2**32, batch_index, 5]).permutation(G)]
    index_G = np.empty(G, np.int64)
    for i in range(len(self.weights)):
      rows = np.flatnonzero(source_G == i)
      index_G[rows] = before[i] + np.arange(rows.shape[0])
    return source_G, index_G


class MixtureIterator(grain.DatasetIterator):
  """Endless local batches of a mixture (process p: rows [p*b, (p+1)*b) of every global batch)."""

  def __init__(self, plan: Plan, sources: Sequence[RowSource], process_index: int, process_count: int):
    super().__init__()
    self.plan, self.sources = plan, list(sources)
    local = plan.global_batch_size // process_count
    self.rows = slice(process_index * local, (process_index + 1) * local)
    self.batch_index = 0

  def __next__(self) -> Batch:
    source_G, index_G = self.plan.assignment(self.batch_index)
    source_B, index_B = source_G[self.rows], index_G[self.rows]
    parts, order = [], []
    for i, source in enumerate(self.sources):
      mine = np.flatnonzero(source_B == i)
      if not mine.size:
        continue
      parts.append(source.take(mine.size) if source.streamed else source.rows(index_B[mine]))
      order.append(mine)
    where = np.argsort(np.concatenate(order), kind="stable")
    batch = {k: np.concatenate([p[k] for p in parts])[where] for k in parts[0]}
    self.batch_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"batch_index": self.batch_index,
            "streams": [s.get_state() if s.streamed else None for s in self.sources]}

  def set_state(self, state: dict[str, Any]) -> None:
    self.batch_index = int(state["batch_index"])
    for source, saved in zip(self.sources, state["streams"]):
      if source.streamed:
        source.set_state(saved)


class MixtureDataset(grain.IterDataset):
  """iter() gives a fresh MixtureIterator over sources made anew by `make_sources` (streams start at the start)."""

  def __init__(self, plan: Plan, make_sources: Callable[[], Sequence[RowSource]], process_index: int,
               process_count: int):
    super().__init__()
    if plan.global_batch_size <= 0 or plan.global_batch_size % process_count:
      raise DataError(f"train.batch_size={plan.global_batch_size} must be a positive multiple of the process count "
                      f"{process_count}")
    self.plan, self.make_sources = plan, make_sources
    self.process_index, self.process_count = process_index, process_count

  def __iter__(self) -> MixtureIterator:
    return MixtureIterator(self.plan, self.make_sources(), self.process_index, self.process_count)

  def __str__(self) -> str:
    return f"MixtureDataset(weights={self.plan.weights})"


class IndexedRows:
  """A cached source's rows: row_fn(indices) -> batch rows."""

  streamed = False

  def __init__(self, row_fn: Callable[[np.ndarray], Batch]):
    self.rows = row_fn

  def take(self, n: int) -> Batch:
    raise NotImplementedError("a cached source is read by index")

  def get_state(self) -> None:
    return None

  def set_state(self, state: Any) -> None:
    del state
