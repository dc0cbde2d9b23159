"""Training windows read from a streamed source (data.hf_streaming): no cache, exact resume.

Documents are taken from the stream in order, tokenized one by one and laid end to end as [BOS] doc [EOS] ...,
exactly as a cached split lays them out; window j is stream[j*L : j*L + L + 1] (L = data.seq_len), with the same
segment ids, positions and loss mask as lmjax.data.pipeline.window_batch gives a cached split. When the stream
ends, the next epoch starts (`set_epoch`, which reshuffles a shuffled stream's shards) and the windows go on.

The state is where the next window starts: the epoch, the stream's own position before the document holding that
token (datasets' `IterableDataset.state_dict`, plain JSON), and the token offset inside that document. Restoring
loads the position, reads that document again and skips to the offset, so the windows after a resume are the ones
the run would have seen. With several processes each reads its own share of the stream (shards split by
datasets.distributed.split_dataset_by_node) and makes its own rows of every batch.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from lmjax.data import pipeline
from lmjax.data.text_files import DataError
from lmjax.data.sources import text_of
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer

Batch = dict[str, np.ndarray]


class StreamWindows:
  """Consecutive windows of seq_len + 1 tokens from one process's share of a streamed split."""

  streamed = True

  def __init__(self, dataset: Any, text_key: str, tokenizer: Tokenizer, seq_len: int, name: str):
    self.dataset, self.text_key, self.tokenizer, self.seq_len, self.name = dataset, text_key, tokenizer, seq_len, name
    self.dtype = pipeline._token_dtype(tokenizer.vocab_size)  # pylint: disable=protected-access
    self._initial = copy.deepcopy(dataset.state_dict())
    self._reset(epoch=0, stream_state=None, offset=0)

  def _reset(self, epoch: int, stream_state: Any, offset: int) -> None:
    self.epoch, self._iterator = epoch, None
    self.dataset.load_state_dict(copy.deepcopy(stream_state if stream_state is not None else self._initial))
    self.dataset.set_epoch(epoch)
    self._epoch_docs = 0
    self._from_start = stream_state is None  # an epoch read from its start must hold a document
    self.docs: list[tuple[int, Any, np.ndarray]] = []  # buffered (epoch, stream state before it, tokens)
    self.skip = offset  # tokens of the first buffered document before the next window
    self.windows = 0

  def _next_document(self) -> None:
    while True:
      if self._iterator is None:
        self._iterator = iter(self.dataset)
      before = copy.deepcopy(self.dataset.state_dict())
      try:
        record = next(self._iterator)
      except StopIteration:
        if self._epoch_docs == 0 and self._from_start:
          raise DataError(f"{self.name}: the stream holds no documents; check data.hf_name, data.hf_data_files and "
                          f"data.train_split") from None
        self.epoch, self._iterator, self._epoch_docs, self._from_start = self.epoch + 1, None, 0, True
        self.dataset.load_state_dict(copy.deepcopy(self._initial))
        self.dataset.set_epoch(self.epoch)
        continue
      self._epoch_docs += 1
      ids = self.tokenizer.encode(text_of(record, self.text_key, self.name))
      tokens = np.empty(ids.shape[0] + 2, self.dtype)
      tokens[0], tokens[1:-1], tokens[-1] = BOS_ID, ids, EOS_ID
      self.docs.append((self.epoch, before, tokens))
      return

  def _buffered(self) -> int:
    return sum(d[2].shape[0] for d in self.docs) - self.skip

  def take(self, n: int) -> Batch:
    """The next n windows as rows of a batch."""
    need = n * self.seq_len + 1
    epochs_before = self.epoch
    while self._buffered() < need:
      self._next_document()
      if self.epoch > epochs_before and self.windows == 0:
        raise DataError(f"{self.name}: the whole stream holds {self._buffered()} tokens, fewer than the "
                        f"{need} of the first batch ({n} windows of data.seq_len={self.seq_len} + 1); use more "
                        f"data, or lower train.batch_size or data.seq_len")
    tokens = np.concatenate([d[2] for d in self.docs])
    lengths = np.asarray([d[2].shape[0] for d in self.docs], np.int64)
    split = pipeline.TokenizedSplit(tokens, np.cumsum(lengths) - lengths, self.name)
    starts = self.skip + np.arange(n, dtype=np.int64) * self.seq_len
    batch = pipeline.window_batch(split, starts, self.seq_len)
    # Drop the documents that end before the next window; the first one kept holds its first token.
    position = self.skip + n * self.seq_len
    ends = np.cumsum(lengths)
    drop = int(np.searchsorted(ends, position, side="right"))
    self.skip = position - (int(ends[drop - 1]) if drop else 0)
    self.docs = self.docs[drop:]
    self.windows += n
    return batch

  def get_state(self) -> dict[str, Any]:
    if self.docs:
      epoch, before, _ = self.docs[0]
      return {"epoch": epoch, "stream": before, "offset": self.skip, "windows": self.windows}
    return {"epoch": self.epoch, "stream": self.dataset.state_dict() if self._iterator is not None else None,
            "offset": self.skip, "windows": self.windows}

  def set_state(self, state: dict[str, Any]) -> None:
    self._reset(int(state["epoch"]), state["stream"], int(state["offset"]))
    self.windows = int(state["windows"])

  def rows(self, indices: np.ndarray) -> Batch:
    raise NotImplementedError("a streamed source hands out its next rows (take)")


def head_tokens(records: Any, text_key: str, tokenizer: Tokenizer, max_tokens: int | None,
                name: str) -> pipeline.TokenizedSplit:
  """The first documents of a (validation) stream, at least max_tokens tokens of them (None: all), in memory."""
  dtype = pipeline._token_dtype(tokenizer.vocab_size)  # pylint: disable=protected-access
  pieces, total = [], 0
  for record in records:
    ids = tokenizer.encode(text_of(record, text_key, name))
    doc = np.empty(ids.shape[0] + 2, dtype)
    doc[0], doc[1:-1], doc[-1] = BOS_ID, ids, EOS_ID
    pieces.append(doc)
    total += doc.shape[0]
    if max_tokens is not None and total >= max_tokens:
      break
  if not pieces:
    raise DataError(f"{name}: the validation stream holds no documents; check data.eval_split")
  lengths = np.asarray([p.shape[0] for p in pieces], np.int64)
  return pipeline.TokenizedSplit(np.concatenate(pieces), np.cumsum(lengths) - lengths, name)
