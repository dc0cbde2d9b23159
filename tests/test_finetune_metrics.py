"""Fine-tuning metrics against hand-computed values, naive by-definition references, and the standard libraries
(scikit-learn, scipy, seqeval) where they are installed."""

from __future__ import annotations

import collections
import math
import re
import string

import numpy as np
import pytest

from lmjax import finetune_metrics as fm


def random_cases(seed: int = 0, count: int = 300):
  """(labels, predictions) pairs with 1-4 classes, including all-one-class and perfect predictions."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    k, n = rng.integers(1, 5), rng.integers(1, 25)
    y = rng.integers(0, k, n)
    p = rng.integers(0, k, n) if rng.random() < 0.7 else y.copy()
    if rng.random() < 0.15:
      p[:] = 0
    yield y, p


def random_scores(seed: int = 0, count: int = 300):
  """(x, y) float pairs with many ties, some constant, some monotone."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    n = rng.integers(2, 25)
    x = rng.integers(0, 5, n).astype(float)
    y = x + rng.integers(0, 3, n) if rng.random() < 0.5 else rng.normal(size=n).round(1)
    yield x, y


# --- naive references, written from the definitions ---------------------------------------------------------


def naive_f1(y, p, c) -> float:
  tp = sum(1 for a, b in zip(y, p) if a == c and b == c)
  fp = sum(1 for a, b in zip(y, p) if a != c and b == c)
  fn = sum(1 for a, b in zip(y, p) if a == c and b != c)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def naive_mcc(y, p) -> float:
  """Gorodkin's R_K from the confusion matrix by its triple-sum definition (reduces to the binary MCC)."""
  classes = sorted(set(y) | set(p))
  c = [[sum(1 for a, b in zip(y, p) if a == k and b == m) for m in classes] for k in classes]
  n = len(classes)
  numerator = sum(c[k][k] * c[l][m] - c[k][l] * c[m][k] for k in range(n) for l in range(n) for m in range(n))
  row = [sum(c[k]) for k in range(n)]
  col = [sum(c[l][k] for l in range(n)) for k in range(n)]
  d1 = sum(row[k] * sum(row[j] for j in range(n) if j != k) for k in range(n))
  d2 = sum(col[k] * sum(col[j] for j in range(n) if j != k) for k in range(n))
  return numerator / math.sqrt(d1 * d2) if d1 * d2 else 0.0


def binary_mcc(tp: int, tn: int, fp: int, fn: int) -> float:
  return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def naive_pearson(x, y) -> float:
  mx, my = sum(x) / len(x), sum(y) / len(y)
  sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
  sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
  return sxy / math.sqrt(sxx * syy) if sxx * syy else math.nan


def naive_ranks(x) -> list[float]:
  """Rank of v = 1 + (values below v) + (other values equal to v) / 2: the average of the tied ranks."""
  return [1 + sum(w < v for w in x) + (sum(w == v for w in x) - 1) / 2 for v in x]


# The official SQuAD v1.1 evaluation script's functions, transcribed.
def official_normalize_answer(s):
  def remove_articles(text):
    return re.sub(r"\b(a|an|the)\b", " ", text)

  def white_space_fix(text):
    return " ".join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return "".join(ch for ch in text if ch not in exclude)

  return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1_score(prediction, ground_truth):
  prediction_tokens = official_normalize_answer(prediction).split()
  ground_truth_tokens = official_normalize_answer(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  return (2 * precision * recall) / (precision + recall)


def official_evaluate(gold, predictions):
  f1 = exact_match = 0
  for qid, ground_truths in gold.items():
    if qid not in predictions:
      continue
    exact_match += max(official_normalize_answer(predictions[qid]) == official_normalize_answer(g)
                       for g in ground_truths)
    f1 += max(official_f1_score(predictions[qid], g) for g in ground_truths)
  return {"exact_match": 100.0 * exact_match / len(gold), "f1": 100.0 * f1 / len(gold)}


# --- classification ------------------------------------------------------------------------------------------


def test_hand_computed_classification_values():
  y, p = [1, 1, 1, 0], [1, 0, 1, 1]
  assert fm.accuracy(y, p) == 0.5
  assert fm.f1_binary(y, p) == pytest.approx(2 / 3)  # P = R = 2/3
  assert fm.matthews_corrcoef(y, p) == pytest.approx(-1 / 3)  # scikit-learn's documented example
  assert fm.f1_macro([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]) == pytest.approx((0.8 + 0 + 0) / 3)
  assert fm.matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
  assert fm.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
  assert fm.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # undefined: predictions are one class
  assert fm.f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0/0 reads as 0


def test_binary_mcc_matches_its_textbook_formula():
  tp, tn, fp, fn = 7, 11, 3, 5
  y = [1] * tp + [0] * tn + [0] * fp + [1] * fn
  p = [1] * tp + [0] * tn + [1] * fp + [0] * fn
  assert fm.matthews_corrcoef(y, p) == pytest.approx(binary_mcc(tp, tn, fp, fn))


def test_classification_metrics_match_naive_references():
  for y, p in random_cases():
    assert fm.accuracy(y, p) == pytest.approx(np.mean(y == p))
    assert fm.f1_binary(y, p) == pytest.approx(naive_f1(y.tolist(), p.tolist(), 1))
    classes = sorted(set(y.tolist()) | set(p.tolist()))
    assert fm.f1_macro(y, p) == pytest.approx(np.mean([naive_f1(y.tolist(), p.tolist(), c) for c in classes]))
    assert fm.matthews_corrcoef(y, p) == pytest.approx(naive_mcc(y.tolist(), p.tolist()), abs=1e-12)


def test_classification_metrics_match_scikit_learn():
  metrics = pytest.importorskip("sklearn.metrics")
  for y, p in random_cases(seed=1):
    assert fm.accuracy(y, p) == pytest.approx(metrics.accuracy_score(y, p))
    assert fm.f1_macro(y, p) == pytest.approx(metrics.f1_score(y, p, average="macro", zero_division=0))
    assert fm.matthews_corrcoef(y, p) == pytest.approx(metrics.matthews_corrcoef(y, p), abs=1e-12)
    if set(y.tolist()) | set(p.tolist()) == {0, 1}:
      assert fm.f1_binary(y, p) == pytest.approx(metrics.f1_score(y, p, zero_division=0))


def test_summaries_and_collector():
  collector = fm.PredictionCollector()
  collector.add(labels=np.array([1, 0, 1]), predictions=np.array([1, 0, 0]))
  collector.add(labels=np.array([0, 1, 7]), predictions=np.array([0, 1, 7]), mask=np.array([1, 1, 0]))  # padding
  arrays = collector.arrays()
  assert len(collector) == 5 and arrays["labels"].tolist() == [1, 0, 1, 0, 1]
  summary = fm.classification_summary(arrays["labels"], arrays["predictions"], num_classes=2)
  assert summary["accuracy"] == pytest.approx(0.8) and summary["f1"] == pytest.approx(0.8)
  assert set(summary) == {"accuracy", "f1", "f1_macro", "mcc"}
  assert "f1" not in fm.classification_summary([0, 1, 2], [0, 1, 2], num_classes=3)
  reg = fm.regression_summary([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
  assert reg["spearman"] == pytest.approx(1.0) and reg["corr"] == pytest.approx((reg["pearson"] + 1) / 2)
  with pytest.raises(ValueError, match="3 entries but predictions have 2"):
    fm.accuracy([1, 2, 3], [1, 2])


# --- correlations --------------------------------------------------------------------------------------------


def test_hand_computed_correlations():
  assert fm.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
  assert fm.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert fm.average_ranks([10, 20, 20, 30, 20]).tolist() == [1.0, 3.0, 3.0, 5.0, 3.0]
  # Ranks [1, 2.5, 2.5, 4] vs [1.5, 1.5, 3, 4]: Pearson of the ranks.
  assert fm.spearman([1, 2, 2, 3], [4, 4, 5, 6]) == pytest.approx(naive_pearson([1, 2.5, 2.5, 4], [1.5, 1.5, 3, 4]))
  assert fm.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
  assert math.isnan(fm.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(fm.spearman([2, 2], [1, 2]))


def test_correlations_match_naive_references():
  for x, y in random_scores():
    expected = naive_pearson(x.tolist(), y.tolist())
    assert fm.pearson(x, y) == pytest.approx(expected, nan_ok=True)
    assert fm.average_ranks(x).tolist() == naive_ranks(x.tolist())
    assert fm.spearman(x, y) == pytest.approx(naive_pearson(naive_ranks(x.tolist()), naive_ranks(y.tolist())),
                                              nan_ok=True)


def test_correlations_match_scipy():
  stats = pytest.importorskip("scipy.stats")
  for x, y in random_scores(seed=2):
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    with np.errstate(all="ignore"):
      if constant:
        assert math.isnan(fm.pearson(x, y)) and math.isnan(fm.spearman(x, y))
        continue
      assert fm.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
      assert fm.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    assert np.array_equal(fm.average_ranks(x), stats.rankdata(x))


# --- entities ------------------------------------------------------------------------------------------------

SEQEVAL_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
SEQEVAL_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]


def test_seqeval_documented_example():
  scores = fm.entity_scores(SEQEVAL_TRUE, SEQEVAL_PRED, per_type=True)
  assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "f1/MISC": 0.0, "f1/PER": 1.0}


def test_entities_default_mode_semantics():
  # An I- after O (or after another type) opens an entity, as conlleval and seqeval's default mode read it.
  assert fm.get_entities([["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "O"]]) == [
      ("PER", 1, 2), ("LOC", 3, 3), ("LOC", 4, 4)]
  # Sentences never share an entity: positions run over the sentences with an "O" after each.
  assert fm.get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]
  # IOBES: S- is a single-token entity, E- closes one.
  assert fm.get_entities([["S-LOC", "B-PER", "I-PER", "E-PER", "S-LOC", "E-ORG"]]) == [
      ("LOC", 0, 0), ("PER", 1, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
  # A boundary error makes both entities wrong: one missed, one spurious.
  assert fm.entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])["f1"] == 0.0
  assert fm.entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
  with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
    fm.entity_scores([["O", "O"]], [["O"]])


TAGS = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG", "E-PER", "S-LOC"]


def naive_bio_entities(sentences):
  """Entities of well-formed IOB2 tags (every entity opens with B-): a different, simpler algorithm."""
  out = set()
  for s, tags in enumerate(sentences):
    i = 0
    while i < len(tags):
      if tags[i].startswith("B-"):
        j = i + 1
        while j < len(tags) and tags[j] == "I-" + tags[i][2:]:
          j += 1
        out.add((s, tags[i][2:], i, j - 1))
        i = j
      else:
        i += 1
  return out


def random_bio(rng, n_sentences: int) -> list[list[str]]:
  sentences = []
  for _ in range(n_sentences):
    tags, prev = [], "O"
    for _ in range(rng.integers(1, 9)):
      kind = rng.choice(["O", "B", "I"] if prev != "O" else ["O", "B"])
      tags.append("O" if kind == "O" else f"B-{rng.choice(['PER', 'LOC'])}" if kind == "B" else "I-" + prev[2:])
      prev = tags[-1]
    sentences.append(tags)
  return sentences


def fix_bio(tags: list[str]) -> list[str]:
  """Makes a tag list well-formed IOB2 by turning an I-X that does not continue an X entity into B-X."""
  out: list[str] = []
  for t in tags:
    if t.startswith("I-") and (not out or out[-1][2:] != t[2:]):
      t = "B-" + t[2:]
    out.append(t)
  return out


def test_entity_scores_match_naive_reference_on_well_formed_bio():
  rng = np.random.default_rng(3)
  choices = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
  for _ in range(200):
    gold = random_bio(rng, int(rng.integers(1, 4)))
    pred = [fix_bio([t if rng.random() < 0.7 else str(rng.choice(choices)) for t in s]) for s in gold]
    g, p = naive_bio_entities(gold), naive_bio_entities(pred)
    tp = len(g & p)
    precision, recall = (tp / len(p) if p else 0.0), (tp / len(g) if g else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert fm.entity_scores(gold, pred) == pytest.approx({"precision": precision, "recall": recall, "f1": f1})


def test_entity_scores_match_seqeval():
  metrics = pytest.importorskip("seqeval.metrics")
  rng = np.random.default_rng(4)
  for _ in range(300):
    gold = [[str(rng.choice(TAGS)) for _ in range(rng.integers(1, 8))] for _ in range(rng.integers(1, 4))]
    pred = [[str(rng.choice(TAGS)) if rng.random() < 0.5 else t for t in s] for s in gold]
    scores = fm.entity_scores(gold, pred, per_type=True)
    assert scores["precision"] == pytest.approx(metrics.precision_score(gold, pred))
    assert scores["recall"] == pytest.approx(metrics.recall_score(gold, pred))
    assert scores["f1"] == pytest.approx(metrics.f1_score(gold, pred))
    report = metrics.classification_report(gold, pred, output_dict=True)
    for name, row in report.items():
      if "avg" not in name:
        assert scores[f"f1/{name}"] == pytest.approx(row["f1-score"])


# --- SQuAD ---------------------------------------------------------------------------------------------------

ANSWER_PAIRS = [
    ("The Denver Broncos!", "denver broncos"), ("Denver Broncos team", "the Denver Broncos"),
    ("an apple a day", "Apple"), ("  Théâtre   de la Ville ", "théâtre de la ville."), ("1,000", "1000"),
    ("", "nothing"), ("the", "a"), ("Panthers", "Carolina Panthers"), ("theatre", "the atre"),
    ("Anne Frank's diary", "Anne Franks diary"), ("x x y", "x y y"),
]


def test_squad_normalization_and_scores_match_the_official_script():
  for pred, gold in ANSWER_PAIRS:
    assert fm.normalize_answer(pred) == official_normalize_answer(pred)
    assert fm.squad_exact_match(pred, gold) == float(official_normalize_answer(pred) == official_normalize_answer(gold))
    assert fm.squad_f1(pred, gold) == pytest.approx(official_f1_score(pred, gold))
  assert fm.normalize_answer("The  Denver, Broncos!") == "denver broncos"
  assert fm.squad_f1("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)  # P 2/3, R 1


def test_squad_scores_take_the_best_gold_answer_and_score_missing_as_zero():
  gold = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["Carolina Panthers"], "q3": ["Santa Clara"],
          "q4": ["February 7, 2016", "Feb 7"]}
  predictions = {"q1": "broncos", "q2": "the Carolina Panthers", "q4": "February 7"}
  expected = official_evaluate(gold, predictions)
  scores = fm.squad_scores(predictions, gold)
  assert scores["exact_match"] * 100 == pytest.approx(expected["exact_match"]) == 50.0  # q1 via "The Broncos"
  assert scores["f1"] * 100 == pytest.approx(expected["f1"])


def test_squad_v2_unanswerable_questions():
  gold = {"a": [], "b": [], "c": ["yes"]}
  scores = fm.squad_scores({"a": "", "b": "something", "c": "yes"}, gold)
  assert scores == {"exact_match": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}
