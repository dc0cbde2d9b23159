"""The default training corpus shipped with lmjax: the King James Bible, one document per chapter."""

from __future__ import annotations

import lzma
from pathlib import Path

EMBEDDED_CORPUS_PATH = Path(__file__).parent / "kjv.txt.xz"


def read_embedded_corpus() -> str:
  """The whole corpus as one str; documents are separated by a blank line ("\\n\\n")."""
  return lzma.decompress(EMBEDDED_CORPUS_PATH.read_bytes()).decode("utf-8")
