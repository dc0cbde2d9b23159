"""A TFDS builder that turns local text files into array_record documents with a fixed train/validation split,
and the streamed reading of the same files that training uses (`LocalCorpus`). How a file is read and cut into
documents is lmjax/data/text_files.py.

The builder config name is a hash of everything that determines the output (absolute paths, sizes and mtimes of
the files, and the split settings), so editing a file or a setting prepares a new dataset next to the old one
instead of silently reusing a stale cache.

This module must be imported as `lmjax.data.local_text` (never run as __main__): TFDS registers builder classes by
module and name, and a second copy of the class would be a different builder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from lmjax.data.text_files import (DOCUMENT_SPLITS, INVALID_UTF8, DataError, iter_file_documents, read_text,
                                    separator_pattern, split_into_documents)

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
  document_separator: str = ""
  allow_binary: bool = False


def make_config(files: Sequence[Path], document_split: str, validation_fraction: float,
                invalid_utf8: str, document_separator: str = "", allow_binary: bool = False) -> LocalTextConfig:
  if document_split not in DOCUMENT_SPLITS:
    raise DataError(f"data.document_split={document_split!r} is unknown; use one of {DOCUMENT_SPLITS}")
  if invalid_utf8 not in INVALID_UTF8:
    raise DataError(f"data.invalid_utf8={invalid_utf8!r} is unknown; use one of {INVALID_UTF8}")
  if not 0 < validation_fraction < 1:
    raise DataError(f"data.validation_fraction={validation_fraction!r} must be strictly between 0 and 1")
  stats = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  separator = [document_separator] if document_split in ("marker", "regex") else []  # names stay as they were
  # allow_binary joins the key only when set, so datasets prepared before the setting existed keep their names.
  key = json.dumps([stats, document_split, float(validation_fraction), invalid_utf8, *separator,
                    *(["binary"] * bool(allow_binary))])
  separator_pattern(document_split, document_separator)  # a bad separator fails here, before any work
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return LocalTextConfig(name=f"{document_split}_{digest}", files=tuple(s[0] for s in stats),
                         document_split=document_split, validation_fraction=float(validation_fraction),
                         invalid_utf8=invalid_utf8, document_separator="".join(separator),
                         allow_binary=bool(allow_binary),
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
      docs += split_into_documents(read_text(Path(f), cfg.invalid_utf8, cfg.allow_binary), cfg.document_split,
                                   cfg.document_separator)
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

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... Subsequent calls will reuse this data."
  # in bold, outside logging, for every builder: nothing is downloaded here and the sizes are never known, so keep
  # both out of the console (they stay in the debug log, --verbosity=1).
  def _log_download_bytes(self) -> None:
    logging.debug("Preparing %s/%s from %d local files in %s", self.name, self.builder_config.name,
                  len(self.builder_config.files), self.data_dir)

  def _log_download_done(self) -> None:
    logging.debug("Prepared %s/%s in %s", self.name, self.builder_config.name, self.data_dir)


def prepare(files: Sequence[Path], data_dir: str | os.PathLike, *, document_split: str = "paragraph",
            validation_fraction: float = 0.1, invalid_utf8: str = "replace", document_separator: str = "",
            allow_binary: bool = False) -> LocalText:
  """Returns the prepared builder for these inputs, preparing it under data_dir/local_text/ on a cache miss.

  Training reads local text streamed (`LocalCorpus`); this builder serves whoever wants the documents as a TFDS
  dataset (array_record, random access)."""
  config = make_config(files, document_split, validation_fraction, invalid_utf8, document_separator, allow_binary)
  builder = LocalText(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


# --- streamed reading: what training uses ---------------------------------------------------------------------------

INDEX_FILE = "index.json"


@dataclasses.dataclass(frozen=True)
class LocalCorpus:
  """Local text files read as a stream of documents, split into train and validation as the builder splits them.

  The split needs the number of documents, so the first use counts them in one streamed pass and keeps the counts
  in data_dir/local_text/<config name>/index.json; nothing else is written, and no file is ever read whole
  (except with document_split='file', where a file is one document).
  """
  config: LocalTextConfig
  data_dir: Path

  @classmethod
  def of(cls, files: Sequence[Path], data_dir: str | os.PathLike, *, document_split: str = "paragraph",
         validation_fraction: float = 0.1, invalid_utf8: str = "replace",
         document_separator: str = "", allow_binary: bool = False) -> "LocalCorpus":
    return cls(make_config(files, document_split, validation_fraction, invalid_utf8, document_separator,
                           allow_binary), Path(data_dir))

  @property
  def name(self) -> str:
    return self.config.name

  def documents(self) -> Iterator[str]:
    """Every document of every file, in file order."""
    c = self.config
    for f in c.files:
      yield from iter_file_documents(Path(f), c.document_split, c.document_separator, c.invalid_utf8,
                                     allow_binary=c.allow_binary)

  @property
  def index_path(self) -> Path:
    return self.data_dir / "local_text" / self.name / INDEX_FILE

  def index(self) -> dict[str, int]:
    """{'documents', 'chars', 'train', 'validation'}: counted once, then read from the index file."""
    try:
      return json.loads(self.index_path.read_text())
    except (OSError, ValueError):
      pass
    num_docs = num_chars = 0
    for doc in self.documents():
      num_docs += 1
      num_chars += len(doc)
    index = self.record_index(num_docs, num_chars)
    if index is None:  # too few documents: the text is cut by characters
      index = {"documents": num_docs, "chars": num_chars, "train": 0, "validation": 0}
      for split, _ in _cut_by_chars(self.documents(), num_chars, self.config.validation_fraction):
        index[split] += 1
      self._write_index(index)
    return index

  def record_index(self, num_docs: int, num_chars: int) -> dict[str, int] | None:
    """Writes the index of a corpus of these counts when it splits by documents; None when it is cut by
    characters instead (then the split sizes need another pass)."""
    c = self.config
    if not num_docs:
      raise DataError(f"data.paths: the {len(c.files)} files hold no text with document_split="
                      f"{c.document_split!r}; point data.paths at non-blank text")
    if not _by_documents(num_docs, c.validation_fraction):
      return None
    validation = round(num_docs * c.validation_fraction)
    index = {"documents": num_docs, "chars": num_chars, "train": num_docs - validation, "validation": validation}
    self._write_index(index)
    return index

  def _write_index(self, index: dict[str, int]) -> None:
    if not index["train"] or not index["validation"]:
      raise DataError(f"data.validation_fraction={self.config.validation_fraction} leaves an empty split of "
                      f"{index['documents']} documents; use more text or another data.document_split")
    path = self.index_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{INDEX_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(index) + "\n")
    os.replace(tmp, path)

  def split(self, split: str) -> Iterator[str]:
    """The documents of 'train' or 'validation', in file order (as split_train_validation splits them)."""
    index = self.index()
    if _by_documents(index["documents"], self.config.validation_fraction):
      num_train = index["train"]
      for i, doc in enumerate(self.documents()):
        if (i < num_train) == (split == "train"):
          yield doc
      return
    for which, doc in _cut_by_chars(self.documents(), index["chars"], self.config.validation_fraction):
      if which == split:
        yield doc


def _by_documents(num_docs: int, validation_fraction: float) -> bool:
  return 1 <= round(num_docs * validation_fraction) < num_docs


def _cut_by_chars(docs: Iterator[str], num_chars: int, validation_fraction: float) -> Iterator[tuple[str, str]]:
  """split_train_validation's fallback for too few documents, streamed: the text is cut at a line boundary."""
  cut, start = int(num_chars * (1 - validation_fraction)), 0
  for doc in docs:
    end = start + len(doc)
    if end <= cut:
      yield "train", doc
    elif start >= cut:
      yield "validation", doc
    else:
      head, tail = _cut_at_line(doc, cut - start)
      if head:
        yield "train", head
      if tail:
        yield "validation", tail
    start = end
