"""A TFDS builder that turns local text files into array_record documents with a fixed train/validation split.

The builder config name is a hash of everything that determines the output (absolute paths, sizes and mtimes of
the files, and the split settings), so editing a file or a setting prepares a new dataset next to the old one
instead of silently reusing a stale cache.

This module must be imported as `lmjax.data.local_text` (never run as __main__): TFDS registers builder classes by
module and name, and a second copy of the class would be a different builder.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

DOCUMENT_SPLITS = ("file", "paragraph", "line")
INVALID_UTF8 = ("replace", "fail")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


class DataError(ValueError):
  """Bad data settings or input files; the message is one line naming the config field and the fix."""


class NoMatchingFiles(DataError, FileNotFoundError):
  pass


def resolve_paths(paths: str) -> list[Path]:
  """Files named by data.paths (a file, glob, or comma-separated list), sorted, checked before any work."""
  patterns = [p.strip() for p in paths.split(",") if p.strip()]
  if not patterns:
    raise NoMatchingFiles("data.paths is empty; set it to a file, a glob or a comma-separated list of them")
  files: set[Path] = set()
  for pattern in patterns:
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
      raise DataError(f"data.paths entry {pattern!r} is a directory; use a glob such as '{pattern.rstrip('/')}/*.txt'")
    matches = [Path(m).resolve() for m in glob.glob(expanded, recursive=True) if os.path.isfile(m)]
    if not matches:
      raise NoMatchingFiles(f"data.paths entry {pattern!r} matches no file; fix the path or glob in data.paths")
    if not glob.has_magic(expanded) and matches[0].stat().st_size == 0:
      raise DataError(f"data.paths file {matches[0]} is empty; remove it from data.paths or give it text")
    files.update(matches)
  for f in sorted(files):
    if not os.access(f, os.R_OK):
      raise DataError(f"data.paths file {f} is not readable; fix its permissions or remove it from data.paths")
  nonempty = sorted(f for f in files if f.stat().st_size > 0)
  if not nonempty:
    raise DataError(f"data.paths={paths!r}: all {len(files)} matching files are empty; point it at text files")
  return nonempty


# A file is taken for binary (an executable, an archive, UTF-16 text, ...) when it holds a NUL byte, which text
# never does, or when at least this fraction of its characters cannot be decoded as UTF-8. Latin-1 or cp1252 text
# read as UTF-8 stays far below it (a few accented letters per line); random bytes reach about one half.
BINARY_UNDECODABLE_FRACTION = 0.25


def looks_binary(raw: bytes, text: str) -> str | None:
  """Why the bytes (and their UTF-8 decoding with replacement characters) look binary, or None for text."""
  first_nul = raw.find(b"\0")
  if first_nul >= 0:
    return f"{raw.count(bytes(1)):,} NUL bytes, the first at byte offset {first_nul}"
  undecodable = text.count("\ufffd")
  if text and undecodable >= BINARY_UNDECODABLE_FRACTION * len(text):
    return f"{undecodable / len(text):.0%} of its characters are not UTF-8"
  return None


def read_text(path: Path, invalid_utf8: str, allow_binary: bool = False) -> str:
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"data.paths file {path} cannot be read ({e.strerror}); fix it or remove it from data.paths") from e
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    if invalid_utf8 == "fail":
      raise DataError(f"data.invalid_utf8='fail': {path} is not valid UTF-8 at byte offset {e.start}; "
                      f"fix the file or set data.invalid_utf8='replace'") from None
    text = raw.decode("utf-8", errors="replace")
  if not allow_binary and (why := looks_binary(raw, text)) is not None:
    raise DataError(f"data.paths file {path} looks binary, not text ({why}); point data.paths at text files, or "
                    f"set data.allow_binary=True to train on it anyway")
  return text


def split_into_documents(text: str, document_split: str) -> list[str]:
  if document_split == "file":
    return [text] if text.strip() else []
  if document_split == "paragraph":
    parts = _BLANK_LINES.split(text.replace("\r\n", "\n"))
  elif document_split == "line":
    parts = text.splitlines()
  else:
    raise DataError(f"data.document_split={document_split!r} is unknown; use one of {DOCUMENT_SPLITS}")
  return [p.strip() for p in parts if p.strip()]


def split_train_validation(docs: Sequence[str], validation_fraction: float) -> tuple[list[str], list[str]]:
  """The last `validation_fraction` of the documents, in file order, is validation; deterministic, never random.

  With too few documents for that (e.g. one big file), the tail of the text itself is cut off at a line boundary,
  which for a single document is the contiguous 90/10 character split nanoGPT uses.
  """
  num_val = round(len(docs) * validation_fraction)
  if 1 <= num_val < len(docs):
    return list(docs[:-num_val]), list(docs[-num_val:])
  total = sum(len(d) for d in docs)
  cut = int(total * (1 - validation_fraction))
  train, val, start = [], [], 0
  for doc in docs:
    end = start + len(doc)
    if end <= cut:
      train.append(doc)
    elif start >= cut:
      val.append(doc)
    else:
      head, tail = _cut_at_line(doc, cut - start)
      train += [head] if head else []
      val += [tail] if tail else []
    start = end
  return train, val


def _cut_at_line(text: str, at: int) -> tuple[str, str]:
  """Splits at the first line start at or after `at` (else the last one before it, else exactly at `at`)."""
  after = text.find("\n", max(at - 1, 0))
  if 0 <= after < len(text) - 1:
    at = after + 1
  else:
    before = text.rfind("\n", 0, at)
    at = before + 1 if before >= 0 else at
  return text[:at], text[at:]


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  files: tuple[str, ...] = ()
  document_split: str = "paragraph"
  validation_fraction: float = 0.1
  invalid_utf8: str = "replace"
  allow_binary: bool = False


def make_config(files: Sequence[Path], document_split: str, validation_fraction: float,
                invalid_utf8: str, allow_binary: bool = False) -> LocalTextConfig:
  if document_split not in DOCUMENT_SPLITS:
    raise DataError(f"data.document_split={document_split!r} is unknown; use one of {DOCUMENT_SPLITS}")
  if invalid_utf8 not in INVALID_UTF8:
    raise DataError(f"data.invalid_utf8={invalid_utf8!r} is unknown; use one of {INVALID_UTF8}")
  if not 0 < validation_fraction < 1:
    raise DataError(f"data.validation_fraction={validation_fraction!r} must be strictly between 0 and 1")
  stats = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  # allow_binary joins the key only when set, so datasets prepared before the setting existed keep their names.
  key = json.dumps([stats, document_split, float(validation_fraction), invalid_utf8, *(["binary"] * allow_binary)])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return LocalTextConfig(name=f"{document_split}_{digest}", files=tuple(s[0] for s in stats),
                         document_split=document_split, validation_fraction=float(validation_fraction),
                         invalid_utf8=invalid_utf8, allow_binary=bool(allow_binary),
                         description=f"{len(files)} local files, split by {document_split}")


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Local text files as {'text', 'index'} documents; 'index' is the position in file order within the split."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS: list[LocalTextConfig] = []  # configs are made per input set by make_config

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "index": np.int64}),
        disable_shuffling=True)  # keep file order; 'index' records it anyway

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    docs: list[str] = []
    for f in cfg.files:  # read and decode everything first, so bad input fails before any example is written
      docs += split_into_documents(read_text(Path(f), cfg.invalid_utf8, cfg.allow_binary), cfg.document_split)
    if not docs:
      raise DataError(f"data.paths: the {len(cfg.files)} files hold no text with document_split="
                      f"{cfg.document_split!r}; point data.paths at non-blank text")
    train, validation = split_train_validation(docs, cfg.validation_fraction)
    if not train or not validation:
      raise DataError(f"data.validation_fraction={cfg.validation_fraction} leaves an empty split of "
                      f"{len(docs)} documents; use more text or another data.document_split")
    return {"train": self._generate_examples(train), "validation": self._generate_examples(validation)}

  def _generate_examples(self, docs: list[str]):
    for i, doc in enumerate(docs):
      yield i, {"text": doc, "index": i}


def prepare(files: Sequence[Path], data_dir: str | os.PathLike, *, document_split: str = "paragraph",
            validation_fraction: float = 0.1, invalid_utf8: str = "replace", allow_binary: bool = False) -> LocalText:
  """Returns the prepared builder for these inputs, preparing it under data_dir/local_text/ on a cache miss."""
  config = make_config(files, document_split, validation_fraction, invalid_utf8, allow_binary)
  builder = LocalText(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
