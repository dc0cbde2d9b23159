"""Statistics of replicated runs: the mean and spread of a metric over seeds, and whether two settings differ.

Seeds are few (3 to 10), so intervals are Student-t intervals, not bootstrap ones: with n values x_i, mean m and
sample standard deviation s (n - 1 in the denominator), the 95% confidence interval of the mean is
m +- t(0.975, n - 1) * s / sqrt(n). A bootstrap over 3 values can only resample those 3 and understates the spread.

Two settings are compared on the seeds they share, pairwise: d_i = x_i - y_i for replicate i (same seed, same
data order), and the t interval of the mean difference; pairing removes what a seed does to both (an easy data
order, say). Without shared seeds the comparison is Welch's unequal-variance t interval. A difference is "within
the noise" when its 95% interval contains 0 (equivalently, the two-sided t test's p >= 0.05); with one run on
either side there is no estimate of the noise at all, and the comparison says so instead of guessing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

CONFIDENCE = 0.95
METHOD = "Student t, 95%"


def t_quantile(p: float, df: float) -> float:
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.t.ppf(p, df))


def t_two_sided_p(t: float, df: float) -> float:
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(2.0 * stats.t.sf(abs(t), df))


@dataclasses.dataclass(frozen=True)
class Summary:
  """A metric over n replicates: mean, sample standard deviation and the 95% t interval of the mean (None for
  n = 1, where the spread is unknown)."""
  n: int
  mean: float
  std: float | None
  low: float | None
  high: float | None

  @property
  def half_width(self) -> float | None:
    return None if self.low is None else (self.high - self.low) / 2


def summarize(values: Sequence[float]) -> Summary | None:
  values = [float(v) for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None
  n = len(values)
  mean = math.fsum(values) / n
  if n == 1:
    return Summary(1, mean, None, None, None)
  std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
  half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
  return Summary(n, mean, std, mean - half, mean + half)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """candidate - baseline: the mean difference, its 95% interval and the two-sided p (None without a noise
  estimate), and how it was computed ('paired t over n shared seeds', 'Welch t', or why neither applies)."""
  n: int
  difference: float
  low: float | None
  high: float | None
  p: float | None
  method: str

  @property
  def within_noise(self) -> bool | None:
    """True when the 95% interval contains 0; None when there is no interval."""
    return None if self.low is None else self.low <= 0.0 <= self.high


def paired(candidate: Sequence[float], baseline: Sequence[float]) -> Comparison:
  """Replicate i of each was run with the same seeds."""
  if len(candidate) != len(baseline) or not candidate:
    raise ValueError(f"paired comparison needs equal, non-empty lists, got {len(candidate)} and {len(baseline)}")
  d = [float(a) - float(b) for a, b in zip(candidate, baseline)]
  n, mean = len(d), math.fsum(d) / len(d)
  if n == 1:
    return Comparison(1, mean, None, None, None, "one shared seed: no noise estimate")
  sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
  se = sd / math.sqrt(n)
  if se == 0.0:  # identical differences (e.g. deterministic runs): no spread to test against
    return Comparison(n, mean, mean, mean, 1.0 if mean == 0.0 else 0.0, f"paired t over {n} shared seeds")
  half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * se
  return Comparison(n, mean, mean - half, mean + half, t_two_sided_p(mean / se, n - 1),
                    f"paired t over {n} shared seeds")


def welch(candidate: Sequence[float], baseline: Sequence[float]) -> Comparison:
  """Unpaired: Welch's t with the Welch-Satterthwaite degrees of freedom."""
  a, b = [float(x) for x in candidate], [float(x) for x in baseline]
  na, nb = len(a), len(b)
  if not na or not nb:
    raise ValueError("welch needs values on both sides")
  diff = math.fsum(a) / na - math.fsum(b) / nb
  if na < 2 or nb < 2:
    return Comparison(min(na, nb), diff, None, None, None, "a single run on one side: no noise estimate")
  va = math.fsum((x - math.fsum(a) / na) ** 2 for x in a) / (na - 1) / na
  vb = math.fsum((x - math.fsum(b) / nb) ** 2 for x in b) / (nb - 1) / nb
  se = math.sqrt(va + vb)
  if se == 0.0:
    return Comparison(min(na, nb), diff, diff, diff, 1.0 if diff == 0.0 else 0.0, "Welch t (no shared seeds)")
  df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
  half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
  return Comparison(min(na, nb), diff, diff - half, diff + half, t_two_sided_p(diff / se, df),
                    "Welch t (no shared seeds)")
