"""Starting a student from a subset of its teacher's layers (DistilBERT: every other layer of BERT-base).

Student block j takes the parameters of teacher block `layers[j]`; everything outside the blocks (embeddings,
positions, final norm, output heads, pooler) is copied as is. Widths must match: each copied array must have the
student's shape, or the run stops with one line naming the parameter. Projections for hidden-state matching keep
their fresh initialization.
"""

from __future__ import annotations

import re
from typing import Any

import jax

from lmjax.config import ConfigError
from lmjax.models.student_projections import PROJECTION

_LAYER = re.compile(r"^layer_(\d+)$")


def _key(entry: Any) -> str:
  return str(getattr(entry, "key", entry))


def teacher_path(path: tuple, layers: list[int]) -> tuple[str, ...]:
  """The teacher parameter a student parameter starts from: 'layer_j' renamed 'layer_<layers[j]>'."""
  out = []
  for entry in map(_key, path):
    match = _LAYER.match(entry)
    out.append(f"layer_{layers[int(match.group(1))]}" if match else entry)
  return tuple(out)


def check_shapes(student: Any, teacher: Any, layers: list[int]) -> None:
  """One line for the first student parameter the teacher cannot fill (works on arrays or shape structs)."""
  flat_teacher = {tuple(map(_key, p)): x for p, x in jax.tree_util.tree_flatten_with_path(teacher)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(student)[0]:
    if _key(path[0]).startswith(PROJECTION.format("")):
      continue
    source = teacher_path(path, layers)
    found = flat_teacher.get(source)
    if found is None or found.shape != leaf.shape:
      have = "missing" if found is None else f"shape {found.shape}"
      raise ConfigError(f"config.distill.init_student_layers: the student's {'/'.join(map(_key, path))} "
                        f"{leaf.shape} cannot start from the teacher's {'/'.join(source)} ({have}); the widths and "
                        f"architecture must match (or leave init_student_layers empty)")


def from_teacher(student: Any, teacher: Any, layers: list[int]) -> Any:
  """The student's parameters with teacher values copied in (call jitted, with the student's out_shardings)."""
  flat_teacher = {tuple(map(_key, p)): x for p, x in jax.tree_util.tree_flatten_with_path(teacher)[0]}
  def pick(path, leaf):
    if _key(path[0]).startswith(PROJECTION.format("")):
      return leaf
    return flat_teacher[teacher_path(path, layers)].astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(pick, student)
