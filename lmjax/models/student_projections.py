"""The student's trainable parameters when hidden states of different widths are matched (knowledge distillation,
lmjax/tasks/distill.py): the student model plus one learned projection [D_student, D_teacher] per layer pair.

The projections share the student's parameter scope (`nn.share_scope`), so the saved parameters are the student's
own tree with extra top-level entries `distill_projection_<j>`. A model applied to that tree ignores entries it does
not use, so a distilled student loads, evaluates and generates like any run of its architecture.
"""

from __future__ import annotations

from typing import Any

from flax import linen as nn

from lmjax.models.layers import dtype_of, normal_init

PROJECTION = "distill_projection_{}"


class StudentWithProjections(nn.Module):
  student: nn.Module
  widths: tuple[tuple[int, int], ...]  # (student width, teacher width) per layer pair
  init_std: float
  param_dtype: str

  def setup(self):
    nn.share_scope(self, self.student)
    self.projections = [self.param(PROJECTION.format(j), normal_init(self.init_std, "embed", None), (d_in, d_out),
                                   dtype_of(self.param_dtype)) for j, (d_in, d_out) in enumerate(self.widths)]

  @property
  def cfg(self) -> Any:
    return self.student.cfg

  def __call__(self, *args, **kwargs):
    return self.student(*args, **kwargs)

  # Decoding (lmjax.decode) runs the student itself; the projections only serve the loss.
  def start_cache(self, *args, **kwargs):
    return self.student.start_cache(*args, **kwargs)

  def extend(self, *args, **kwargs):
    return self.student.extend(*args, **kwargs)
