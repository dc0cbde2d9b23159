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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np

from lmjax.config import SAMPLING_KINDS
from lmjax.data import sources, worker_pool
from lmjax.data.text_files import DataError
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


def _token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


# Documents are tokenized in chunks of about this many characters: large enough that per-chunk costs vanish (and
# that a tokenizer's batch path pays off), small enough that a few chunks in flight per worker stay far below 2 GB.
CHUNK_CHARS = 4 << 20


def chunked(texts: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
  """Consecutive texts grouped into lists of about chunk_chars characters."""
  chunk, size = [], 0
  for text in texts:
    chunk.append(text)
    size += len(text)
    if size >= chunk_chars:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def pack_documents(ids: np.ndarray, lengths: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
  """([BOS] ids_0 [EOS] [BOS] ids_1 [EOS] ..., each document's length with its two specials) from the
  concatenated ids and per-document lengths that Tokenizer.encode_batch returns."""
  sizes = lengths.astype(np.int64) + 2
  ends = np.cumsum(sizes)
  out = np.empty(int(ends[-1]) if ends.size else 0, dtype)
  text = np.ones(out.shape[0], bool)
  text[ends - sizes] = text[ends - 1] = False
  out[ends - sizes], out[ends - 1] = BOS_ID, EOS_ID
  out[text] = ids
  return out, sizes


class EncodeChunk:
  """A chunk of documents -> (their packed token stream, each document's length). Picklable (worker processes)."""

  def __init__(self, tokenizer: Tokenizer, dtype: np.dtype):
    self.tokenizer, self.dtype = tokenizer, dtype

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return pack_documents(*self.tokenizer.encode_batch(texts), self.dtype)


def encoded_chunks(texts: Iterable[str], encode: Any, num_workers: int) -> Iterator[Any]:
  """encode(chunk) of every chunk of texts, in order, in num_workers processes (0: this one)."""
  return worker_pool.ordered_map(encode, chunked(texts), num_workers)


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


class TokenWriter:
  """Appends documents' tokens to tokens.bin and their starts to memory as they come: the cache is written
  incrementally, and only 8 bytes per document are held until `finish` writes tokens.npy and doc_starts.npy."""

  def __init__(self, directory: Path, dtype: np.dtype):
    self.directory, self.dtype = directory, dtype
    self.raw = open(directory / "tokens.bin", "wb")  # pylint: disable=consider-using-with
    self.starts: list[np.ndarray] = []
    self.total = 0

  def add(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
    self.raw.write(tokens.astype(self.dtype, copy=False).tobytes())
    self.add_sizes(sizes)

  def add_sizes(self, sizes: np.ndarray) -> None:
    """Documents of these sizes (in tokens) whose tokens were written to `raw` directly."""
    self.starts.append(self.total + np.cumsum(sizes) - sizes)
    self.total += int(sizes.sum())

  def finish(self, what: str) -> None:
    self.raw.close()
    starts = np.concatenate(self.starts) if self.starts else np.zeros(0, np.int64)
    if not starts.size:
      raise DataError(f"{what}: the split has no documents; check data.paths / data.tfds_name / data.hf_name and "
                      f"the splits")
    write_token_stream(self.directory / "tokens.bin", self.directory / "tokens.npy", self.dtype, self.total)
    np.save(self.directory / "doc_starts.npy", starts.astype(np.int64))


def write_cache(directory: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]], dtype: np.dtype) -> None:
  """The cache of a split from its (tokens, document sizes) chunks, written in place atomically."""
  with atomic_directory(directory) as tmp:
    writer = TokenWriter(tmp, dtype)
    try:
      for tokens, sizes in chunks:
        writer.add(tokens, sizes)
    finally:
      writer.raw.close()
    writer.finish(directory.name)


def load_tokenized(directory: str | os.PathLike) -> TokenizedSplit:
  directory = Path(directory)
  # np.asarray drops the memmap subclass: plain ndarray views index faster.
  tokens = np.asarray(np.load(directory / "tokens.npy", mmap_mode="r"))
  doc_starts = np.asarray(np.load(directory / "doc_starts.npy", mmap_mode="r"))
  return TokenizedSplit(tokens, doc_starts, directory.name)


def cache_directory(data_dir: str | os.PathLike, source: sources.Split, tokenizer: Tokenizer) -> Path:
  return Path(data_dir) / "tokenized" / f"{source.fingerprint}-{tokenizer.kind}-{tokenizer.fingerprint()}"


def tokenize_split(data_cfg: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer,
                   data_dir: str | os.PathLike) -> TokenizedSplit:
  """Tokenizes every document of `split` once; later calls load the cache (keyed by source and tokenizer).

  data_cfg names one source (a data.mixture entry's section for mixtures). Documents are streamed from the source
  in chunks, tokenized in data.num_workers processes, and appended to the cache as they come."""
  source = sources.open_split(data_cfg, split, data_dir)
  directory = cache_directory(data_dir, source, tokenizer)
  if isinstance(source, sources.LocalSplit) and split in sources.LOCAL_SPLITS and not directory.joinpath(
      "tokens.npy").exists():
    _tokenize_local_splits(source, tokenizer, data_dir, data_cfg.num_workers)
  if not (directory / "tokens.npy").exists():
    dtype = _token_dtype(tokenizer.vocab_size)
    texts = source.texts(data_cfg.text_key)
    write_cache(directory, encoded_chunks(texts, EncodeChunk(tokenizer, dtype), data_cfg.num_workers), dtype)
  return load_tokenized(directory)


def _tokenize_local_splits(source: sources.LocalSplit, tokenizer: Tokenizer, data_dir: str | os.PathLike,
                           num_workers: int) -> None:
  """Both caches of local text in one streamed pass, when neither exists and the corpus splits by documents:
  every document is tokenized into one file, and the validation tail is then moved to its own cache (the split
  is known only once the documents are counted). Otherwise nothing is written here and each split is read alone."""
  corpus = source.corpus
  dirs = {s: cache_directory(data_dir, sources.LocalSplit(corpus, s, source.source), tokenizer)
          for s in sources.LOCAL_SPLITS}
  if corpus.index_path.exists() or any((d / "tokens.npy").exists() for d in dirs.values()):
    return
  dtype, chars = _token_dtype(tokenizer.vocab_size), [0]

  def counted() -> Iterator[str]:
    for doc in corpus.documents():
      chars[0] += len(doc)
      yield doc

  try:
    with atomic_directory(dirs["train"]) as train:
      writer = TokenWriter(train, dtype)
      try:
        for tokens, sizes in encoded_chunks(counted(), EncodeChunk(tokenizer, dtype), num_workers):
          writer.add(tokens, sizes)
      finally:
        writer.raw.close()
      starts = np.concatenate(writer.starts) if writer.starts else np.zeros(0, np.int64)
      index = corpus.record_index(int(starts.shape[0]), chars[0])
      if index is None:
        raise _CutByCharacters()
      boundary = int(starts[index["train"]])
      with atomic_directory(dirs["validation"]) as validation:
        with open(train / "tokens.bin", "rb") as raw, open(validation / "tokens.bin", "wb") as out:
          raw.seek(boundary * dtype.itemsize)
          shutil.copyfileobj(raw, out, length=16 << 20)
        write_token_stream(validation / "tokens.bin", validation / "tokens.npy", dtype, writer.total - boundary)
        np.save(validation / "doc_starts.npy", starts[index["train"]:] - boundary)
      with open(train / "tokens.bin", "r+b") as raw:
        raw.truncate(boundary * dtype.itemsize)
      write_token_stream(train / "tokens.bin", train / "tokens.npy", dtype, boundary)
      np.save(train / "doc_starts.npy", starts[:index["train"]])
  except _CutByCharacters:
    return


class _CutByCharacters(Exception):
  """The corpus has too few documents to split by them; each split is then read on its own."""


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

  def window_starts(self, position: np.ndarray) -> np.ndarray:
    """Where windows number `position` of the concatenated epochs start in the stream."""
    epochs, offsets = np.divmod(position, self.num_windows)
    starts = np.empty_like(position)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      starts[here] = self.shift(int(epoch)) + self._permutation(int(epoch))[offsets[here]] * self.seq_len
    return starts

  def __call__(self, batch_index: int) -> Batch:
    if self.sampling == "random":
      return window_batch(self.split, self.random_starts(batch_index), self.seq_len)
    position = batch_index * self.global_batch_size + self.local_offsets
    return window_batch(self.split, self.window_starts(position), self.seq_len)

  def rows(self, index: np.ndarray) -> Batch:
    """Windows number `index` of this split's own sequence (a mixture's rows from it): in epochs as above, or
    with sampling='random' each at a uniform random token drawn from (seed, its index)."""
    if self.sampling == "random":
      high = self.split.num_tokens - self.seq_len
      starts = np.asarray([np.random.default_rng([self.seed % 2**32, int(i), 4]).integers(0, high) for i in index],
                          np.int64)
    else:
      starts = self.window_starts(np.asarray(index, np.int64))
    return window_batch(self.split, starts, self.seq_len)


def window_rows(tokens: TokenizedSplit, seq_len: int, seed: int, sampling: str = "epochs") -> _TrainBatch:
  """A cached split's windows by index (`.rows(index)`), for mixtures; checked like make_train_dataset's."""
  if (tokens.num_tokens - 1) // seq_len < 1:
    raise DataError(f"data.seq_len={seq_len} needs at least {seq_len + 1} tokens but split {tokens.name} has "
                    f"{tokens.num_tokens}; lower data.seq_len or use more text")
  return _TrainBatch(tokens, seq_len, 1, seed, 0, 1, sampling)


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

