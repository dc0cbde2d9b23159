"""Builds kjv.txt.xz from the verse dump of Debian's `bible` program.

Usage (see README.md for the full recipe):
  bible -f -p "$ROOT/usr/lib" 'gen1:1-rev22:21' </dev/null > kjv_verses.txt
  python make_corpus.py kjv_verses.txt kjv.txt.xz
"""

from __future__ import annotations

import lzma
import re
import sys
from pathlib import Path

# Canonical order of the 66 books; the dump uses abbreviations, so books are
# matched by order of first appearance rather than by spelling.
BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua",
    "Judges", "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings",
    "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah",
    "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
    "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts",
    "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians",
    "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)

_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.+)$")


def build_documents(lines: list[str]) -> list[str]:
  """One document per chapter: a 'Book N' title line, then one verse per line."""
  chapters: dict[tuple[str, int], list[str]] = {}
  abbrevs: list[str] = []
  for line in lines:
    m = _VERSE.match(line.rstrip("\n"))
    if m is None:
      raise ValueError(f"unexpected line in verse dump: {line!r}")
    abbrev, chapter, text = m[1], int(m[2]), " ".join(m[4].split())
    if abbrev not in abbrevs:
      abbrevs.append(abbrev)
    chapters.setdefault((abbrev, chapter), []).append(text)
  if len(abbrevs) != len(BOOKS):
    raise ValueError(f"expected {len(BOOKS)} books, got {len(abbrevs)}")
  names = dict(zip(abbrevs, BOOKS))
  return [f"{names[a]} {c}\n" + "\n".join(verses)
          for (a, c), verses in chapters.items()]


def main(src: str, dst: str) -> None:
  docs = build_documents(Path(src).read_text(encoding="ascii").splitlines())
  text = "\n\n".join(docs) + "\n"
  assert "\n\n\n" not in text and all("\n\n" not in d for d in docs)
  data = text.encode("utf-8")
  Path(dst).write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
  print(f"documents={len(docs)} chars={len(text)} bytes={len(data)} "
        f"xz_bytes={Path(dst).stat().st_size}")


if __name__ == "__main__":
  main(*sys.argv[1:])
