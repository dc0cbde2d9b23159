"""model.attention_impl='auto': the fastest implementation that the platform and this call allow.

  mesh.sequence > 1                           ring (context parallelism)
  attention dropout or recorded maps          xla (the only one with them)
  GPU, bfloat16/float16                       cudnn (position biases included)
  TPU, no position bias                       splash
  otherwise (CPU, float32 GPU, TPU + bias)    xla: at the short contexts CPUs train, materialized scores are
                                              fastest; choose 'flash' for memory at long context

The choice is made per call at trace time and logged once per distinct outcome, so a run's log says what ran.
"""

from __future__ import annotations

import dataclasses

from absl import logging

from lmjax.models.kernels.base import Kernel, Needs
from lmjax.registry import ATTENTION

_LOGGED: set[tuple[str, str]] = set()


def choose(needs: Needs, platform: str) -> tuple[str, str]:
  """(implementation name, why) for a call with `needs` on `platform` (a jax backend name)."""
  if needs.sequence_shards > 1:
    return "ring", f"the length axis is split over mesh.sequence={needs.sequence_shards} devices"
  if needs.dropout or needs.probs:
    return "xla", "attention dropout" if needs.dropout else "attention maps are recorded"
  if platform in ("gpu", "cuda") and needs.dtype in ("bfloat16", "float16"):
    return "cudnn", f"{needs.dtype} on GPU"
  if platform == "tpu" and not needs.bias:
    return "splash", "TPU"
  return "xla", f"{needs.dtype} on {platform}" + (" with a position bias" if needs.bias else "")


@dataclasses.dataclass(frozen=True)
class Auto(Kernel):
  """Resolves to another implementation; never attends itself."""

  def resolve(self, needs: Needs, platform: str) -> Kernel:
    name, why = choose(needs, platform)
    if (name, why) not in _LOGGED:
      _LOGGED.add((name, why))
      logging.info("Attention: model.attention_impl='auto' runs %r (%s).", name, why)
    return ATTENTION.get(name)

  def unsupported(self, needs: Needs) -> str:
    return ""


AUTO = ATTENTION.register("auto")(Auto(
    "auto", "the best of the others for the platform and the model, chosen per call and logged", None, biases=True,
    dropout=True, probs=True, sequence_parallel=True))
