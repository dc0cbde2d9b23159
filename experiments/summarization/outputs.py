"""What the models write: distinct synopses, length and copying, per run, from its decoded predictions.

  python experiments/summarization/outputs.py runs/summarization [--split=test]

ROUGE alone does not show a model that ignores its input; this prints, for every run under the directory, how
many of its decoded synopses are distinct, the share taken by the most common one, the mean length in words
against the references', and the share of hypothesis words that occur in the source (copying).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path


def summarize(path: Path) -> dict:
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  counts = collections.Counter(r["hypothesis"] for r in rows)
  top, top_n = counts.most_common(1)[0]
  copied = []
  for r in rows:
    source = set(r["source"].lower().split())
    copied += [w in source for w in r["hypothesis"].lower().split()]
  return {"pairs": len(rows), "distinct": len(counts), "top": top, "top_share": top_n / len(rows),
          "hyp_words": statistics.mean(len(r["hypothesis"].split()) for r in rows),
          "ref_words": statistics.mean(len(r["reference"].split()) for r in rows),
          "copied": sum(copied) / max(len(copied), 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("root", type=Path)
  parser.add_argument("--split", default="test", help="eval or test")
  args = parser.parse_args()
  print("| run | pairs | distinct synopses | most common (share) | words: hypothesis / reference | words from the source |")
  print("|---|---|---|---|---|---|")
  for run in sorted(p for p in args.root.glob("*/*") if (p / "predictions").is_dir()):
    last = sorted((run / "predictions").glob(f"{args.split}_step*.jsonl"), key=lambda p: int(p.stem.split("step")[1]))
    if not last:
      continue
    s = summarize(last[-1])
    print(f"| {run.relative_to(args.root)} | {s['pairs']} | {s['distinct']} | `{s['top']}` ({s['top_share']:.0%}) | "
          f"{s['hyp_words']:.1f} / {s['ref_words']:.1f} | {s['copied']:.0%} |")


if __name__ == "__main__":
  main()
