"""A TFDS builder that turns local text files into array_record documents with a fixed train/validation split.

The builder config name is a hash of everything that determines the output (absolute paths, sizes and mtimes of
the files, and the split settings), so editing a file or a setting prepares a new dataset next to the old one
instead of silently reusing a stale cache.

This module must be imported as `lmjax.data.local_text` (never run as __main__): TFDS registers builder classes by
module and name, and a second copy of the class would be a different builder.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

DOCUMENT_SPLITS = ("file", "paragraph", "line", "marker", "regex")
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
BINARY_SAMPLE_CHARS = 65536  # a streamed file is judged on its first this many characters (or all, if shorter)
BINARY_MIN_CHARS = 64  # fewer characters are too few to judge by the fraction (a NUL byte still counts)


def looks_binary(raw: bytes, text: str, offset: int = 0) -> str | None:
  """Why the bytes (and their UTF-8 decoding with replacement characters) look binary, or None for text; `offset`
  is where `raw` starts in its file."""
  first_nul = raw.find(b"\0")
  if first_nul >= 0:
    return f"{raw.count(bytes(1)):,} NUL bytes, the first at byte offset {offset + first_nul}"
  undecodable = text.count("\ufffd")
  if len(text) >= BINARY_MIN_CHARS and undecodable >= BINARY_UNDECODABLE_FRACTION * len(text):
    return f"{undecodable / len(text):.0%} of its characters are not UTF-8"
  return None


def _binary_error(path: Path, why: str) -> DataError:
  return DataError(f"data.paths file {path} looks binary, not text ({why}); point data.paths at text files, or "
                   f"set data.allow_binary=True to train on it anyway")


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
    raise _binary_error(path, why)
  return text


def separator_pattern(document_split: str, separator: str = "") -> re.Pattern | None:
  """The regular expression between documents, or None for 'file' and 'line' (which do not use one).

  'paragraph': a blank line; 'marker': a line holding exactly `separator` (spaces around it ignored), as the `%`
  lines of quote collections; 'regex': every match of `separator` (multiline: `^` and `$` match at line ends).
  """
  if document_split == "paragraph":
    return _BLANK_LINES
  if document_split in ("marker", "regex") and not separator:
    raise DataError(f"data.document_split={document_split!r} needs data.document_separator: the marker line or "
                    f"the regular expression between documents")
  if document_split == "marker":
    return re.compile(rf"^[ \t]*{re.escape(separator.strip())}[ \t]*$", re.MULTILINE)
  if document_split == "regex":
    try:
      return re.compile(separator, re.MULTILINE)
    except re.error as e:
      raise DataError(f"data.document_separator={separator!r} is not a regular expression ({e}); fix it, or use "
                      f"data.document_split='marker' for a literal marker line") from None
  if document_split not in DOCUMENT_SPLITS:
    raise DataError(f"data.document_split={document_split!r} is unknown; use one of {DOCUMENT_SPLITS}")
  return None


def split_into_documents(text: str, document_split: str, separator: str = "") -> list[str]:
  """The documents of one file's text: stripped and non-empty ('file' keeps the whole text as it is)."""
  if document_split == "file":
    return [text] if text.strip() else []
  return list(_documents_of_chunks(iter([text]), document_split, separator_pattern(document_split, separator)))


# A separator match is at most this many characters: text that could still belong to a match is carried over to
# the next chunk of a streamed file, so streaming finds exactly the matches the whole text has.
MAX_SEPARATOR_CHARS = 4096
CHUNK_BYTES = 8 << 20


def _normalized(chunks: Iterator[str]) -> Iterator[str]:
  """Chunks with '\r\n' as '\n'; a chunk ending in '\r' keeps it for the next one, which may start with '\n'."""
  held = ""
  for chunk in chunks:
    chunk = held + chunk
    held = "\r" if chunk.endswith("\r") else ""
    yield (chunk[:-1] if held else chunk).replace("\r\n", "\n")
  if held:
    yield held


def _split_stream(chunks: Iterator[str], pattern: re.Pattern) -> Iterator[str]:
  """The pieces between the matches `finditer` finds in the concatenated chunks. A match is taken once
  MAX_SEPARATOR_CHARS of text follow its start (or the text ends), so no later text could have changed it."""
  carry, scan_from = "", 0
  for chunk in chunks:
    buffer, start = carry + chunk, 0
    safe = len(buffer) - MAX_SEPARATOR_CHARS
    for m in pattern.finditer(buffer, scan_from):
      if m.start() > safe:
        break
      yield buffer[start:m.start()]
      start = m.end()
    carry = buffer[start:]
    scan_from = max(0, safe + 1 - start)  # every match starting up to `safe` has been taken
  start = 0
  for m in pattern.finditer(carry, scan_from):
    yield carry[start:m.start()]
    start = m.end()
  yield carry[start:]


def _split_lines(chunks: Iterator[str]) -> Iterator[str]:
  carry = ""
  for chunk in chunks:
    lines = (carry + chunk).splitlines(keepends=True)
    carry = lines.pop() if lines else ""
    yield from lines
  if carry:
    yield carry


def _documents_of_chunks(chunks: Iterator[str], document_split: str, pattern: re.Pattern | None) -> Iterator[str]:
  pieces = _split_lines(chunks) if document_split == "line" else _split_stream(_normalized(chunks), pattern)
  for piece in pieces:
    if (doc := piece.strip()):
      yield doc


def read_chunks(path: Path, invalid_utf8: str, chunk_bytes: int = CHUNK_BYTES,
                allow_binary: bool = False) -> Iterator[str]:
  """The text of a file, decoded piece by piece: never the whole file in memory. Unless allow_binary, each piece
  is checked as read_text checks a whole file: a NUL byte anywhere, or too many undecodable characters in its
  first BINARY_SAMPLE_CHARS characters (the whole file when it is shorter)."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors="strict" if invalid_utf8 == "fail" else "replace")
  offset = seen_chars = undecodable = 0
  try:
    f = open(path, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    raise DataError(f"data.paths file {path} cannot be read ({e.strerror}); fix it or remove it from data.paths") from e
  with f:
    while True:
      raw = f.read(chunk_bytes)
      pending = len(decoder.getstate()[0])
      try:
        text = decoder.decode(raw, final=not raw)
      except UnicodeDecodeError as e:
        raise DataError(f"data.invalid_utf8='fail': {path} is not valid UTF-8 at byte offset "
                        f"{offset - pending + e.start}; fix the file or set data.invalid_utf8='replace'") from None
      if not allow_binary:
        seen_chars += len(text)
        undecodable += text.count("\ufffd")
        if (first_nul := raw.find(b"\0")) >= 0:
          raise _binary_error(path, f"NUL bytes, the first at byte offset {offset + first_nul}")
        # The fraction is judged over the file so far, once there is enough of it (or at its end): a piece of a
        # few bytes is no sample.
        if (seen_chars >= BINARY_SAMPLE_CHARS or not raw) and seen_chars >= BINARY_MIN_CHARS and (
            undecodable >= BINARY_UNDECODABLE_FRACTION * seen_chars):
          raise _binary_error(path, f"{undecodable / seen_chars:.0%} of its characters are not UTF-8")
      offset += len(raw)
      if text:
        yield text
      if not raw:
        return


def iter_file_documents(path: Path, document_split: str, separator: str = "", invalid_utf8: str = "replace",
                        chunk_bytes: int = CHUNK_BYTES, allow_binary: bool = False) -> Iterator[str]:
  """The documents of one file, as split_into_documents gives them, streamed ('file' reads the file whole)."""
  if document_split == "file":
    yield from split_into_documents(read_text(Path(path), invalid_utf8, allow_binary), "file")
    return
  pattern = separator_pattern(document_split, separator)
  chunks = read_chunks(Path(path), invalid_utf8, chunk_bytes, allow_binary)
  yield from _documents_of_chunks(chunks, document_split, pattern)


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
