"""What the fine-tuning tasks (classification, tagging, qa) share: data as encoded example arrays, the model call,
and the optimizer groups that freeze layers or give the new head its own learning rate.

A task's examples are encoded once in `prepare_data` into arrays [N, ...]. Only the arrays the model and loss read
go to the devices (`device_keys`); what scoring needs besides (word offsets, gold strings) stays on the host in
the TaskData and is looked up through each eval row's "index".
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from lmjax.data import example_arrays
from lmjax.data.example_arrays import Arrays
from lmjax.models.finetune_heads import PRETRAINED_SUBTREES
from lmjax.tasks.base import Batch

# Encoder parameters that make up BERT's embedding layer (frozen together by finetune.freeze_embeddings).
EMBEDDING_PARAMS = ("embed", "token_types", "positions", "ln_embed", "relative_bias")


@dataclasses.dataclass(frozen=True)
class ExampleData:
  """Encoded train and eval examples. Subclasses add `score` (metrics over the whole eval split)."""
  config: ml_collections.ConfigDict
  train: Arrays  # the device keys only
  eval: Arrays
  summary: str

  def train_dataset(self, process_index: int, process_count: int):
    return example_arrays.train_dataset(self.train, self.config.train.batch_size, self.config.data.shuffle_seed,
                                        process_index, process_count)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    t = self.config.train
    return {"eval": example_arrays.eval_batches(self.eval, t.eval_batch_size or t.batch_size, 0, process_index,
                                                process_count)}


def cap(items: list, max_items: int) -> list:
  return items[:max_items] if max_items else items


def write_jsonl(out_dir: Path | None, split: str, step: int, records: list[dict[str, Any]]) -> None:
  """What the model predicted for each eval example, for people to read: out_dir/<split>_step<N>.jsonl."""
  if out_dir is None:
    return
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{split}_step{step:06d}.jsonl"
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  tmp.replace(path)


def row_weights(batch: dict[str, jax.Array]) -> jax.Array:
  """1 on real rows, 0 on the rows that pad the last eval batch (train batches have no padding rows)."""
  if "index" in batch:
    return (batch["index"] >= 0).astype(jnp.float32)
  return jnp.ones(batch["inputs"].shape[:1], jnp.float32)


def abstract_arrays(shapes: dict[str, tuple[tuple[int, ...], Any]], batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for k, (shape, dtype) in shapes.items()}


@dataclasses.dataclass(frozen=True)
class EncoderTask:
  """Base of the fine-tuning tasks: `model` is a finetune_heads module taking (inputs, token_types, segment_ids)."""
  model: nn.Module
  freeze_embeddings: bool
  freeze_layers: int

  def init_args(self, config: ml_collections.ConfigDict) -> tuple[jax.Array, ...]:
    L = config.data.seq_len
    zeros = jnp.zeros((1, L), jnp.int32)
    return zeros, zeros, jnp.ones((1, L), jnp.int32)

  def apply(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, batch["inputs"], batch["token_types"], batch["segment_ids"],
                            deterministic=deterministic, rngs=rngs)

  def param_groups(self, params: Any) -> Any:
    """'frozen' for the frozen embeddings and first layers, 'body' for the rest of the pretrained subtrees,
    'head' for what is new (the task head)."""
    frozen_layers = {f"layer_{i}" for i in range(self.freeze_layers)}

    def group(path, _):
      names = [str(getattr(k, "key", "")) for k in path]
      if names[0] not in PRETRAINED_SUBTREES:
        return "head"
      if names[0] == "encoder" and len(names) > 1:
        if names[1] in frozen_layers or (self.freeze_embeddings and names[1] in EMBEDDING_PARAMS):
          return "frozen"
      return "body"
    return jax.tree_util.tree_map_with_path(group, params)

