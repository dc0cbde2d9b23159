"""BERT pretraining examples: sentence pairs [CLS] A [SEP] B [SEP] with masked tokens to predict.

Text to sentences. Each document (from the same sources as every other task: the embedded corpus, local files or
a TFDS dataset) is cut into sentences by a deterministic rule: at every newline, and after '.', '!' or '?' when
whitespace and then a capital letter or a digit follow ("...the earth. And God said" splits; "3.5 cubits",
"e.g. the" do not). Abbreviations before a capital ("Mr. Smith") are split too: the rule trades those for having
no language-specific lists. Sentences are tokenized one by one and cached as one token stream with sentence and
document offsets (data_dir/sentences/).

Sentences to examples, as in BERT's create_pretraining_data.py. Example i is a pure function of (seed, i):
  * its target length is seq_len minus the special tokens, or with probability mlm.short_seq_prob a uniform
    random length from 2 up, so short inputs are seen too;
  * with probability 1/2, B is the true continuation: an anchor sentence with a successor in its document starts
    a run of whole sentences that fills the target length (at least two sentences), cut at a random sentence
    boundary into A and B. Otherwise B is random: A is drawn the same way from any anchor, and B is a run of
    whole sentences starting at a random sentence of another, uniformly drawn document;
  * the pair is truncated to fit by trimming the longer side, A from its front and B from its back, so a true
    B still starts right where A ends;
  * masking: round(mask_prob * n) of the n text tokens (at least 1; at most mlm.max_predictions when set),
    never [CLS], [SEP], padding or other special ids, chosen uniformly; each is replaced by <mask> with
    probability mask_token_prob, by a uniform random non-special token with probability random_token_prob, and
    kept otherwise; the loss predicts the original token at every chosen position.
With mlm.nsp=False an example is one segment [CLS] A [SEP] of contiguous text from a random sentence.

Training batches are drawn with replacement (independent anchors); a batch is a function of its index alone, so
the grain iterator's state is a counter and a resumed run sees exactly the batches it would have seen. Eval
examples come from the eval split with their own stream of indices: the same examples and masks at every eval.

A batch is a dict of arrays, row b an example (L = data.seq_len, P = predictions per example):
  inputs [B, L] int32       token ids after masking, PAD_ID after the example
  token_types [B, L] int32  0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
  segment_ids [B, L] int32  1 on the example, 0 on padding (attention masks padding out)
  mlm_positions [B, P] int32, mlm_targets [B, P] int32, mlm_weights [B, P] float32 (0 for unused slots)
  nsp_labels [B] int32      0: B follows A; 1: B is random (BERT's convention)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grain
import ml_collections
import numpy as np

from lmjax.data import pipeline, sources
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, Tokenizer

Batch = dict[str, np.ndarray]
_FOREVER = 2**62
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
_CACHE_VERSION = "v1"  # bump when the sentence rule changes, so old caches are not reused

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
  """Sentences of `text` by the rule in the module docstring, stripped, empty ones dropped."""
  return [s.strip() for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]


@dataclasses.dataclass(frozen=True)
class SentenceSplit:
  """Sentence k is tokens[sentence_starts[k] : sentence_starts[k+1]]; document d holds sentences
  doc_starts[d] .. doc_starts[d+1] - 1. No special tokens are stored."""
  tokens: np.ndarray  # [N] uint16 or int32
  sentence_starts: np.ndarray  # [S + 1] int64
  doc_starts: np.ndarray  # [D + 1] int64, indices into sentences
  name: str = ""

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def num_sentences(self) -> int:
    return int(self.sentence_starts.shape[0]) - 1

  @property
  def num_documents(self) -> int:
    return int(self.doc_starts.shape[0]) - 1

  def doc_of(self, sentence: int) -> int:
    return int(np.searchsorted(self.doc_starts, sentence, side="right")) - 1

  @functools.cached_property
  def pairable(self) -> np.ndarray:
    """Sentences followed by another sentence of the same document: the anchors of true next-sentence pairs."""
    last_of_doc = self.doc_starts[1:] - 1
    keep = np.ones(self.num_sentences, bool)
    keep[last_of_doc] = False
    return np.flatnonzero(keep)


class _EncodeSentences:
  """Picklable (worker processes): a chunk of documents -> for each document with text, its sentences' tokens
  concatenated and each sentence's length (documents without a sentence are left out)."""

  def __init__(self, tokenizer: Tokenizer, dtype: np.dtype):
    self.tokenizer, self.dtype = tokenizer, dtype

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [N], sentence lengths [S], sentences per document [D]), empty sentences dropped."""
    per_doc = [split_sentences(text) for text in texts]
    ids, lengths = self.tokenizer.encode_batch([s for doc in per_doc for s in doc])
    counts = np.fromiter(map(len, per_doc), np.int64, len(per_doc))
    doc_of = np.repeat(np.arange(len(per_doc)), counts)
    keep = lengths > 0
    sentences_per_doc = np.bincount(doc_of[keep], minlength=len(per_doc))
    return ids.astype(self.dtype), lengths[keep], sentences_per_doc[sentences_per_doc > 0]


def _write_cache(directory: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 dtype: np.dtype) -> None:
  with pipeline.atomic_directory(directory) as tmp:
    lengths, doc_sizes, total = [], [], 0
    with open(tmp / "tokens.bin", "wb") as raw:
      for ids, sentence_lengths, sentences_per_doc in chunks:
        raw.write(ids.tobytes())
        total += ids.size
        lengths.append(sentence_lengths)
        doc_sizes.append(sentences_per_doc)
    if not doc_sizes or not sum(d.size for d in doc_sizes):
      raise DataError(f"{directory.name}: the split has no sentences; check data.paths / data.tfds_name / "
                      f"data.hf_name and the splits")
    pipeline.write_token_stream(tmp / "tokens.bin", tmp / "tokens.npy", dtype, total)
    np.save(tmp / "sentence_starts.npy", np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64))
    np.save(tmp / "doc_starts.npy", np.concatenate([[0], np.cumsum(np.concatenate(doc_sizes))]).astype(np.int64))


def load_sentences(directory: str | os.PathLike) -> SentenceSplit:
  directory = Path(directory)
  load = lambda name: np.asarray(np.load(directory / name, mmap_mode="r"))
  return SentenceSplit(load("tokens.npy"), load("sentence_starts.npy"), load("doc_starts.npy"), directory.name)


def tokenize_sentences(data_cfg: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer,
                       data_dir: str | os.PathLike) -> SentenceSplit:
  """Splits and tokenizes every document of `split` once (streamed, in data.num_workers processes); later calls
  load the cache."""
  source = sources.open_split(data_cfg, split, data_dir)
  name = f"{source.fingerprint}-{tokenizer.kind}-{tokenizer.fingerprint()}-{_CACHE_VERSION}"
  directory = Path(data_dir) / "sentences" / name
  if not (directory / "tokens.npy").exists():
    dtype = pipeline._token_dtype(tokenizer.vocab_size)  # pylint: disable=protected-access
    chunks = pipeline.encoded_chunks(source.texts(data_cfg.text_key), _EncodeSentences(tokenizer, dtype),
                                     data_cfg.num_workers)
    _write_cache(directory, chunks, dtype)
  return load_sentences(directory)


@dataclasses.dataclass(frozen=True)
class MlmSettings:
  """How examples are built; from config.data.seq_len and config.mlm (see lmjax/tasks/mlm.py)."""
  seq_len: int
  vocab_size: int
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  max_predictions: int = 0
  nsp: bool = True
  short_seq_prob: float = 0.1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int) -> "MlmSettings":
    k = config.mlm
    return cls(config.data.seq_len, vocab_size, k.mask_prob, k.mask_token_prob, k.random_token_prob,
               k.max_predictions, k.nsp, k.short_seq_prob)

  @property
  def max_tokens(self) -> int:
    """Text tokens an example holds: the length minus [CLS] and one [SEP] per segment."""
    return self.seq_len - (3 if self.nsp else 2)

  def num_to_mask(self, eligible: int) -> int:
    if eligible <= 0:
      return 0
    count = max(1, int(eligible * self.mask_prob + 0.5))
    return min(count, self.max_predictions) if self.max_predictions else count

  @property
  def num_predictions(self) -> int:
    """P, the prediction slots of every example: enough for the fullest one."""
    return max(1, self.num_to_mask(self.max_tokens))


@dataclasses.dataclass(frozen=True)
class Pair:
  """Where an example's text came from: token offsets [start, end) in the split's stream, and documents."""
  a: tuple[int, int]
  b: tuple[int, int]  # empty (start == end) without NSP
  a_doc: int
  b_doc: int
  is_random: bool


def _run_end(split: SentenceSplit, first: int, last: int, tokens: int) -> int:
  """The last sentence of the shortest run first.. (up to `last`) holding at least `tokens` tokens."""
  starts = split.sentence_starts
  end = int(np.searchsorted(starts, starts[first] + tokens, side="left")) - 1
  return min(max(end, first), last)


def _truncate(a_len: int, b_len: int, max_tokens: int) -> tuple[int, int]:
  """Trims the longer side one token at a time (B on ties) until the pair fits; in closed form."""
  excess = a_len + b_len - max_tokens
  if excess <= 0:
    return a_len, b_len
  first = min(excess, abs(a_len - b_len))
  if a_len > b_len:
    a_len -= first
  else:
    b_len -= first
  rest = excess - first
  return a_len - rest // 2, b_len - (rest + 1) // 2


def choose_pair(split: SentenceSplit, s: MlmSettings, rng: np.random.Generator) -> Pair:
  target = s.max_tokens
  if s.short_seq_prob and rng.random() < s.short_seq_prob:
    target = int(rng.integers(2, s.max_tokens + 1))
  starts, doc_starts = split.sentence_starts, split.doc_starts
  if not s.nsp:
    anchor = int(rng.integers(split.num_sentences))
    doc = split.doc_of(anchor)
    a0 = int(starts[anchor])
    a1 = min(a0 + target, int(starts[doc_starts[doc + 1]]))
    return Pair((a0, a1), (a1, a1), doc, doc, False)

  is_random = bool(rng.random() < 0.5)
  if is_random:
    anchor = int(rng.integers(split.num_sentences))
  else:
    pairable = split.pairable
    anchor = int(pairable[rng.integers(pairable.shape[0])])
  doc = split.doc_of(anchor)
  last = int(doc_starts[doc + 1]) - 1
  end = _run_end(split, anchor, last, target)
  if not is_random:
    end = max(end, anchor + 1)  # a true pair needs a sentence on each side
  run = end - anchor + 1
  a_end = anchor + (int(rng.integers(1, run)) if run >= 2 else 1)  # A = sentences anchor .. a_end - 1
  a = (int(starts[anchor]), int(starts[a_end]))
  if is_random:
    other = int(rng.integers(split.num_documents - 1))
    other += other >= doc
    first, other_last = int(doc_starts[other]), int(doc_starts[other + 1]) - 1
    b_first = int(rng.integers(first, other_last + 1))
    b_end = _run_end(split, b_first, other_last, max(1, target - (a[1] - a[0])))
    b, b_doc = (int(starts[b_first]), int(starts[b_end + 1])), other
  else:
    b, b_doc = (int(starts[a_end]), int(starts[end + 1])), doc
  a_len, b_len = _truncate(a[1] - a[0], b[1] - b[0], s.max_tokens)
  return Pair((a[1] - a_len, a[1]), (b[0], b[0] + b_len), doc, b_doc, is_random)


def make_example(split: SentenceSplit, s: MlmSettings, seed: int, index: int,
                 stream: int = _TRAIN_STREAM) -> tuple[dict[str, np.ndarray], Pair]:
  """Example `index` of a stream: a row of the batch (keys as in the module docstring, without the batch
  dimension) and where its text came from."""
  rng = np.random.default_rng([seed % 2**32, stream, index])
  pair = choose_pair(split, s, rng)
  a_ids = split.tokens[pair.a[0]:pair.a[1]].astype(np.int32)
  b_ids = split.tokens[pair.b[0]:pair.b[1]].astype(np.int32)
  L, P = s.seq_len, s.num_predictions
  inputs = np.full(L, PAD_ID, np.int32)
  token_types = np.zeros(L, np.int32)
  inputs[0] = CLS_ID
  inputs[1:1 + a_ids.size] = a_ids
  inputs[1 + a_ids.size] = SEP_ID
  length = 2 + a_ids.size
  if s.nsp:
    inputs[length:length + b_ids.size] = b_ids
    inputs[length + b_ids.size] = SEP_ID
    token_types[length:length + b_ids.size + 1] = 1
    length += b_ids.size + 1
  segment_ids = (np.arange(L) < length).astype(np.int32)

  # Eligible: text tokens only (never [CLS], [SEP], padding, nor an <unk> in the text).
  eligible = np.flatnonzero(inputs >= NUM_SPECIAL)
  chosen = np.sort(rng.choice(eligible, size=s.num_to_mask(eligible.size), replace=False))
  k = chosen.size
  draw, random_ids = rng.random(k), rng.integers(NUM_SPECIAL, s.vocab_size, size=k)
  targets = inputs[chosen]
  use_mask = draw < s.mask_token_prob
  use_random = ~use_mask & (draw < s.mask_token_prob + s.random_token_prob)
  inputs[chosen] = np.where(use_mask, MASK_ID, np.where(use_random, random_ids, targets))

  positions, target_ids, weights = np.zeros(P, np.int32), np.zeros(P, np.int32), np.zeros(P, np.float32)
  positions[:k], target_ids[:k], weights[:k] = chosen, targets, 1.0
  row = {"inputs": inputs, "token_types": token_types, "segment_ids": segment_ids, "mlm_positions": positions,
         "mlm_targets": target_ids, "mlm_weights": weights, "nsp_labels": np.int32(pair.is_random)}
  return row, pair


def batch_shapes(s: MlmSettings, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """(shape, dtype) of every key of a batch of `batch_size` examples."""
  L, P = s.seq_len, s.num_predictions
  return {"inputs": ((batch_size, L), np.int32), "token_types": ((batch_size, L), np.int32),
          "segment_ids": ((batch_size, L), np.int32), "mlm_positions": ((batch_size, P), np.int32),
          "mlm_targets": ((batch_size, P), np.int32), "mlm_weights": ((batch_size, P), np.float32),
          "nsp_labels": ((batch_size,), np.int32)}


def example_batch(split: SentenceSplit, s: MlmSettings, seed: int, indices: np.ndarray,
                  stream: int = _TRAIN_STREAM) -> Batch:
  rows = [make_example(split, s, seed, int(i), stream)[0] for i in indices]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def check_split(split: SentenceSplit, s: MlmSettings) -> None:
  if s.nsp and split.num_documents < 2:
    raise DataError(f"split {split.name} has {split.num_documents} document; next-sentence prediction draws random "
                    f"B segments from other documents: use a data.document_split that gives several documents "
                    f"('paragraph' or 'line'), or set mlm.nsp=False")
  if s.nsp and split.pairable.size == 0:
    raise DataError(f"split {split.name} has no document of two or more sentences, so no true next-sentence pair; "
                    f"use longer documents (data.document_split='file' or 'paragraph') or set mlm.nsp=False")


class _TrainBatch:
  """Global batch k holds examples [k*G, (k+1)*G); this process computes only its rows."""

  def __init__(self, split: SentenceSplit, s: MlmSettings, global_batch_size: int, seed: int,
               process_index: int, process_count: int):
    self.split, self.settings, self.seed, self.global_batch_size = split, s, seed, global_batch_size
    local = global_batch_size // process_count
    self.local_offsets = process_index * local + np.arange(local, dtype=np.int64)

  def __call__(self, batch_index: int) -> Batch:
    indices = batch_index * self.global_batch_size + self.local_offsets
    return example_batch(self.split, self.settings, self.seed, indices)


def make_train_dataset(split: SentenceSplit, s: MlmSettings, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Endless batches of global_batch_size / process_count examples; iter() of it is a checkpointable iterator."""
  pipeline._check_sharding(global_batch_size, process_index, process_count, "train.batch_size")  # pylint: disable=protected-access
  check_split(split, s)
  batch_fn = _TrainBatch(split, s, global_batch_size, seed, process_index, process_count)
  read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.MapDataset.range(_FOREVER).map(batch_fn).to_iter_dataset(read)


def make_eval_batches(split: SentenceSplit, s: MlmSettings, batch_size: int, num_batches: int, seed: int,
                      process_index: int = 0, process_count: int = 1) -> list[Batch]:
  """`num_batches` fixed batches (same examples and masks every time); batch_size is global, like training's."""
  local = pipeline._check_sharding(batch_size, process_index, process_count, "train.eval_batch_size")  # pylint: disable=protected-access
  check_split(split, s)
  offsets = process_index * local + np.arange(local, dtype=np.int64)
  return [example_batch(split, s, seed, k * batch_size + offsets, _EVAL_STREAM) for k in range(num_batches)]
