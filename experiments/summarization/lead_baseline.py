r"""ROUGE of the lead-sentence baseline: each description's first sentence as its summary.

  python experiments/summarization/lead_baseline.py [--data=data/debian_descriptions] [--examples=500]

Scores lead.<split>.tsv (written by prepare_data.py) against the synopses of the first --examples pairs of each
split, the pairs the models decode (seq2seq.eval_decode_examples), with lmjax.text_metrics.rouge: the same
tokenization and F-measure as the runs' rouge1/rouge2/rougeL. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a plain script from a checkout

from lmjax.data.parallel import read_tsv_pairs  # noqa: E402
from lmjax.text_metrics import rouge  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="data/debian_descriptions")
  parser.add_argument("--examples", type=int, default=500)
  args = parser.parse_args()
  data = Path(args.data)
  print("| split | pairs | rouge1 | rouge2 | rougeL | mean words: lead / reference |")
  print("|---|---|---|---|---|---|")
  for split, name in (("validation", "eval"), ("test", "test")):
    pairs = read_tsv_pairs(data / f"{split}.tsv")[: args.examples]
    leads = (data / f"lead.{split}.tsv").read_text(encoding="utf-8").splitlines()[: len(pairs)]
    scores = rouge(leads, [target for _, target in pairs])
    words = lambda texts: sum(len(t.split()) for t in texts) / len(texts)
    print(f"| {name} ({split}) | {len(pairs)} | {scores['rouge1']:.2f} | {scores['rouge2']:.2f} | "
          f"{scores['rougeL']:.2f} | {words(leads):.1f} / {words([t for _, t in pairs]):.1f} |")


if __name__ == "__main__":
  main()
