"""Where the blocks of a model (student or teacher) left what distillation matches: hidden states and attention maps,
recorded through Flax's `sow` when the model is applied with 'intermediates' mutable."""

from __future__ import annotations

from typing import Any

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
