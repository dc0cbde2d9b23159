"""Labelled text for sequence classification and regression: local TSV/JSONL or prepared GLUE, then BERT inputs.

An example is a dict {"text_a": str, "text_b": str (sentence pairs only), "label": str | float | None}: class
names stay strings until a LabelVocab turns them into ids, regression targets are floats, and unlabelled rows
(test sets) carry None. Every problem with a file is a one-line DataError naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import CLS_ID, PAD_ID, SEP_ID, Tokenizer

Example = dict[str, Any]
TASKS = ("classification", "regression")

# TFDS GLUE configs: (first text feature, second text feature or None). STS-B is the one regression task.
GLUE_FIELDS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "mnli_matched": ("premise", "hypothesis"), "mnli_mismatched": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
    "ax": ("premise", "hypothesis"),
}
GLUE_REGRESSION = ("stsb",)


class LabelVocab:
  """Class names <-> ids; the id of a name is its position in `labels`."""

  def __init__(self, labels: Sequence[str]):
    self.labels = tuple(str(label) for label in labels)
    if len(set(self.labels)) != len(self.labels):
      raise DataError(f"label vocabulary has duplicates: {list(self.labels)}")
    self._ids = {label: i for i, label in enumerate(self.labels)}

  @classmethod
  def from_labels(cls, labels: Iterable[str | None]) -> LabelVocab:
    """The distinct labels sorted, numerically when all are integers ("2" < "10"), else as strings.

    Binary F1 scores class id 1 as positive; sorting makes "1" (or "positive" over "negative") that class.
    Pass an explicit order to LabelVocab(...) when sorting would pick the wrong one.
    """
    distinct = {str(label) for label in labels if label is not None}
    if not distinct:
      raise DataError("no labelled examples to build a label vocabulary from; check the label field")
    try:
      return cls(sorted(distinct, key=int))
    except ValueError:
      return cls(sorted(distinct))

  def __len__(self) -> int:
    return len(self.labels)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, LabelVocab) and other.labels == self.labels

  def __repr__(self) -> str:
    return f"LabelVocab({list(self.labels)})"

  def id(self, label: str) -> int:
    try:
      return self._ids[str(label)]
    except KeyError:
      raise DataError(f"label {label!r} is not in the label vocabulary {list(self.labels)} (built from the "
                      f"training split); fix the data or build the vocabulary from all splits") from None

  def label(self, index: int) -> str:
    return self.labels[int(index)]

  def save(self, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps({"labels": list(self.labels)}, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")

  @classmethod
  def load(cls, path: str | os.PathLike) -> LabelVocab:
    return cls(json.loads(Path(path).read_text(encoding="utf-8"))["labels"])


# --- readers ----------------------------------------------------------------------------------------------


def _fields(text_fields: str | Sequence[str]) -> tuple[str, ...]:
  fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
  if len(fields) not in (1, 2):
    raise DataError(f"text_fields={list(fields)} must name one text field, or two for sentence pairs")
  return fields


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise DataError(f"task={task!r} is unknown; use one of {TASKS}")


def read_lines(path: Path) -> list[str]:
  """Lines of a UTF-8 file (a leading BOM, as spreadsheet exports write, is dropped)."""
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror})") from e
  try:
    return raw.decode("utf-8-sig").splitlines()
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start}") from None


def _label(value: Any, task: str, where: str, field: str) -> str | float:
  """A class name (str) or regression target (float) from a file cell or JSON value."""
  if task == "regression":
    try:
      target = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
      target = math.nan
    if not math.isfinite(target):
      raise DataError(f"{where}: label field {field!r} is {value!r}, not a finite number (task='regression')")
    return target
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
    raise DataError(f"{where}: label field {field!r} is {value!r}; a class label must be a non-empty string "
                    f"or an integer")
  return str(value).strip()


def read_tsv(path: str | os.PathLike, text_fields: str | Sequence[str], label_field: str | None = "label",
             task: str = "classification") -> list[Example]:
  """Rows of a tab-separated file with a header line; columns are chosen by header name.

  Quotes are ordinary characters (csv.QUOTE_NONE), as in the GLUE TSV files, so a row is exactly one line.
  """
  _check_task(task)
  path, fields = Path(path), _fields(text_fields)
  lines = read_lines(path)
  rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows or not rows[0]:
    raise DataError(f"{path}:1: missing header line; the first line must name the tab-separated columns")
  header = rows[0]
  wanted = [("text_fields", f) for f in fields] + ([("label_field", label_field)] if label_field else [])
  for setting, name in wanted:
    if name not in header:
      raise DataError(f"{path}: column {name!r} ({setting}) is not in the header; it has {header}")
  column = {name: header.index(name) for _, name in wanted}
  examples = []
  for line_no, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    where = f"{path}:{line_no}"
    if len(row) != len(header):
      raise DataError(f"{where}: row has {len(row)} tab-separated fields but the header has {len(header)}")
    example: Example = {"text_a": row[column[fields[0]]]}
    if len(fields) == 2:
      example["text_b"] = row[column[fields[1]]]
    example["label"] = _label(row[column[label_field]], task, where, label_field) if label_field else None
    examples.append(example)
  return examples


def record_example(record: Any, fields: Sequence[str], label_field: str | None, task: str, where: str) -> Example:
  """An example from one JSON object or dataset record (a JSONL line, a Hugging Face row)."""
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
  for setting, name in [("text_fields", f) for f in fields] + [("label_field", label_field)]:
    if name is not None and name not in record:
      raise DataError(f"{where}: key {name!r} ({setting}) is missing; the object has {sorted(record)}")
  for name in fields:
    if not isinstance(record[name], str):
      raise DataError(f"{where}: text field {name!r} is {type(record[name]).__name__}, not a string")
  example: Example = {"text_a": record[fields[0]]}
  if len(fields) == 2:
    example["text_b"] = record[fields[1]]
  label = record[label_field] if label_field else None
  example["label"] = None if label is None else _label(label, task, where, label_field)
  return example


def read_jsonl(path: str | os.PathLike, text_fields: str | Sequence[str], label_field: str | None = "label",
               task: str = "classification") -> list[Example]:
  """One JSON object per line; blank lines are skipped."""
  _check_task(task)
  path, fields = Path(path), _fields(text_fields)
  examples = []
  for line_no, line in enumerate(read_lines(path), start=1):
    if not line.strip():
      continue
    where = f"{path}:{line_no}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    examples.append(record_example(record, fields, label_field, task, where))
  return examples


def records_examples(records: Iterable[Any], text_fields: str | Sequence[str], label_field: str | None,
                     task: str, name: str) -> list[Example]:
  """Examples from dataset records (any data.source, through lmjax.data.sources.iter_records)."""
  _check_task(task)
  fields = _fields(text_fields)
  return [record_example(r, fields, label_field, task, f"{name} record {i}") for i, r in enumerate(records)]


def read_examples(path: str | os.PathLike, text_fields: str | Sequence[str], label_field: str | None = "label",
                  task: str = "classification") -> list[Example]:
  """read_tsv for .tsv files, read_jsonl for .jsonl/.json files."""
  suffix = Path(path).suffix.lower()
  if suffix == ".tsv":
    return read_tsv(path, text_fields, label_field, task)
  if suffix in (".jsonl", ".json"):
    return read_jsonl(path, text_fields, label_field, task)
  raise DataError(f"{path}: unknown file type {suffix!r}; use a .tsv file with a header or a .jsonl file")


# --- GLUE through TFDS ------------------------------------------------------------------------------------


def _glue_config(name: str) -> str:
  """'glue/mnli' or 'glue/mnli:2.0.0' -> 'mnli'."""
  family, _, config = name.partition("/")
  config = config.split(":")[0]
  if family != "glue" or config not in GLUE_FIELDS:
    raise DataError(f"{name!r} is not a GLUE task; use 'glue/<task>' with task one of {sorted(GLUE_FIELDS)}")
  return config


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def glue_examples(records: Sequence[Mapping[str, Any]], name: str,
                  label_names: Sequence[str] | None) -> list[Example]:
  """Examples from TFDS GLUE records (dicts of bytes text and int or float 'label'; -1 marks test rows).

  Class labels become their TFDS names so that a LabelVocab(label_names) keeps TFDS's ids, in which GLUE's
  positive class (e.g. MRPC 'equivalent') is id 1.
  """
  config = _glue_config(name)
  first, second = GLUE_FIELDS[config]
  examples = []
  for i in range(len(records)):
    record = records[i]
    for field in (first, second, "label"):
      if field is not None and field not in record:
        raise DataError(f"{name} record {i}: feature {field!r} is missing; it has {sorted(record)}")
    example: Example = {"text_a": _text(record[first])}
    if second is not None:
      example["text_b"] = _text(record[second])
    label = record["label"]
    if config in GLUE_REGRESSION:
      example["label"] = float(label) if float(label) >= 0 else None
    elif int(label) < 0:
      example["label"] = None
    else:
      example["label"] = label_names[int(label)] if label_names else str(int(label))
    examples.append(example)
  return examples


def open_glue(name: str, split: str, data_dir: str | os.PathLike) -> tuple[list[Example], LabelVocab | None]:
  """Examples of a GLUE task prepared as array_record under data_dir, and its label vocabulary (None: regression).

  MNLI's evaluation splits are 'validation_matched' and 'validation_mismatched'.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  config = _glue_config(name)
  fix = f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`"
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    # Without TensorFlow TFDS cannot import its GLUE builder, but it reads a prepared copy from data_dir.
    raise DataError(f"{name!r} is not prepared in {data_dir}; {fix} (TFDS's GLUE builder needs TensorFlow to "
                    f"prepare, not to read)") from e
  if not builder.is_prepared():
    raise DataError(f"{name!r} is not prepared in {data_dir}; {fix}")
  if split not in builder.info.splits:
    raise DataError(f"split {split!r} is not in {name}; it has {sorted(builder.info.splits)}")
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise DataError(f"{name!r} in {data_dir} is not in array_record format; {fix}") from e
  label_feature = builder.info.features["label"]
  names = None if config in GLUE_REGRESSION else list(label_feature.names)
  return glue_examples(records, name, names), None if names is None else LabelVocab(names)


# --- model inputs -----------------------------------------------------------------------------------------


def truncate_pair(a: Sequence[int], b: Sequence[int], max_tokens: int) -> tuple[list[int], list[int]]:
  """Drops tokens from the end of the longer side (the second on a tie) until both fit: BERT's rule, which
  keeps the pair balanced instead of cutting the second sentence away."""
  a, b = list(a), list(b)
  while len(a) + len(b) > max_tokens:
    (a if len(a) > len(b) else b).pop()
  return a, b


def encode_pair(tokenizer: Tokenizer, text_a: str, text_b: str | None,
                seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
  """(inputs, token_types, segment_ids, truncated?): [CLS] A [SEP] (B [SEP]) padded to seq_len, token types 0 on
  [CLS] A [SEP] and 1 on B [SEP], segment_ids 1 on the example and 0 on padding (the encoder's padding mask)."""
  specials = 3 if text_b is not None else 2
  if seq_len <= specials:
    raise DataError(f"seq_len={seq_len} leaves no room for text beside {specials} [CLS]/[SEP] tokens")
  a = tokenizer.encode(text_a).tolist()
  b = tokenizer.encode(text_b).tolist() if text_b is not None else []
  ta, tb = truncate_pair(a, b, seq_len - specials)
  ids = [CLS_ID, *ta, SEP_ID] + ([*tb, SEP_ID] if text_b is not None else [])
  types = [0] * (len(ta) + 2) + [1] * (len(ids) - len(ta) - 2)
  inputs = np.full(seq_len, PAD_ID, np.int32)
  token_types = np.zeros(seq_len, np.int32)
  inputs[:len(ids)], token_types[:len(ids)] = ids, types
  segment_ids = (np.arange(seq_len) < len(ids)).astype(np.int32)
  return inputs, token_types, segment_ids, len(ta) + len(tb) < len(a) + len(b)


def encode_examples(examples: Sequence[Example], tokenizer: Tokenizer, seq_len: int,
                    label_vocab: LabelVocab | None) -> dict[str, np.ndarray]:
  """Model inputs for all examples: inputs, token_types, segment_ids [N, L] int32 (as encode_pair), labels [N].

  labels are int32 class ids (-1 for unlabelled rows) given a label_vocab, else float32 regression targets
  (nan for unlabelled rows).
  """
  n = len(examples)
  out = {"inputs": np.zeros((n, seq_len), np.int32), "token_types": np.zeros((n, seq_len), np.int32),
         "segment_ids": np.zeros((n, seq_len), np.int32),
         "labels": np.zeros(n, np.int32 if label_vocab is not None else np.float32)}
  truncated = 0
  for i, example in enumerate(examples):
    inputs, types, segments, cut = encode_pair(tokenizer, example["text_a"], example.get("text_b"), seq_len)
    out["inputs"][i], out["token_types"][i], out["segment_ids"][i] = inputs, types, segments
    truncated += cut
    label = example.get("label")
    if label_vocab is not None:
      out["labels"][i] = -1 if label is None else label_vocab.id(label)
    else:
      out["labels"][i] = math.nan if label is None else float(label)
  if truncated:
    logging.warning("%d of %d examples were truncated to seq_len=%d", truncated, n, seq_len)
  return out
