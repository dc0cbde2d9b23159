"""Parallel text (source, target pairs) for translation and summarization: readers, splits and model inputs.

Pairs come from a TSV file (one pair per line, `source<TAB>target`), two line-aligned files ('train.de,train.en'),
or a TFDS dataset whose records hold the two sides as features (wmt14_translate/de-en: {'de': b'...', 'en':
b'...'}). Every problem with a file is a one-line DataError naming the file and line.

Model inputs are padded pairs: the source ids followed by <eos>; the decoder reads <bos> y and predicts y <eos>.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmjax.data.labelled import read_lines
from lmjax.data.text_files import DataError
from lmjax.data.sources import text_of
from lmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, Tokenizer

Pair = tuple[str, str]


def read_tsv_pairs(path: str | os.PathLike) -> list[Pair]:
  """One `source<TAB>target` pair per line; blank lines are skipped, anything else malformed is an error."""
  path = Path(path)
  pairs = []
  for line_no, line in enumerate(read_lines(path), start=1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 2:
      raise DataError(f"{path}:{line_no}: expected 'source<TAB>target' (2 tab-separated fields), found "
                      f"{len(fields)}; remove extra tabs or fix the line")
    source, target = (field.strip() for field in fields)
    for side, text in (("source", source), ("target", target)):
      if not text:
        raise DataError(f"{path}:{line_no}: the {side} side is empty; every pair needs text on both sides")
    pairs.append((source, target))
  if not pairs:
    raise DataError(f"{path}: holds no pairs; expected lines of 'source<TAB>target'")
  return pairs


def read_aligned_pairs(source_path: str | os.PathLike, target_path: str | os.PathLike) -> list[Pair]:
  """Line i of the source file translates line i of the target file (Moses-style 'train.de', 'train.en')."""
  source_path, target_path = Path(source_path), Path(target_path)
  sources, targets = read_lines(source_path), read_lines(target_path)
  if len(sources) != len(targets):
    raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; aligned files "
                    f"must have one line per pair")
  pairs = []
  for line_no, (source, target) in enumerate(zip(sources, targets), start=1):
    source, target = source.strip(), target.strip()
    if not source and not target:
      continue
    for path, text in ((source_path, source), (target_path, target)):
      if not text:
        raise DataError(f"{path}:{line_no}: empty line where the other file has text; every pair needs both sides")
    pairs.append((source, target))
  if not pairs:
    raise DataError(f"{source_path}, {target_path}: hold no pairs")
  return pairs


def read_pairs(paths: str) -> list[Pair]:
  """data.paths-style: 'pairs.tsv' (TSV) or 'train.de,train.en' (two aligned files, source first)."""
  parts = [p.strip() for p in paths.split(",") if p.strip()]
  for part in parts:
    if not Path(os.path.expanduser(part)).is_file():
      raise DataError(f"parallel data file {part!r} does not exist; give 'pairs.tsv' or 'source_file,target_file'")
  if len(parts) == 1:
    return read_tsv_pairs(os.path.expanduser(parts[0]))
  if len(parts) == 2:
    return read_aligned_pairs(*(os.path.expanduser(p) for p in parts))
  raise DataError(f"parallel data {paths!r} names {len(parts)} files; give one TSV file or two aligned files "
                  f"'source_file,target_file'")


def _text(value: Any) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def tfds_pairs(records: Sequence[Mapping[str, Any]], source_key: str, target_key: str, name: str = "") -> list[Pair]:
  """Pairs from TFDS records: dicts whose `source_key` and `target_key` features hold bytes or str text.

  A WMT translation record is {'de': b'...', 'en': b'...'}, a summarization one {'article': ..., 'highlights':
  ...}. Records with an empty side are skipped (WMT has a few), since they teach nothing.
  """
  pairs = []
  for i in range(len(records)):
    record = records[i]
    for key, field in ((source_key, "seq2seq.source_lang"), (target_key, "seq2seq.target_lang")):
      if key not in record:
        raise DataError(f"{name or 'TFDS'} record {i}: feature {key!r} ({field}) is missing; it has {sorted(record)}")
    source, target = _text(record[source_key]).strip(), _text(record[target_key]).strip()
    if source and target:
      pairs.append((source, target))
  return pairs


def record_pairs(records: Iterable[Mapping[str, Any]], source_key: str, target_key: str, name: str) -> list[Pair]:
  """Pairs from dataset records (any data.source); a key 'a.b' reads a nested column, as a Hugging Face
  translation dataset's {'translation': {'de': ..., 'en': ...}}. Records with an empty side are skipped."""
  pairs = []
  for i, record in enumerate(records):
    where = f"{name} record {i}"
    source, target = text_of(record, source_key, where).strip(), text_of(record, target_key, where).strip()
    if source and target:
      pairs.append((source, target))
  return pairs


def open_tfds_pairs(name: str, split: str, data_dir: str | os.PathLike, source_key: str,
                    target_key: str) -> list[Pair]:
  """The pairs of a TFDS dataset prepared as array_record under data_dir (read without TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  fix = f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`"
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"data.tfds_name={name!r} is not a known or prepared TFDS dataset in {data_dir}; {fix}") from e
  if not builder.is_prepared():
    raise DataError(f"data.tfds_name={name!r} is not prepared in {data_dir}; {fix}")
  if split not in builder.info.splits:
    raise DataError(f"split {split!r} is not in {name}; it has {sorted(builder.info.splits)}")
  features = builder.info.features
  for key, field in ((source_key, "seq2seq.source_lang"), (target_key, "seq2seq.target_lang")):
    if key not in features:
      raise DataError(f"{field}={key!r} is not a feature of {name}; it has {sorted(features.keys())}")
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise DataError(f"data.tfds_name={name!r} in {data_dir} is not in array_record format; {fix}") from e
  return tfds_pairs(records, source_key, target_key, name)


def hold_out(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
  """(train, validation): a seeded random `fraction` of the pairs (at least one) for validation, both kept in
  their original order, so the split depends only on the data and the seed."""
  n = len(pairs)
  if n < 2:
    raise DataError(f"{n} pair(s) cannot be split into train and validation; give more pairs or "
                    f"seq2seq.eval_paths")
  num_eval = min(n - 1, max(1, round(n * fraction)))
  is_eval = np.zeros(n, bool)
  is_eval[np.random.default_rng([seed, 7]).permutation(n)[:num_eval]] = True
  return [p for p, e in zip(pairs, is_eval) if not e], [p for p, e in zip(pairs, is_eval) if e]


def encode_pairs(pairs: Sequence[Pair], tokenizer: Tokenizer, source_len: int,
                 target_len: int) -> dict[str, np.ndarray]:
  """Padded model inputs for every pair, [N, S] and [N, T] int32:

    inputs             source ids <eos>, cut to S tokens (the <eos> kept)
    input_segment_ids  1 on source tokens, 0 on padding
    decoder_inputs     <bos> target ids, cut to T tokens
    targets            target ids <eos>, cut to T tokens (the last kept token is then not <eos>)
    target_segment_ids 1 where a target is predicted, 0 on padding
  """
  n = len(pairs)
  out: dict[str, np.ndarray] = {"inputs": np.full((n, source_len), PAD_ID, np.int32), "input_segment_ids": np.zeros((n, source_len), np.int32),
         "decoder_inputs": np.full((n, target_len), PAD_ID, np.int32),
         "targets": np.full((n, target_len), PAD_ID, np.int32),
         "target_segment_ids": np.zeros((n, target_len), np.int32)}
  for i, (source, target) in enumerate(pairs):
    src = [*tokenizer.encode(source)[: source_len - 1].tolist(), EOS_ID]
    tgt = tokenizer.encode(target).tolist()
    out["inputs"][i, :len(src)], out["input_segment_ids"][i, :len(src)] = src, 1
    dec_in, dec_out = [BOS_ID, *tgt][:target_len], [*tgt, EOS_ID][:target_len]
    out["decoder_inputs"][i, :len(dec_in)] = dec_in
    out["targets"][i, :len(dec_out)], out["target_segment_ids"][i, :len(dec_out)] = dec_out, 1
  out["input_positions"] = np.where(out["input_segment_ids"] > 0, np.arange(source_len), 0).astype(np.int32)
  out["target_positions"] = np.where(out["target_segment_ids"] > 0, np.arange(target_len), 0).astype(np.int32)
  return out


SOURCE_FIELDS = ("inputs", "input_segment_ids", "input_positions")
TARGET_FIELDS = ("decoder_inputs", "targets", "target_segment_ids", "target_positions")


def pack_rows(source_lengths_N: np.ndarray, target_lengths_N: np.ndarray, order_N: np.ndarray, source_len: int,
              target_len: int) -> list[list[int]]:
  """Pairs (in `order`) filled into rows one after another: a row is closed when the next pair's source or target
  would overflow it. Next-fit keeps each row's pairs consecutive in the order, so the packing is a pure function
  of the order (one per epoch) and cheap to recompute on resume."""
  rows, row, used_s, used_t = [], [], 0, 0
  for i in order_N.tolist():
    s, t = int(source_lengths_N[i]), int(target_lengths_N[i])
    if row and (used_s + s > source_len or used_t + t > target_len):
      rows.append(row)
      row, used_s, used_t = [], 0, 0
    row.append(i)
    used_s, used_t = used_s + s, used_t + t
  if row:
    rows.append(row)
  return rows


def packed_batch(arrays: dict[str, np.ndarray], rows: list[list[int]]) -> dict[str, np.ndarray]:
  """Rows of several pairs each from encode_pairs' padded arrays: the k-th pair of a row gets segment id k + 1 on
  both sides and its own positions from 0, so attention (self and cross) stays within each pair."""
  S, T = arrays["inputs"].shape[1], arrays["targets"].shape[1]
  out = {k: np.zeros((len(rows), S if k in SOURCE_FIELDS else T), np.int32) for k in SOURCE_FIELDS + TARGET_FIELDS}
  for r, row in enumerate(rows):
    at_s = at_t = 0
    for k, i in enumerate(row):
      ns, nt = int((arrays["input_segment_ids"][i] > 0).sum()), int((arrays["target_segment_ids"][i] > 0).sum())
      for key in SOURCE_FIELDS:
        out[key][r, at_s:at_s + ns] = arrays[key][i, :ns]
      for key in TARGET_FIELDS:
        out[key][r, at_t:at_t + nt] = arrays[key][i, :nt]
      out["input_segment_ids"][r, at_s:at_s + ns] = k + 1
      out["target_segment_ids"][r, at_t:at_t + nt] = k + 1
      at_s, at_t = at_s + ns, at_t + nt
  return out
