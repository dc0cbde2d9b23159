"""CoNLL-2003-style tagged sentences (one token per line, blank lines between sentences) and their subword inputs.

A word's tag goes on its first subword; the other subwords have weight 0, so the loss and the metric see one
prediction per word. word_ids keep the map back to words, so predicted tags become per-word tags for entity F1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lmjax.data.labelled import LabelVocab, read_lines
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import CLS_ID, PAD_ID, SEP_ID, Tokenizer
from lmjax.data.words import encode_words

Sentence = dict[str, list[str]]  # {"words": [...], "tags": [...]}
DOCSTART = "-DOCSTART-"


def read_conll(path: str | os.PathLike, tag_column: int = -1, word_column: int = 0) -> list[Sentence]:
  """Sentences of a CoNLL file; columns split on spaces or tabs, -DOCSTART- lines skipped.

  Every token line must have as many columns as the file's first one: with tag_column=-1 a short line would
  otherwise silently read some other column as the tag.
  """
  path = Path(path)
  sentences: list[Sentence] = []
  words: list[str] = []
  tags: list[str] = []
  width = None
  for line_no, line in enumerate(read_lines(path), start=1):
    columns = line.split()
    if not columns or columns[0] == DOCSTART:
      if words:
        sentences.append({"words": words, "tags": tags})
        words, tags = [], []
      continue
    if width is None:
      width = len(columns)
      for name, index in (("tag_column", tag_column), ("word_column", word_column)):
        if not -width <= index < width:
          raise DataError(f"{path}:{line_no}: {name}={index} is out of range for its {width} columns")
    if len(columns) != width:
      raise DataError(f"{path}:{line_no}: line has {len(columns)} columns but the file's first token line has "
                      f"{width}")
    words.append(columns[word_column])
    tags.append(columns[tag_column])
  if words:
    sentences.append({"words": words, "tags": tags})
  if not sentences:
    raise DataError(f"{path}: no tagged tokens; expected one 'word ... tag' line per token")
  return sentences


def tag_vocab(sentences: Sequence[Sentence]) -> LabelVocab:
  return LabelVocab.from_labels(tag for s in sentences for tag in s["tags"])


def encode_sentences(sentences: Sequence[Sentence], tokenizer: Tokenizer, seq_len: int,
                     vocab: LabelVocab) -> dict[str, np.ndarray]:
  """[CLS] subwords [SEP] padded to seq_len, with labels on each word's first subword.

  Returns inputs, token_types (all 0), segment_ids (1 on the sentence, 0 on padding), labels (0 where
  unweighted), word_ids (-1 on [CLS]/[SEP]/padding) [N, L] int32; label_weights [N, L] float32; num_words [N].
  Subwords past seq_len - 2 are cut; the words that lose their first subword get no prediction, and a warning
  gives the count.
  """
  if seq_len < 3:
    raise DataError(f"seq_len={seq_len} leaves no room for words beside [CLS] and [SEP]")
  n, room = len(sentences), seq_len - 2
  out = {"inputs": np.full((n, seq_len), PAD_ID, np.int32), "token_types": np.zeros((n, seq_len), np.int32),
         "segment_ids": np.zeros((n, seq_len), np.int32), "labels": np.zeros((n, seq_len), np.int32),
         "label_weights": np.zeros((n, seq_len), np.float32), "word_ids": np.full((n, seq_len), -1, np.int32),
         "num_words": np.zeros(n, np.int32)}
  cut_sentences = lost_words = 0
  for i, sentence in enumerate(sentences):
    tokens = encode_words(tokenizer, sentence["words"])
    kept = min(tokens.ids.size, room)
    out["inputs"][i, 0], out["inputs"][i, 1:kept + 1], out["inputs"][i, kept + 1] = CLS_ID, tokens.ids[:kept], SEP_ID
    out["segment_ids"][i, :kept + 2] = 1
    out["word_ids"][i, 1:kept + 1] = tokens.word_index[:kept]
    out["num_words"][i] = len(sentence["words"])
    labelled = tokens.first < kept
    positions = tokens.first[labelled] + 1
    out["labels"][i, positions] = [vocab.id(t) for t, keep in zip(sentence["tags"], labelled) if keep]
    out["label_weights"][i, positions] = 1.0
    if kept < tokens.ids.size:
      cut_sentences += 1
      lost_words += int((~labelled).sum())
  if cut_sentences:
    logging.warning("%d of %d sentences are longer than seq_len=%d tokens; %d words past the cut get no "
                    "prediction (scored as 'O')", cut_sentences, n, seq_len, lost_words)
  return out


def predicted_tags(predictions: np.ndarray, batch: Mapping[str, Any], vocab: LabelVocab,
                   fill: str = "O") -> list[list[str]]:
  """Per-word tag strings from predicted ids [N, L]: each word takes the prediction at its labelled subword;
  words cut by truncation get `fill`, so the lists line up with the gold sentences for entity_scores."""
  predictions = np.asarray(predictions)
  out = []
  for i in range(predictions.shape[0]):
    tags = [fill] * int(batch["num_words"][i])
    for position in np.flatnonzero(np.asarray(batch["label_weights"][i]) > 0):
      tags[int(batch["word_ids"][i, position])] = vocab.label(predictions[i, position])
    out.append(tags)
  return out
