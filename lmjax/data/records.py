"""Examples as records (JSON objects) from JSONL files or a prepared TFDS dataset: what post-training tasks read.

    records = open_records(files="data/train.jsonl", tfds_name="", split="train", data_dir=data_dir,
                           field="finetune.train_file")

Each `Record` keeps where it came from ('data/train.jsonl:12', 'tfds my_chats/train #5'), so whatever is wrong
with an example is reported in one line naming it. Files are a path, a glob or a comma-separated list; every line
holds one object (blank lines are skipped). A TFDS dataset must be prepared in array_record format under
data_dir; its text features arrive as str, sequences as lists, and a sequence of dicts (a conversation's
messages) as a list of dicts.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lmjax.data.text_files import DataError


@dataclasses.dataclass(frozen=True)
class Record:
  where: str  # the file and line, or the dataset and index, for messages
  value: dict[str, Any]


def resolve_files(spec: str, field: str) -> list[Path]:
  """The files a spec names (a path, glob or comma-separated list), sorted; one line when one matches nothing."""
  patterns = [p.strip() for p in spec.split(",") if p.strip()]
  if not patterns:
    raise DataError(f"config.{field} is empty; give a JSONL file, a glob or a comma-separated list of them")
  files: set[Path] = set()
  for pattern in patterns:
    expanded = os.path.expanduser(pattern)
    matches = [Path(m) for m in glob.glob(expanded, recursive=True) if os.path.isfile(m)]
    if not matches:
      raise DataError(f"config.{field}: {pattern!r} matches no file; fix the path or glob")
    files.update(matches)
  return sorted(files)


def read_jsonl(spec: str, field: str) -> list[Record]:
  """Every object of the JSONL files `spec` names, in file order then line order."""
  records = []
  for path in resolve_files(spec, field):
    try:
      lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
      raise DataError(f"{path} (config.{field}) cannot be read as UTF-8 text ({e})") from None
    for line_no, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
      records.append(Record(where, value))
  if not records:
    raise DataError(f"config.{field}={spec!r} holds no examples (one JSON object per line)")
  return records


def _plain(value: Any) -> Any:
  """A TFDS example value as JSON would hold it: bytes -> str, arrays -> lists, a dict of equal-length sequences
  (a sequence of dicts, as TFDS stores it) -> a list of dicts."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return [_plain(v) for v in value] if value.ndim else _plain(value.item())
  if isinstance(value, dict):
    plain = {k: _plain(v) for k, v in value.items()}
    lengths = {len(v) for v in plain.values() if isinstance(v, list)}
    if plain and len(lengths) == 1 and all(isinstance(v, list) for v in plain.values()):
      return [dict(zip(plain, row)) for row in zip(*plain.values())]
    return plain
  if isinstance(value, np.generic):
    return value.item()
  return value


def read_tfds(name: str, split: str, data_dir: str | os.PathLike, field: str) -> list[Record]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  fix = (f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record` or set "
         f"data.data_dir to where it is prepared")
  try:
    builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"config.{field}={name!r} is not a known or prepared TFDS dataset in {data_dir}; {fix}") from None
  if not builder.is_prepared():
    raise DataError(f"config.{field}={name!r} is not prepared in {data_dir}; {fix}")
  if split.split("[")[0] not in builder.info.splits:
    raise DataError(f"split {split!r} is not in {name}; it has {sorted(builder.info.splits)}")
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError:
    raise DataError(f"config.{field}={name!r} in {data_dir} is not in array_record format; {fix}") from None
  return [Record(f"tfds {name}/{split} #{i}", _plain(dict(source[i]))) for i in range(len(source))]


def open_records(*, files: str, tfds_name: str, split: str, data_dir: str | os.PathLike, field: str,
                 tfds_field: str = "finetune.tfds_name") -> list[Record]:
  """The records of one split: the JSONL `files` (named by config field `field`), or split `split` of the TFDS
  dataset `tfds_name` (config field `tfds_field`) when that is set."""
  if tfds_name:
    return read_tfds(tfds_name, split, data_dir, tfds_field)
  return read_jsonl(files, field)
