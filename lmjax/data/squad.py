"""Extractive QA on SQuAD v1.1/v2.0 JSON: windows over long contexts, gold token spans, and logits -> answer text.

The Tokenizer interface gives no character offsets, so a context is split into words (runs of letters and
digits, and single punctuation marks; lmjax.data.words) and tokenized word by word: every subword maps to its
whole word's character span. Answers are therefore recovered at word granularity, which is exact whenever an
answer starts and ends on word or punctuation boundaries (nearly all SQuAD answers) and otherwise widens to the
enclosing words. This holds for char, byte and SentencePiece tokenizers alike.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import CLS_ID, PAD_ID, SEP_ID, Tokenizer
from lmjax.data.words import WordTokens, encode_words, split_words

# {"id", "title", "question", "context", "answers": [{"text", "answer_start"}], "is_impossible"}
Example = dict[str, Any]


def _require(value: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
  if not isinstance(value, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
  if key not in value:
    raise DataError(f"{where}: missing {key!r}")
  if not isinstance(value[key], kind) or isinstance(value[key], bool):
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise DataError(f"{where}: {key!r} is {type(value[key]).__name__}, expected {names}")
  return value[key]


def read_squad(path: str | os.PathLike) -> list[Example]:
  """Questions of a SQuAD-format file (data -> paragraphs -> qas), one example each, in file order.

  An answer whose text is not at its answer_start in the context is kept (the span is answer_start plus the
  text's length) and counted in a warning; v2.0 unanswerable questions have is_impossible and no answers.
  """
  path = Path(path)
  try:
    dataset = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path}: not a readable SQuAD JSON file ({e})") from None
  examples, mismatched = [], 0
  for a, article in enumerate(_require(dataset, "data", list, str(path))):
    for p, paragraph in enumerate(_require(article, "paragraphs", list, f"{path}: data[{a}]")):
      where = f"{path}: data[{a}].paragraphs[{p}]"
      context = _require(paragraph, "context", str, where)
      for q, qa in enumerate(_require(paragraph, "qas", list, where)):
        qa_where = f"{where}.qas[{q}]"
        qid = str(_require(qa, "id", (str, int), qa_where))
        qa_where += f" (id {qid})"
        impossible = bool(qa.get("is_impossible", False))
        answers = []
        for n, answer in enumerate(_require(qa, "answers", list, qa_where)):
          text = _require(answer, "text", str, f"{qa_where}.answers[{n}]")
          start = _require(answer, "answer_start", int, f"{qa_where}.answers[{n}]")
          if not 0 <= start <= len(context) - len(text):
            raise DataError(f"{qa_where}.answers[{n}]: answer_start={start} is outside the context "
                            f"({len(context)} characters)")
          mismatched += context[start:start + len(text)] != text
          answers.append({"text": text, "answer_start": start})
        if not answers and not impossible:
          raise DataError(f"{qa_where}: no answers and not is_impossible")
        examples.append({"id": qid, "title": str(article.get("title", "")),
                         "question": _require(qa, "question", str, qa_where), "context": context,
                         "answers": [] if impossible else answers, "is_impossible": impossible})
  if mismatched:
    logging.warning("%s: %d answers differ from the context text at their answer_start", path, mismatched)
  return examples


def gold_answers(examples: Sequence[Example]) -> dict[str, list[str]]:
  """Question id -> gold answer texts, for lmjax.finetune_metrics.squad_scores."""
  return {e["id"]: [a["text"] for a in e["answers"]] for e in examples}


class _Context:
  """A context's words (character spans) and their subword tokens."""

  def __init__(self, tokenizer: Tokenizer, context: str):
    self.spans = np.asarray(split_words(context), np.int64).reshape(-1, 2)
    self._starts, self._ends = self.spans[:, 0].tolist(), self.spans[:, 1].tolist()
    # One space where the text has any whitespace: word-level offsets make the exact whitespace irrelevant.
    spaces = ["" if i == 0 or self.spans[i - 1, 1] == self.spans[i, 0] else " " for i in range(len(self.spans))]
    self.tokens: WordTokens = encode_words(tokenizer, [context[s:e] for s, e in self.spans], spaces)

  def token_span(self, char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last token of the words overlapping [char_start, char_end), or None if no word does."""
    first_word = bisect.bisect_right(self._ends, char_start)
    last_word = bisect.bisect_left(self._starts, char_end) - 1
    if first_word > last_word:
      return None
    return int(self.tokens.first[first_word]), int(self.tokens.last[last_word])


def _windows(num_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
  """(start, length) of windows of at most `room` tokens, each `doc_stride` after the last, covering all."""
  windows, start = [], 0
  while True:
    length = min(num_tokens - start, room)
    windows.append((start, length))
    if start + length >= num_tokens:
      return windows
    start += min(length, doc_stride)


def make_features(examples: Sequence[Example], tokenizer: Tokenizer, max_seq_len: int = 384,
                  doc_stride: int = 128, max_query_len: int = 64) -> dict[str, np.ndarray]:
  """[CLS] question [SEP] context-window [SEP] features, several per example when the context is long.

  Returns [F, L] int32 inputs, token_types (1 on the window and its [SEP]), segment_ids (1 on the feature, 0 on
  padding); start_positions and end_positions [F] (of the first answer; 0, i.e. [CLS], when it is not wholly
  inside the window or there is none); offsets [F, L, 2], the character span of each context token's word (-1
  elsewhere); word_ids [F, L] (-1 outside the context); max_context [F, L], true where this window gives the
  token the most context on both sides among all windows (BERT's rule, optional in best_answers);
  example_index [F].
  """
  if doc_stride < 1:
    raise DataError(f"doc_stride={doc_stride} must be at least 1")
  rows: dict[str, list[np.ndarray]] = {k: [] for k in (
      "inputs", "token_types", "segment_ids", "offsets", "word_ids", "max_context")}
  starts, ends, example_index = [], [], []
  contexts: dict[str, _Context] = {}
  for i, example in enumerate(examples):
    context = example["context"]
    if context not in contexts:
      contexts = {context: _Context(tokenizer, context)}  # questions of one paragraph come together
    ctx = contexts[context]
    question = tokenizer.encode(example["question"])[:max_query_len].tolist()
    room = max_seq_len - len(question) - 3
    if room < 1:
      raise DataError(f"max_seq_len={max_seq_len} leaves no room for context after a {len(question)}-token "
                      f"question; raise max_seq_len or lower max_query_len")
    gold = None
    if example["answers"] and not example["is_impossible"]:
      answer = example["answers"][0]
      gold = ctx.token_span(answer["answer_start"], answer["answer_start"] + len(answer["text"]))
    doc = ctx.tokens
    windows = _windows(doc.ids.size, room, doc_stride)
    # Score of each token in each window: min(left, right context) + 0.01 * window length; best window wins.
    best_score = np.full(doc.ids.size, -np.inf)
    best_window = np.zeros(doc.ids.size, np.int64)
    for w, (start, length) in enumerate(windows):
      position = np.arange(start, start + length)
      score = np.minimum(position - start, start + length - 1 - position) + 0.01 * length
      better = score > best_score[position]
      best_score[position[better]], best_window[position[better]] = score[better], w
    offset = len(question) + 2
    for w, (start, length) in enumerate(windows):
      ids = [CLS_ID, *question, SEP_ID, *doc.ids[start:start + length].tolist(), SEP_ID]
      inputs = np.full(max_seq_len, PAD_ID, np.int32)
      inputs[:len(ids)] = ids
      types = np.zeros(max_seq_len, np.int32)
      types[offset:len(ids)] = 1
      word_ids = np.full(max_seq_len, -1, np.int32)
      word_ids[offset:offset + length] = doc.word_index[start:start + length]
      offsets = np.full((max_seq_len, 2), -1, np.int32)
      offsets[offset:offset + length] = ctx.spans[doc.word_index[start:start + length]]
      max_context = np.zeros(max_seq_len, bool)
      max_context[offset:offset + length] = best_window[start:start + length] == w
      inside = gold is not None and start <= gold[0] and gold[1] < start + length
      starts.append(gold[0] - start + offset if inside else 0)
      ends.append(gold[1] - start + offset if inside else 0)
      example_index.append(i)
      segment_ids = (np.arange(max_seq_len) < len(ids)).astype(np.int32)
      for key, value in (("inputs", inputs), ("token_types", types), ("segment_ids", segment_ids),
                         ("offsets", offsets), ("word_ids", word_ids), ("max_context", max_context)):
        rows[key].append(value)
  out = {k: np.stack(v) if v else np.zeros((0, max_seq_len), np.int32) for k, v in rows.items()}
  out.update(start_positions=np.asarray(starts, np.int32), end_positions=np.asarray(ends, np.int32),
             example_index=np.asarray(example_index, np.int32))
  return out


def best_answers(examples: Sequence[Example], features: dict[str, np.ndarray], start_logits: np.ndarray,
                 end_logits: np.ndarray, max_answer_words: int = 30, n_best: int = 20,
                 null_threshold: float | None = None, require_max_context: bool = False) -> dict[str, str]:
  """Question id -> answer text: the span with the highest start + end logit over all windows of a question.

  A span is valid when it lies in the context, end >= start and it covers at most max_answer_words words
  (counted in words, so the limit means the same for every tokenizer). Only the n_best highest start and end
  logits of each window are paired, as in BERT. require_max_context adds BERT's rule that a span starts only
  where its window has max_context; it is off by default (as in Hugging Face's run_qa) because with char or
  byte tokens an answer is long, and the window that gives its first token the most context may cut off its
  end, leaving no window where the whole answer is allowed. With null_threshold set (SQuAD v2.0), the answer
  is "" when the [CLS] score (the lowest over windows) beats the best span by more than it.
  """
  start_logits, end_logits = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
  best: dict[int, tuple[float, int, int]] = {}  # example -> (score, start char, end char)
  null: dict[int, float] = {}
  for f in range(start_logits.shape[0]):
    i = int(features["example_index"][f])
    word_ids, offsets = features["word_ids"][f], features["offsets"][f]
    null[i] = min(null.get(i, np.inf), start_logits[f, 0] + end_logits[f, 0])
    in_context = word_ids >= 0
    start_ok = (in_context & features["max_context"][f].astype(bool)) if require_max_context else in_context
    start_candidates = [s for s in np.argsort(-start_logits[f], kind="stable")[:n_best] if start_ok[s]]
    end_candidates = [e for e in np.argsort(-end_logits[f], kind="stable")[:n_best] if in_context[e]]
    for s in start_candidates:
      for e in end_candidates:
        if e < s or word_ids[e] - word_ids[s] + 1 > max_answer_words:
          continue
        score = start_logits[f, s] + end_logits[f, e]
        if i not in best or score > best[i][0]:
          best[i] = (score, int(offsets[s, 0]), int(offsets[e, 1]))
  answers = {}
  for i, example in enumerate(examples):
    if i not in best and i not in null:
      continue  # no window of this question was scored
    if i not in best or (null_threshold is not None and null[i] - best[i][0] > null_threshold):
      answers[example["id"]] = ""
    else:
      answers[example["id"]] = example["context"][best[i][1]:best[i][2]]
  return answers
