r"""Summarization pairs from Debian's package lists: each package's long description -> its one-line synopsis.

  apt-get update -o Acquire::Languages=en     # fetches the English descriptions (Translation-en) too
  python experiments/summarization/prepare_data.py [--lists=/var/lib/apt/lists] [--out=data/debian_descriptions]

Reads every `*_Packages*` index (for each binary package's source package) and every `*Translation-en*` file
(the long descriptions; Debian keeps them there, not in Packages, since 2012) under --lists, lz4, xz, gzip or
plain. A pair is (long description, synopsis): the description's paragraphs joined into one line (its ' .'
paragraph breaks become ' ¶ '), the synopsis as written. Then:

  * descriptions shorter than --min_chars or longer than --max_chars are dropped, and so are synopses of fewer
    than 2 words;
  * binary packages built from one source package (libfoo1, libfoo-dev, libfoo-doc) often repeat one
    description with a line added, so train, validation and test are split by source package (a hash of its
    name: 90/5/5 by default), and a pair repeated exactly within a split is kept once;
  * lead.<split>.tsv is the lead-sentence baseline's output for each split: the description's first sentence
    (up to the first '. ', '! ' or '? ', or the first paragraph break), in the order of <split>.tsv;
  * each split is in the order of a hash of the package name, so its first k pairs are a random sample.

Writes train.tsv, validation.tsv, test.tsv (source<TAB>target) and the lead files, and prints their sizes. The
files are derived from the machine's package lists, never committed; the date of the lists is in the printed
summary and in stats.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "validation", "test")


def read_index(path: Path) -> str:
  """The text of an apt index file, whatever its compression."""
  data = path.read_bytes()
  if path.suffix == ".lz4":
    return subprocess.run(["lz4", "-dc", str(path)], capture_output=True, check=True).stdout.decode("utf-8",
                                                                                                      "replace")
  if path.suffix == ".xz":
    data = lzma.decompress(data)
  elif path.suffix == ".gz":
    data = gzip.decompress(data)
  return data.decode("utf-8", "replace")


def stanzas(text: str) -> Iterator[dict[str, str]]:
  """RFC 822-style records separated by blank lines; continuation lines (leading space) stay in their field."""
  for block in text.split("\n\n"):
    record, key = {}, None
    for line in block.splitlines():
      if line.startswith((" ", "\t")) and key is not None:
        record[key] += "\n" + line
      elif ":" in line:
        key, _, value = line.partition(":")
        record[key] = value.strip()
    if record:
      yield record


def description_pair(field: str) -> tuple[str, str]:
  """(long description as one line, synopsis) of a Description field: synopsis, then ' '-indented lines."""
  synopsis, *body = field.split("\n")
  paragraphs, current = [], []
  for line in body:
    line = line[1:] if line.startswith(" ") else line
    if line.strip() == ".":
      paragraphs.append(" ".join(current))
      current = []
    else:
      current.append(line.strip())
  paragraphs.append(" ".join(current))
  text = " ¶ ".join(p for p in (re.sub(r"\s+", " ", p).strip() for p in paragraphs) if p)
  return text.replace("\t", " "), synopsis.strip().replace("\t", " ")


def lead_sentence(description: str) -> str:
  """The first sentence: up to the first '. ', '! ' or '? ' (kept) or paragraph break."""
  first = description.split(" ¶ ", 1)[0]
  match = re.search(r"[.!?](\s|$)", first)
  return first[: match.end()].strip() if match else first.strip()


def split_of(source_package: str, fractions: tuple[float, float]) -> str:
  """train / validation / test by a stable hash of the source package's name."""
  u = int(hashlib.sha256(source_package.encode()).hexdigest()[:12], 16) / 16**12
  return "test" if u < fractions[1] else "validation" if u < fractions[0] + fractions[1] else "train"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lists", default="/var/lib/apt/lists")
  parser.add_argument("--out", default="data/debian_descriptions")
  parser.add_argument("--min_chars", type=int, default=80)
  parser.add_argument("--max_chars", type=int, default=2000)
  parser.add_argument("--validation_fraction", type=float, default=0.05)
  parser.add_argument("--test_fraction", type=float, default=0.05)
  args = parser.parse_args()
  lists = Path(args.lists)

  source_of: dict[str, str] = {}
  for path in sorted(lists.glob("*_Packages*")):
    for record in stanzas(read_index(path)):
      if "Package" in record:
        source_of[record["Package"]] = record.get("Source", record["Package"]).split(" ")[0]
  translations = sorted(lists.glob("*Translation-en*"))
  if not translations:
    raise SystemExit(f"no *Translation-en* files under {lists}; run `apt-get update -o Acquire::Languages=en`")

  pairs: dict[str, dict[tuple[str, str], str]] = {split: {} for split in SPLITS}
  seen = kept = 0
  for path in translations:
    for record in stanzas(read_index(path)):
      if "Description-en" not in record:
        continue
      seen += 1
      source, target = description_pair(record["Description-en"])
      if not args.min_chars <= len(source) <= args.max_chars or len(target.split()) < 2:
        continue
      package = record["Package"]
      split = split_of(source_of.get(package, package), (args.validation_fraction, args.test_fraction))
      pairs[split].setdefault((source, target), package)
      kept += 1

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stats = {"lists": [p.name for p in translations], "descriptions": seen, "kept": kept,
           "lists_date": max(p.stat().st_mtime for p in translations)}
  for split in SPLITS:
    # In the order of a hash of the package name: stable, and the first k pairs (what seq2seq.eval_decode_examples
    # decodes) are a random sample rather than the packages starting with 'a'.
    rows = sorted(pairs[split].items(), key=lambda item: hashlib.sha256(item[1].encode()).hexdigest())
    (out / f"{split}.tsv").write_text("".join(f"{s}\t{t}\n" for (s, t), _ in rows), encoding="utf-8")
    (out / f"lead.{split}.tsv").write_text("".join(f"{lead_sentence(s)}\n" for (s, _), _ in rows),
                                           encoding="utf-8")
    stats[split] = len(rows)
  (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
  print(json.dumps(stats))


if __name__ == "__main__":
  main()
