"""Fine-tuning metrics on the host: accuracy, F1, MCC, Pearson/Spearman, entity F1 and SQuAD EM/F1.

F1, MCC and correlations are not sums over batches, so a task collects its predictions on the host during
evaluation (PredictionCollector) and computes the metrics once over all of them. Every metric here matches a
standard implementation on the same inputs (named in each docstring) and returns a fraction in [0, 1] (or
[-1, 1] for correlations), never a percentage.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[float] | Sequence[int]


class PredictionCollector:
  """Appends per-batch host arrays (labels, predictions, ...) and concatenates them at the end.

  `add(mask=...)` drops padded rows, so the last partial eval batch does not count padding as examples.
  """

  def __init__(self) -> None:
    self._parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)

  def add(self, mask: ArrayLike | None = None, **arrays: ArrayLike) -> None:
    keep = None if mask is None else np.asarray(mask).astype(bool)
    for name, value in arrays.items():
      value = np.asarray(value)
      self._parts[name].append(value if keep is None else value[keep])

  def arrays(self) -> dict[str, np.ndarray]:
    return {name: np.concatenate(parts, axis=0) for name, parts in self._parts.items()}

  def __len__(self) -> int:
    first = next(iter(self._parts.values()), [])
    return sum(len(p) for p in first)


def _pair(labels: ArrayLike, predictions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  y, p = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
  if y.shape != p.shape:
    raise ValueError(f"labels have {y.shape[0]} entries but predictions have {p.shape[0]}")
  return y, p


def _ratio(numerator: float, denominator: float) -> float:
  """0 for 0/0, as scikit-learn's zero_division default reports after its warning."""
  return float(numerator) / float(denominator) if denominator else 0.0


def accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
  y, p = _pair(labels, predictions)
  return _ratio(np.sum(y == p), y.size)


def _f1(tp: float, fp: float, fn: float) -> float:
  # 2TP / (2TP + FP + FN) equals 2PR/(P+R) and is 0 where both are 0 (scikit-learn's result).
  return _ratio(2 * tp, 2 * tp + fp + fn)


def f1_binary(labels: ArrayLike, predictions: ArrayLike, positive: int = 1) -> float:
  """F1 of the positive class (sklearn.metrics.f1_score(average='binary')); GLUE MRPC/QQP report this."""
  y, p = _pair(labels, predictions)
  tp = np.sum((p == positive) & (y == positive))
  return _f1(tp, np.sum((p == positive) & (y != positive)), np.sum((p != positive) & (y == positive)))


def f1_macro(labels: ArrayLike, predictions: ArrayLike) -> float:
  """Unweighted mean of per-class F1 over the classes seen in labels or predictions (sklearn average='macro')."""
  y, p = _pair(labels, predictions)
  classes = np.union1d(y, p)
  if classes.size == 0:
    return 0.0
  scores = [_f1(np.sum((p == c) & (y == c)), np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c)))
            for c in classes]
  return float(np.mean(scores))


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """(classes, C) with C[i, j] = count of label classes[i] predicted as classes[j]."""
  y, p = _pair(labels, predictions)
  classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
  k = classes.size
  counts = np.bincount(inverse[:y.size] * k + inverse[y.size:], minlength=k * k)
  return classes, counts.reshape(k, k)


def matthews_corrcoef(labels: ArrayLike, predictions: ArrayLike) -> float:
  """Matthews correlation; for more than two classes Gorodkin's R_K, as sklearn.metrics.matthews_corrcoef.

  0 where it is undefined (all labels or all predictions one class), as scikit-learn returns. GLUE CoLA's metric.
  """
  _, c = confusion_matrix(labels, predictions)
  c = c.astype(np.float64)
  true_k, pred_k = c.sum(axis=1), c.sum(axis=0)
  n, correct = c.sum(), np.trace(c)
  cov_yp = correct * n - true_k @ pred_k
  cov_pp = n * n - pred_k @ pred_k
  cov_yy = n * n - true_k @ true_k
  if cov_pp * cov_yy == 0:
    return 0.0
  return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
  """Pearson r (scipy.stats.pearsonr); nan when either side is constant, where it is undefined."""
  a, b = _pair(x, y)
  a, b = a.astype(np.float64), b.astype(np.float64)
  if a.size < 2:
    return float("nan")
  a, b = a - a.mean(), b - b.mean()
  denominator = np.sqrt((a @ a) * (b @ b))
  return float(np.clip(a @ b / denominator, -1.0, 1.0)) if denominator > 0 else float("nan")


def average_ranks(x: ArrayLike) -> np.ndarray:
  """1-based ranks with ties given the mean of the ranks they span (scipy.stats.rankdata(method='average'))."""
  a = np.asarray(x).reshape(-1)
  order = np.argsort(a, kind="stable")
  sorted_a = a[order]
  # Each run of equal values [start, end) gets rank (start + 1 + end) / 2.
  new_run = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
  run_id = np.cumsum(new_run) - 1
  starts = np.flatnonzero(new_run)
  ends = np.append(starts[1:], a.size)
  ranks = np.empty(a.size, np.float64)
  ranks[order] = ((starts + 1 + ends) / 2.0)[run_id]
  return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
  """Spearman rho: Pearson r of average ranks (scipy.stats.spearmanr); nan when either side is constant."""
  a, b = _pair(x, y)
  return pearson(average_ranks(a), average_ranks(b))


def classification_summary(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> dict[str, float]:
  """Accuracy, macro F1 and MCC; for two classes also F1 of class 1 (the positive class in GLUE's id order)."""
  out = {"accuracy": accuracy(labels, predictions), "f1_macro": f1_macro(labels, predictions),
         "mcc": matthews_corrcoef(labels, predictions)}
  if num_classes == 2:
    out["f1"] = f1_binary(labels, predictions)
  return out


def regression_summary(labels: ArrayLike, predictions: ArrayLike) -> dict[str, float]:
  """Pearson, Spearman and their mean (the single number GLUE STS-B leaderboards rank by)."""
  r, rho = pearson(labels, predictions), spearman(labels, predictions)
  return {"pearson": r, "spearman": rho, "corr": (r + rho) / 2}


# --- entity-level scores for tag sequences ----------------------------------------------------------------
#
# These reproduce seqeval's default mode (seqeval.metrics.f1_score etc. without mode='strict'), which is the
# conlleval behaviour: a chunk also starts at an I- (or E-) tag that follows O or a tag of another type, so
# ill-formed predictions such as "O I-PER I-PER" still count as one PER entity. Tags are "O" or PREFIX-TYPE with
# PREFIX in B, I, E, S, so IOB1, IOB2 (BIO) and IOBES all work.


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  if tag in ("B", "S"):
    return True
  if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
    return True
  return tag not in ("O", ".") and prev_type != type_


def get_entities(sequences: Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
  """(type, start, end inclusive) of every chunk, positions counted over the sentences joined with an "O" after
  each (so no chunk crosses a sentence boundary), exactly as seqeval.metrics.sequence_labeling.get_entities."""
  flat = [tag for sentence in sequences for tag in [*sentence, "O"]]
  chunks = []
  prev_tag, prev_type, begin = "O", "", 0
  for i, chunk in enumerate(flat + ["O"]):
    tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
    if _chunk_ends(prev_tag, tag, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _chunk_starts(prev_tag, tag, prev_type, type_):
      begin = i
    prev_tag, prev_type = tag, type_
  return chunks


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                  per_type: bool = False) -> dict[str, float]:
  """Micro-averaged entity precision, recall and F1 (seqeval default mode; CoNLL-2003's reported metric).

  An entity counts as correct only when its type, start and end all match. With per_type, adds
  "f1/TYPE" for every entity type in either side.
  """
  if len(true_tags) != len(pred_tags):
    raise ValueError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted ones")
  for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
    if len(t) != len(p):
      raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted tags")
  gold, pred = set(get_entities(true_tags)), set(get_entities(pred_tags))
  tp = len(gold & pred)
  precision, recall = _ratio(tp, len(pred)), _ratio(tp, len(gold))
  out = {"precision": precision, "recall": recall, "f1": _f1(tp, len(pred) - tp, len(gold) - tp)}
  if per_type:
    for type_ in sorted({e[0] for e in gold | pred}):
      g, p = {e for e in gold if e[0] == type_}, {e for e in pred if e[0] == type_}
      out[f"f1/{type_}"] = _f1(len(g & p), len(p - g), len(g - p))
  return out


# --- SQuAD ------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """The official SQuAD v1.1/v2.0 normalization: lowercase, drop ASCII punctuation and a/an/the, squeeze spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
  """Bag-of-tokens F1 after normalization (official v1.1 script: 0 when either side normalizes to nothing)."""
  pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
  same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], gold_answers: Mapping[str, Iterable[str]]) -> dict[str, float]:
  """Mean over questions of the best EM and F1 against any gold answer, as the official evaluation scripts.

  `gold_answers` maps every question id to its answer texts. This is the v2.0 script's arithmetic: gold
  answers that normalize to nothing are dropped, and a question left with none (v2.0 unanswerable) scores 1
  only for a prediction that normalizes to nothing. On v1.1 data (no such gold answers) it equals the v1.1
  script. A question missing from `predictions` scores 0, as in both scripts.
  """
  em = f1 = 0.0
  for qid, answers in gold_answers.items():
    answers = [a for a in answers if normalize_answer(a)] or [""]
    prediction = predictions.get(qid)
    if prediction is None:
      continue
    if answers == [""]:
      score = float(not normalize_answer(prediction))
      em, f1 = em + score, f1 + score
      continue
    em += max(squad_exact_match(prediction, a) for a in answers)
    f1 += max(squad_f1(prediction, a) for a in answers)
  n = len(gold_answers)
  return {"exact_match": _ratio(em, n), "f1": _ratio(f1, n)}
