"""Metric math: sums are accumulated on device per batch; ratios are taken once on the host."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

LN2 = math.log(2.0)


def add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
  return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}


def language_model_summary(sums: Mapping[str, float]) -> dict[str, float]:
  """From summed negative log-likelihood (nats) and counts to loss, perplexity, bits/byte, bits/char, accuracy.

  Bits per byte and per character divide by the text the targets stand for, not by tokens, so models with
  different tokenizers compare on one scale.
  """
  tokens = max(float(sums["tokens"]), 1.0)
  nll = float(sums["nll"])
  loss = nll / tokens
  out = {"loss": loss, "perplexity": float(np.exp(min(loss, 80.0))), "tokens": tokens,
         "accuracy": float(sums.get("correct", 0.0)) / tokens}
  if sums.get("bytes", 0.0) > 0:
    out["bits_per_byte"] = nll / (LN2 * float(sums["bytes"]))
  if sums.get("chars", 0.0) > 0:
    out["bits_per_char"] = nll / (LN2 * float(sums["chars"]))
  return out
