"""SentencePiece BPE encoding through a cache of words: each distinct word is encoded by SentencePiece once.

SentencePiece splits its input into words before it merges pieces: a word is a run of spaces and the run of other
characters after it ("a  b c" -> "a", "  b", " c"), and no piece of a BPE model spans two words, since training
split its text the same way. So a document's ids are the concatenation of its words' ids, and natural text, whose
words repeat (Zipf), needs SentencePiece's merges only for the words it has not seen yet. That holds when the
model leaves the text as it is before splitting it: the identity normalization, no dummy prefix, whitespace kept,
as lmjax trains its models (lmjax/data/tokenizers.py). Any other model (an imported one, a unigram model, whose
best segmentation is only per word up to ties) is encoded by SentencePiece whole.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable, Sequence

import numpy as np

# A document ends at "\x00", which the join below puts between documents: the separator is a word of its own.
WORD = re.compile(r" *[^ \x00]+| +|\x00")
SEPARATOR = "\x00"
# Distinct words kept before the cache starts again: a bound on memory for corpora with unbounded vocabularies
# (hashes, numbers), far above what natural text needs for a high hit rate.
MAX_WORDS = 1 << 20


def splits_by_words(model_proto: bytes) -> bool:
  """Whether a model's ids are those of its words encoded one by one (False where its spec cannot be read)."""
  try:  # generated protobuf code: refuses to load under an older protobuf runtime (the Beam environment pins one)
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  except Exception:  # pylint: disable=broad-except
    return False  # SentencePiece's own encoder then: the same ids, only slower
  model = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  t, n = model.trainer_spec, model.normalizer_spec
  return (t.model_type == sentencepiece_model_pb2.TrainerSpec.BPE and t.split_by_whitespace
          and not t.treat_whitespace_as_suffix and n.name == "identity" and not n.precompiled_charsmap
          and not n.add_dummy_prefix and not n.remove_extra_whitespaces and n.escape_whitespaces
          and not any(" " in p.piece or SEPARATOR in p.piece for p in model.pieces if p.type == p.USER_DEFINED))


class _Numbers(dict):
  """word -> its number in the cache; an unseen word takes the next number and waits in `unseen` for its ids."""

  def __init__(self):
    super().__init__({SEPARATOR: 0})  # the separator: a word of no ids
    self.unseen: list[str] = []

  def __missing__(self, word: str) -> int:
    number = self[word] = len(self)
    self.unseen.append(word)
    return number


class WordCache:
  """encode_batch for a model that splits_by_words, given SentencePiece's own batch encoder for the new words.

  The cache numbers the words it has seen and keeps their ids end to end in one array, so a batch of documents
  becomes word numbers (one dict lookup per word) and then its ids in one numpy gather."""

  def __init__(self, encode_words: Callable[[list[str]], list[list[int]]]):
    self._encode_words = encode_words
    self._clear()

  def _clear(self) -> None:
    self._numbers = _Numbers()
    self._ids = np.zeros(0, np.int32)
    self._starts = np.zeros(1, np.int64)
    self._lengths = np.zeros(1, np.int64)

  def _encode_unseen(self) -> None:
    words, self._numbers.unseen = self._numbers.unseen, []
    encoded = self._encode_words(words)
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    self._starts = np.concatenate([self._starts, len(self._ids) + np.cumsum(lengths) - lengths])
    self._lengths = np.concatenate([self._lengths, lengths])
    self._ids = np.concatenate([self._ids, np.fromiter(itertools.chain.from_iterable(encoded), np.int32,
                                                       int(lengths.sum()))])

  def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids end to end, each text's length), or None when a text holds U+0000, the separator (encode it whole)."""
    joined = SEPARATOR.join(texts) + SEPARATOR
    if joined.count(SEPARATOR) != len(texts):
      return None
    if len(self._numbers) > MAX_WORDS:
      self._clear()
    words = WORD.findall(joined)
    numbers = np.fromiter(map(self._numbers.__getitem__, words), np.int64, len(words))
    if self._numbers.unseen:
      self._encode_unseen()
    lengths = self._lengths[numbers]
    ends = np.cumsum(lengths)
    flat = np.repeat(self._starts[numbers] - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
    text_ends = ends[numbers == 0]  # each text's last word is the separator after it
    return self._ids[flat], np.diff(text_ends, prepend=0)
