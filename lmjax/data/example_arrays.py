"""Batches over a fixed set of encoded examples (fine-tuning data): shuffled epochs for training, padded eval batches.

Examples are a dict of arrays with the example as dim 0 ({"inputs": [N, L], "labels": [N], ...}). Training
reads a new permutation each epoch, seeded by (seed, epoch), so global batch k is a pure function of k: the grain
iterator's state is one integer and a resumed run sees exactly the batches it would have seen. Eval batches cover
every example once, in order, and carry "index" [B] (the example's row, -1 on the rows that pad the last batch)
so predictions can be matched back to examples.
"""

from __future__ import annotations

import math

import grain
import numpy as np

from lmjax.data.text_files import DataError
from lmjax.data.pipeline import _check_sharding  # pylint: disable=protected-access

Arrays = dict[str, np.ndarray]
_FOREVER = 2**62


def num_examples(arrays: Arrays) -> int:
  sizes = {k: v.shape[0] for k, v in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"example arrays disagree on the number of examples: {sizes}")
  return next(iter(sizes.values()))


def take(arrays: Arrays, rows: np.ndarray) -> Arrays:
  return {k: v[rows] for k, v in arrays.items()}


class _TrainBatch:
  """Global batch k = positions [k*G, (k+1)*G) of the concatenated per-epoch permutations; this process's rows."""

  def __init__(self, arrays: Arrays, global_batch_size: int, seed: int, process_index: int, process_count: int):
    self.arrays, self.n, self.seed, self.global_batch_size = arrays, num_examples(arrays), seed, global_batch_size
    local = global_batch_size // process_count
    self.local_offsets = process_index * local + np.arange(local, dtype=np.int64)

  def _rows(self, positions: np.ndarray) -> np.ndarray:
    epochs, within = np.divmod(positions, self.n)
    rows = np.empty_like(positions)
    for epoch in np.unique(epochs):
      permutation = np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)
      rows[epochs == epoch] = permutation[within[epochs == epoch]]
    return rows

  def __call__(self, batch_index: int) -> Arrays:
    return take(self.arrays, self._rows(batch_index * self.global_batch_size + self.local_offsets))


def train_dataset(arrays: Arrays, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Endless batches of global_batch_size / process_count examples; iter() of it is a checkpointable iterator."""
  _check_sharding(global_batch_size, process_index, process_count, "train.batch_size")
  if num_examples(arrays) == 0:
    raise DataError("the training split has no examples")
  batch_fn = _TrainBatch(arrays, global_batch_size, seed, process_index, process_count)
  read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.MapDataset.range(_FOREVER).map(batch_fn).to_iter_dataset(read)


def eval_batches(arrays: Arrays, batch_size: int, max_examples: int = 0, process_index: int = 0,
                 process_count: int = 1) -> list[Arrays]:
  """Batches covering the first max_examples examples (0: all) once, with "index"; padding rows copy row 0 and
  have index -1. batch_size is global; every process gets the same number of batches, its own rows of each."""
  local = _check_sharding(batch_size, process_index, process_count, "train.eval_batch_size")
  n = num_examples(arrays)
  if max_examples:
    n = min(n, max_examples)
  if n == 0:
    raise DataError("the eval split has no examples")
  batches = []
  for k in range(math.ceil(n / batch_size)):
    index = k * batch_size + process_index * local + np.arange(local, dtype=np.int64)
    real = index < n
    batch = take(arrays, np.where(real, index, 0))
    batch["index"] = np.where(real, index, -1).astype(np.int32)
    batches.append(batch)
  return batches
