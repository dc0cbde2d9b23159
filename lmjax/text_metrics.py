"""Metrics of generated text against references: SacreBLEU BLEU and chrF, and ROUGE-1/2/L.

BLEU and chrF come from the `sacrebleu` package itself, so scores are comparable with published ones, and each
comes with its signature (tokenizer, smoothing, version) to report next to the number. ROUGE is computed here,
equal to Google's `rouge-score` package (tested) with its default tokenization (lowercase, runs of letters and
digits, no stemming): per-example F-measures averaged over the corpus. All scores are on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

METRICS = ("bleu", "chrf", "rouge")


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> tuple[float, str]:
  """(corpus BLEU, signature) with one reference per hypothesis."""
  from sacrebleu.metrics import BLEU  # pylint: disable=import-outside-toplevel
  metric = BLEU(tokenize=tokenize)
  score = metric.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(metric.get_signature())


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """(corpus chrF, signature): character 6-gram F-score with beta 2 (sacrebleu's defaults)."""
  from sacrebleu.metrics import CHRF  # pylint: disable=import-outside-toplevel
  metric = CHRF()
  score = metric.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(metric.get_signature())


def rouge_tokens(text: str) -> list[str]:
  """rouge-score's default tokenizer: lowercase, anything but [a-z0-9] separates tokens."""
  return [t for t in re.split(r"\s+", re.sub(r"[^a-z0-9]+", " ", text.lower())) if t]


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
  precision = overlap / predicted if predicted else 0.0
  recall = overlap / reference if reference else 0.0
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(hypothesis: list[str], reference: list[str], n: int) -> float:
  """F-measure of clipped n-gram overlap."""
  grams = lambda tokens: collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
  hyp, ref = grams(hypothesis), grams(reference)
  overlap = sum(min(count, ref[gram]) for gram, count in hyp.items())
  return _f_measure(overlap, sum(hyp.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence, one row of the dynamic programme at a time."""
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge_l(hypothesis: list[str], reference: list[str]) -> float:
  """Sentence-level ROUGE-L F-measure (rouge-score's 'rougeL', not the summary-level 'rougeLsum')."""
  return _f_measure(lcs_length(hypothesis, reference), len(hypothesis), len(reference))


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean per-example ROUGE-1, ROUGE-2 and ROUGE-L F-measures, x100."""
  totals = collections.Counter()
  for hypothesis, reference in zip(hypotheses, references, strict=True):
    hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
    totals["rouge1"] += rouge_n(hyp, ref, 1)
    totals["rouge2"] += rouge_n(hyp, ref, 2)
    totals["rougeL"] += rouge_l(hyp, ref)
  n = max(len(hypotheses), 1)
  return {key: 100.0 * totals[key] / n for key in ("rouge1", "rouge2", "rougeL")}


def score_texts(hypotheses: Sequence[str], references: Sequence[str], metrics: Sequence[str],
                bleu_tokenize: str = "13a") -> tuple[dict[str, float], dict[str, str]]:
  """({metric: score}, {metric: signature}) for the named metrics (a subset of METRICS)."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  scores, signatures = {}, {}
  for name in metrics:
    if name == "bleu":
      scores["bleu"], signatures["bleu"] = bleu(hypotheses, references, bleu_tokenize)
    elif name == "chrf":
      scores["chrf"], signatures["chrf"] = chrf(hypotheses, references)
    elif name == "rouge":
      scores |= rouge(hypotheses, references)
      signatures["rouge"] = "rouge-score default tokenizer, no stemming, mean F-measure"
    else:
      raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
  return scores, signatures
