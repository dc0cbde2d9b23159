"""Subword tokens of pre-split words, with the map from every token back to its word.

The Tokenizer interface has no character offsets, so tagging and extractive QA tokenize word by word and let
every subword stand for its whole word: a predicted span maps back to whole words, never to part of one. Each
word is encoded together with the whitespace before it (" word"), so SentencePiece sees the same pieces it
sees in running text and char/byte tokenizers produce exactly the tokens of the joined text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from lmjax.data.tokenizers import Tokenizer

# Runs of letters/digits, and every other non-space character on its own: "Broncos." is "Broncos" + ".", so an
# answer that stops before punctuation is still a whole number of words (what BERT's basic tokenizer does).
_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[tuple[int, int]]:
  """[start, end) character spans of the words of `text`."""
  return [m.span() for m in _WORD.finditer(text)]


@dataclasses.dataclass(frozen=True)
class WordTokens:
  ids: np.ndarray  # [T] int32 subword ids of all words in order
  word_index: np.ndarray  # [T] int32: the word each token belongs to
  first: np.ndarray  # [W] int64: the word's first token after any whitespace-only tokens (labels go there)
  last: np.ndarray  # [W] int64: the word's last token


def encode_words(tokenizer: Tokenizer, words: Sequence[str], spaces: Sequence[str] | None = None) -> WordTokens:
  """Encodes spaces[i] + words[i] for every word; spaces default to "" before the first word and " " after.

  With char or byte tokenizers " word" starts with a space token; `first` skips such tokens, found as a prefix
  equal to the encoding of the whitespace alone, so a label or answer start sits on the word's own text.
  """
  if spaces is None:
    spaces = ["" if i == 0 else " " for i in range(len(words))]
  space_ids: dict[str, list[int]] = {}
  pieces, first, last = [], np.zeros(len(words), np.int64), np.zeros(len(words), np.int64)
  total = 0
  for i, (space, word) in enumerate(zip(spaces, words)):
    ids = np.asarray(tokenizer.encode(space + word), np.int32).reshape(-1)
    if ids.size == 0:  # a tokenizer that drops the text entirely: keep the word addressable
      ids = np.asarray([tokenizer.unk_id], np.int32)
    lead = 0
    if space:
      if space not in space_ids:
        space_ids[space] = np.asarray(tokenizer.encode(space)).tolist()
      prefix = space_ids[space]
      if 0 < len(prefix) < ids.size and ids[:len(prefix)].tolist() == prefix:
        lead = len(prefix)
    pieces.append(ids)
    first[i], last[i] = total + lead, total + ids.size - 1
    total += ids.size
  ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  word_index = np.repeat(np.arange(len(words), dtype=np.int32), [p.size for p in pieces])
  return WordTokens(ids, word_index, first, last)
