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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from lmjax import config as config_lib
from lmjax.data import example_arrays
from lmjax.data.example_arrays import Arrays
from lmjax.models import lora
from lmjax.models.finetune_heads import PRETRAINED_SUBTREES
from lmjax.registry import MODELS, TASKS
from lmjax.tasks.base import Batch, Task, TaskData

# Fine-tuning the BERT encoder: task='classification' (single sentences or pairs; regression), 'tagging' (CoNLL
# token classification) or 'qa' (SQuAD extractive QA). Examples from train_file/eval_file (.tsv/.jsonl, CoNLL,
# SQuAD JSON), or for classification a GLUE task prepared with TFDS (tfds_name='glue/sst2', under data.data_dir).
# The data section stays the tokenizer's corpus, as in pretraining (init_from brings the pretraining tokenizer).
FIELDS = {
    "train_file": "",
    "eval_file": "",
    "tfds_name": "",  # classification: 'glue/<task>' instead of files
    "train_split": "train",
    "eval_split": "validation",  # GLUE MNLI: 'validation_matched' or 'validation_mismatched'
    "text_fields": "sentence",  # classification: one column/key, or two comma-separated for sentence pairs
    "label_field": "label",
    "regression": False,  # classification: a real-valued target (STS-B), MSE loss, Pearson/Spearman
    "labels": "",  # classification: class names in id order, comma-separated; '' sorts the training labels
    "tag_column": -1,  # tagging: the CoNLL column holding the tag (the word is column 0)
    "doc_stride": 128,  # qa: tokens between the starts of consecutive windows over a long context
    "max_query_len": 64,  # qa: question tokens kept
    "max_answer_words": 30,  # qa: longest answer span considered, in words
    "eval_examples": 0,  # examples scored at each eval; 0: the whole eval file
    "init_from": "",  # workdir of a pretraining run (task='mlm'): its encoder and pooler start this model
    "init_step": 0,  # that run's checkpoint step; 0: its latest
    "freeze_embeddings": False,  # keep the token, position and token-type embeddings fixed
    "freeze_layers": 0,  # keep the first k encoder layers fixed
    "head_lr_multiplier": 1.0,  # learning rate of the new head (and anything not pretrained) relative to the rest
    "lora": lora.FIELDS,  # low-rank adapters instead of full updates (lmjax/models/lora.py; docs/post_training.md)
}


def _validate_unused(cfg: ml_collections.ConfigDict) -> None:
  if not config_lib.reads(cfg, "finetune") and cfg.finetune.init_from:
    config_lib.fail("finetune.init_from", cfg.finetune.init_from, f"starts a fine-tuning task from a pretraining "
                    f"run; task={cfg.task!r} does not use it, so set it to ''")
  lora.validate(cfg)
  if cfg.finetune.lora.rank and cfg.task in TASKS and not TASKS.get(cfg.task).supports_lora:
    adapting = ", ".join(n for n, c in TASKS.items() if c.supports_lora)
    config_lib.fail("finetune.lora.rank", cfg.finetune.lora.rank, f"task={cfg.task!r} does not train LoRA adapters "
                    f"(the tasks that do: {adapting}); set it to 0")
  if cfg.finetune.lora.rank and cfg.model.name in MODELS and MODELS.get(cfg.model.name).fit_only:
    config_lib.fail("finetune.lora.rank", cfg.finetune.lora.rank, f"model.name={cfg.model.name!r} is fitted in one "
                    f"pass, not trained by gradients; set it to 0")


config_lib.register_section("finetune", FIELDS, _validate_unused)


def validate_fields(cfg: ml_collections.ConfigDict, kind: str) -> None:
  """The finetune.* checks of fine-tuning task `kind` ('classification', 'tagging' or 'qa')."""
  f, d = cfg.finetune, cfg.data
  if f.tfds_name and kind != "classification":
    config_lib.fail("finetune.tfds_name", f.tfds_name, "GLUE through TFDS is for task='classification'; give "
                    "files instead")
  from_dataset = kind == "classification" and d.source == "hf" and not f.train_file  # data.train/eval_split
  if not f.tfds_name and not from_dataset:
    for field in ("train_file", "eval_file"):
      if not f[field].strip():
        how = (" (or finetune.tfds_name='glue/<task>', or data.source='hf' with data.train_split/eval_split)"
               if kind == "classification" else "")
        config_lib.fail(f"finetune.{field}", f[field], f"task={cfg.task!r} reads its examples from a file: set "
                        f"finetune.train_file and finetune.eval_file{how}")
  if kind == "classification":
    fields = [x.strip() for x in f.text_fields.split(",")]
    if len(fields) not in (1, 2) or not all(fields):
      config_lib.fail("finetune.text_fields", f.text_fields, "name one text field, or two separated by a comma for "
                      "pairs")
    if len(fields) == 2 and cfg.model.type_vocab_size < 2:
      config_lib.fail("model.type_vocab_size", cfg.model.type_vocab_size, "sentence pairs use token types 0 and 1: "
                      "set 2")
    if not f.label_field.strip():
      config_lib.fail("finetune.label_field", f.label_field, "name the column or key holding the label")
  specials = 3 if kind != "tagging" else 2
  if d.seq_len < specials + 2:
    config_lib.fail("data.seq_len", d.seq_len, f"task={cfg.task!r} needs room for {specials} special tokens and "
                    f"some text: use at least {specials + 2}, e.g. 128")
  if kind == "qa":
    config_lib.at_least(cfg, "finetune.doc_stride", 1)
    config_lib.at_least(cfg, "finetune.max_query_len", 1)
    config_lib.at_least(cfg, "finetune.max_answer_words", 1)
    if d.seq_len <= f.max_query_len + 3:
      config_lib.fail("data.seq_len", d.seq_len, f"must exceed finetune.max_query_len + 3 = {f.max_query_len + 3} "
                      f"so that some context fits beside the question")
  config_lib.at_least(cfg, "finetune.eval_examples", 0)
  config_lib.at_least(cfg, "finetune.init_step", 0)
  if not 0 <= f.freeze_layers <= cfg.model.num_layers:
    config_lib.fail("finetune.freeze_layers", f.freeze_layers, f"must be between 0 and model.num_layers="
                    f"{cfg.model.num_layers}")
  config_lib.at_least(cfg, "finetune.head_lr_multiplier", 0.0, strict=True)

# Encoder parameters that make up BERT's embedding layer (frozen together by finetune.freeze_embeddings).
EMBEDDING_PARAMS = ("embed", "token_types", "positions", "ln_embed", "relative_bias", "target_embed",
                    "source_relative_bias")


@dataclasses.dataclass(frozen=True)
class ExampleData(TaskData):
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
class EncoderTask(Task):
  """Base of the fine-tuning tasks: `model` is a finetune_heads module taking (inputs, token_types, segment_ids)."""
  model: Any
  freeze_embeddings: bool
  freeze_layers: int
  seq_len: int

  model_interface: ClassVar[str] = "encoder"
  predicts: ClassVar[bool] = True
  sections: ClassVar[tuple[str, ...]] = ("finetune",)
  kind: ClassVar[str] = ""  # which finetune.* rules apply: 'classification', 'tagging' or 'qa'

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    validate_fields(config, cls.kind)

  def init_args(self) -> tuple[jax.Array, ...]:
    L = self.seq_len
    zeros = jnp.zeros((1, L), jnp.int32)
    return zeros, zeros, jnp.ones((1, L), jnp.int32)

  def apply(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None):
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, batch["inputs"], batch["token_types"], batch["segment_ids"],
                            deterministic=deterministic, rngs=rngs)

  def param_groups(self, params: Any) -> Any:
    """'frozen' for the frozen embeddings and first layers, 'body' for the rest of the pretrained subtrees,
    'head' for what is new (the task head)."""
    frozen_layers = {name.format(i) for i in range(self.freeze_layers) for name in ("layer_{}", "encoder_{}")}

    def group(path, _):
      names = [str(getattr(k, "key", "")) for k in path]
      if names[0] not in PRETRAINED_SUBTREES:
        return "head"
      if names[0] in ("encoder", "decoder") and len(names) > 1:
        if names[1] in frozen_layers or (self.freeze_embeddings and names[1] in EMBEDDING_PARAMS):
          return "frozen"
      return "body"
    return jax.tree_util.tree_map_with_path(group, params)

