"""Local text files read as documents: which files a path, glob or list names; refusing binary files; decoding
(data.invalid_utf8); cutting the text into documents (data.document_split), whole or streamed in chunks so a file
larger than memory is never held whole. `DataError` is the one-line error for bad data settings and inputs.
"""

from __future__ import annotations

import codecs
import glob
import os
import re
from collections.abc import Iterator
from pathlib import Path


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
