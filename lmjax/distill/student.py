"""The student's trainable parameters when hidden states of different widths are matched: the student model plus
one learned projection [D_student, D_teacher] per layer pair.

The projections share the student's parameter scope (`nn.share_scope`), so the saved parameters are the student's
own tree with extra top-level entries `distill_projection_<j>`. A model applied to that tree ignores entries it does
not use, so a distilled student loads, evaluates and generates like any run of its architecture.
"""

from __future__ import annotations

from typing import Any

import jax
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

  def __call__(self, *args, **kwargs):
    return self.student(*args, **kwargs)


def strip_boxes(tree: Any) -> Any:
  """The values inside nn.Partitioned boxes (shape structs stay shape structs)."""
  return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                                is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def abstract_params(model: nn.Module, init_args: tuple) -> tuple[Any, Any]:
  """(ShapeDtypeStructs, logical PartitionSpecs) of a model's parameters, nothing allocated."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_args))["params"]
  return strip_boxes(boxed), nn.get_partition_spec(boxed)


def layer_intermediates(tree: Any, index: int) -> dict[str, Any]:
  """What Block number `index` sowed ({'hidden': (x_BLD,), 'attn': {'probs': (p_BHLM,)}}), wherever the model nests
  its layers ('layer_<i>' at the top for the GPT decoder, under 'encoder' for BERT)."""
  name = f"layer_{index}"
  stack = [tree]
  while stack:
    node = stack.pop()
    if not isinstance(node, dict):
      continue
    if name in node:
      return node[name]
    stack.extend(node.values())
  raise KeyError(f"no intermediates recorded for {name}")
