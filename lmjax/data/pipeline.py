"""Token pipeline: tokenize each split once into a cached flat token stream, then cut it into windows.

A split becomes one stream of [BOS] doc [EOS] [BOS] doc [EOS] ... with the start offset of every document, saved
under data_dir/tokenized/ and memory-mapped afterwards. Training windows are the non-overlapping slices
stream[i*L : i*L + L + 1] in a fresh permutation each epoch; a batch is computed from its index alone with
vectorized numpy, so the grain iterator's state is a single counter and restores exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grain
import ml_collections
import numpy as np
from absl import flags

from lmjax.config import SAMPLING_KINDS
from lmjax.data import sources
from lmjax.data.local_text import DataError
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer

Batch = dict[str, np.ndarray]
_FOREVER = 2**62  # batch indices of the endless training stream


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """A split as one token stream; document d is tokens[doc_starts[d] : doc_starts[d+1]] ([BOS] ids [EOS])."""
  tokens: np.ndarray  # [N] uint16 or int32
  doc_starts: np.ndarray  # [D] int64, increasing, doc_starts[0] == 0
  name: str = ""

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def num_documents(self) -> int:
    return int(self.doc_starts.shape[0])


class _Encode:
  """Picklable so grain worker processes can run it."""

  def __init__(self, tokenizer: Tokenizer, dtype: np.dtype):
    self.tokenizer, self.dtype = tokenizer, dtype

  def __call__(self, text: str) -> np.ndarray:
    ids = np.asarray(self.tokenizer.encode(text))
    out = np.empty(ids.shape[0] + 2, self.dtype)
    out[0], out[1:-1], out[-1] = BOS_ID, ids, EOS_ID
    return out


def _token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def _encoded_documents(source: sources.TextSource, encode: _Encode, num_workers: int) -> Iterator[np.ndarray]:
  dataset = grain.MapDataset.source(source).map(encode)
  if num_workers <= 0:
    return (dataset[i] for i in range(len(dataset)))
  if not flags.FLAGS.is_parsed():  # grain's worker pool reads absl flags; outside an absl app use the defaults
    flags.FLAGS.mark_as_parsed()
  iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return _closing(iter(iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))))  # in order


def _closing(iterator: grain.DatasetIterator) -> Iterator[np.ndarray]:
  """Stops the worker processes (and frees their shared memory) as soon as the documents are consumed."""
  try:
    yield from iterator
  finally:
    iterator.close()


@contextlib.contextmanager
def atomic_directory(directory: Path, marker: str = "tokens.npy") -> Iterator[Path]:
  """Yields a temporary sibling directory to fill, then renames it to `directory`: readers never see a
  half-written cache. A process that lost the race to another writing the same cache keeps theirs (identical)."""
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
  try:
    yield tmp
    try:
      os.rename(tmp, directory)
    except OSError:
      if not (directory / marker).exists():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_token_stream(raw_path: Path, npy_path: Path, dtype: np.dtype, length: int) -> None:
  """Prepends an .npy header to a raw token file without loading it into memory."""
  header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
  with open(npy_path, "wb") as out, open(raw_path, "rb") as raw:
    np.lib.format.write_array_header_2_0(out, header)
    shutil.copyfileobj(raw, out, length=16 << 20)
  raw_path.unlink()


def _write_cache(directory: Path, documents: Iterator[np.ndarray], dtype: np.dtype) -> None:
  with atomic_directory(directory) as tmp:
    starts, total = [], 0
    with open(tmp / "tokens.bin", "wb") as raw:
      for doc in documents:
        starts.append(total)
        total += doc.shape[0]
        raw.write(doc.tobytes())
    if not starts:
      raise DataError(f"{directory.name}: the split has no documents; check data.paths / data.tfds_name and splits")
    write_token_stream(tmp / "tokens.bin", tmp / "tokens.npy", dtype, total)
    np.save(tmp / "doc_starts.npy", np.asarray(starts, np.int64))


def load_tokenized(directory: str | os.PathLike) -> TokenizedSplit:
  directory = Path(directory)
  # np.asarray drops the memmap subclass: plain ndarray views index faster.
  tokens = np.asarray(np.load(directory / "tokens.npy", mmap_mode="r"))
  doc_starts = np.asarray(np.load(directory / "doc_starts.npy", mmap_mode="r"))
  return TokenizedSplit(tokens, doc_starts, directory.name)


def tokenize_split(data_cfg: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer,
                   data_dir: str | os.PathLike) -> TokenizedSplit:
  """Tokenizes every document of `split` once; later calls load the cache (keyed by source and tokenizer)."""
  source = sources.open_split(data_cfg, split, data_dir)
  directory = Path(data_dir) / "tokenized" / f"{source.fingerprint}-{tokenizer.kind}-{tokenizer.fingerprint()}"
  if not (directory / "tokens.npy").exists():
    dtype = _token_dtype(tokenizer.vocab_size)
    _write_cache(directory, _encoded_documents(source, _Encode(tokenizer, dtype), data_cfg.num_workers), dtype)
  return load_tokenized(directory)


def window_batch(split: TokenizedSplit, starts: np.ndarray, seq_len: int) -> Batch:
  """Batch of the windows stream[s : s + seq_len + 1] for s in starts; positions without a target are padding.

  segment_ids number the documents inside each window from 1 (0 = padding); positions count from 0 at each
  document start or at the window start, so they stay below seq_len; loss_mask drops targets that belong to the
  next document (EOS -> BOS) and padding. Padding is 0 in every field (PAD_ID for tokens).
  """
  n, width = split.num_tokens, seq_len + 1
  offsets = np.arange(width)
  index = starts[:, None] + offsets  # [B, L+1]
  window = split.tokens[np.minimum(index, n - 1)].astype(np.int32)
  # Mark the few document starts inside each window: a binary search per token dominated the batch time.
  first = np.searchsorted(split.doc_starts, starts, side="right")  # the first document starting after s
  count = np.searchsorted(split.doc_starts, starts + width, side="left") - first
  rows = np.repeat(np.arange(starts.shape[0]), count)
  which = np.arange(rows.shape[0]) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
  is_start = np.zeros(index.shape, bool)
  is_start[rows, split.doc_starts[which] - starts[rows]] = True
  doc = np.cumsum(is_start, axis=1, dtype=np.int32)  # document number within the window, from 0
  doc_in = doc[:, :-1]
  segment_start = np.maximum(split.doc_starts[(first - 1)[:, None] + doc_in], starts[:, None])
  batch = {
      "inputs": window[:, :-1],
      "targets": window[:, 1:],
      "segment_ids": doc_in + 1,
      "positions": (index[:, :-1] - segment_start).astype(np.int32),
      "loss_mask": (doc_in == doc[:, 1:]).astype(np.float32),
  }
  if starts.shape[0] and starts.max() + seq_len >= n:  # only eval's last windows run off the stream
    real_in = index[:, 1:] < n  # an input is real only if its target exists, so the final EOS is padding
    batch = {k: np.where(real_in, v, v.dtype.type(0)) for k, v in batch.items()}
  return batch


def _check_sharding(batch_size: int, process_index: int, process_count: int, field: str) -> int:
  if batch_size <= 0 or batch_size % process_count:
    raise DataError(f"{field}={batch_size} must be a positive multiple of the process count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return batch_size // process_count


class _TrainBatch:
  """Global batch k = stream positions [k*G, (k+1)*G) of the concatenated per-epoch window permutations."""

  def __init__(self, split: TokenizedSplit, seq_len: int, global_batch_size: int, seed: int,
               process_index: int, process_count: int, sampling: str = "epochs"):
    self.split, self.seq_len, self.seed, self.sampling = split, seq_len, seed, sampling
    # Each epoch shifts the window grid by a random offset, so a token is not always at the same position of its
    # window (nor always cut from its left context at a window start); one window is given up to make room.
    usable = split.num_tokens - 1
    self.num_windows = usable // seq_len
    if self.num_windows > 1:
      self.num_windows -= 1
    self.max_shift = min(seq_len - 1, usable - self.num_windows * seq_len)
    local = global_batch_size // process_count
    self.local_offsets = process_index * local + np.arange(local, dtype=np.int64)
    self.global_batch_size = global_batch_size
    # A batch straddles at most two epochs, so a small per-instance cache computes each permutation once.
    self._permutation = functools.lru_cache(maxsize=4)(self._make_permutation)

  def _make_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed % 2**32, epoch]).permutation(self.num_windows)

  def random_starts(self, batch_index: int) -> np.ndarray:
    """nanoGPT's sampling: every row starts at a uniform random token, drawn from (seed, batch index) alone."""
    rng = np.random.default_rng([self.seed, batch_index, 2])
    starts = rng.integers(0, self.split.num_tokens - self.seq_len, size=self.global_batch_size)
    return starts[self.local_offsets]

  def shift(self, epoch: int) -> int:
    return int(np.random.default_rng([self.seed, epoch, 1]).integers(self.max_shift + 1))

  def __call__(self, batch_index: int) -> Batch:
    if self.sampling == "random":
      return window_batch(self.split, self.random_starts(batch_index), self.seq_len)
    position = batch_index * self.global_batch_size + self.local_offsets
    epochs, offsets = np.divmod(position, self.num_windows)
    starts = np.empty_like(position)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      starts[here] = self.shift(int(epoch)) + self._permutation(int(epoch))[offsets[here]] * self.seq_len
    return window_batch(self.split, starts, self.seq_len)


def make_train_dataset(tokens: TokenizedSplit, seq_len: int, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1, sampling: str = "epochs") -> grain.IterDataset:
  """Endless [global_batch_size / process_count, seq_len] batches; iter() of it is a checkpointable iterator.

  Every window of the epoch's grid (shifted by an offset drawn from (seed, epoch)) is visited once per epoch in an
  order fixed by (seed, epoch). With sampling='random' rows start at uniform random tokens instead (with
  replacement, as nanoGPT samples). Process p gets rows
  [p*b, (p+1)*b) of each global batch, so all processes together see exactly the global batch.
  """
  _check_sharding(global_batch_size, process_index, process_count, "train.batch_size")
  if (tokens.num_tokens - 1) // seq_len < 1:
    raise DataError(f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens but split {tokens.name} has "
                    f"{tokens.num_tokens}; lower data.seq_len or use more text")
  if sampling not in SAMPLING_KINDS:
    raise DataError(f"data.sampling={sampling!r} is unknown; choose one of {', '.join(SAMPLING_KINDS)}")
  batch_fn = _TrainBatch(tokens, seq_len, global_batch_size, seed, process_index, process_count, sampling)
  # A batch costs ~60us of numpy; prefetch threads measured 2-4x slower per fetch (GIL contention), so read inline.
  read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.MapDataset.range(_FOREVER).map(batch_fn).to_iter_dataset(read)


def make_eval_batches(tokens: TokenizedSplit, seq_len: int, batch_size: int, max_batches: int | None = None,
                      process_index: int = 0, process_count: int = 1) -> list[Batch]:
  """Sequential non-overlapping windows covering every target token once; padding rows have loss_mask 0.

  batch_size is global, like the training batch: every process gets the same number of batches.
  """
  local = _check_sharding(batch_size, process_index, process_count, "train.eval_batch_size")
  num_windows = -(-(tokens.num_tokens - 1) // seq_len)
  num_batches = -(-num_windows // batch_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  batches = []
  for k in range(num_batches):
    windows = k * batch_size + process_index * local + np.arange(local, dtype=np.int64)
    starts = np.where(windows < num_windows, windows * seq_len, tokens.num_tokens)  # past the end: all padding
    batches.append(window_batch(tokens, starts, seq_len))
  return batches

