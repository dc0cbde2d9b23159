"""Sequence classification and regression: single sentences or pairs, local TSV/JSONL or GLUE, on the BERT encoder
(pooled [CLS]), a decoder (its last real token) or an encoder-decoder's encoder (mean-pooled): the family's
`sequence_classifier`.

Classes: softmax cross-entropy over the pooled [CLS] vector; metrics accuracy, F1 (binary: class id 1 is positive;
macro over classes otherwise) and Matthews correlation. Regression (finetune.regression, e.g. STS-B): one output,
mean squared error, Pearson and Spearman correlations. Inputs are [CLS] A [SEP] (B [SEP]) (lmjax.data.labelled).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lmjax import finetune_metrics
from lmjax.config import ConfigError
from lmjax.data import labelled, sources
from lmjax.data.labelled import LabelVocab
from lmjax.data.tokenizers import Tokenizer
from lmjax.models import model_config
from lmjax.registry import TASKS
from lmjax.tasks.base import VocabInfo
from lmjax.tasks.finetune import EncoderTask, ExampleData, abstract_arrays, cap, row_weights, write_jsonl

DEVICE_KEYS = ("inputs", "token_types", "segment_ids", "labels")


def _read(config: ml_collections.ConfigDict, which: str, data_dir: Path) -> tuple[list[dict], LabelVocab | None]:
  f = config.finetune
  task = "regression" if f.regression else "classification"
  if f.tfds_name:
    examples, vocab = labelled.open_glue(f.tfds_name, f[f"{which}_split"], data_dir)
    if (vocab is None) != f.regression:
      raise ConfigError(f"config.finetune.regression={f.regression} but {f.tfds_name} is a "
                        f"{'regression' if vocab is None else 'classification'} task; set it to {vocab is None}")
    return examples, vocab
  fields = [x.strip() for x in f.text_fields.split(",")]
  if not f.train_file and config.data.source == "hf":  # examples from the data section's dataset
    split = config.data[f"{which}_split"]
    return labelled.records_examples(sources.iter_records(config.data, split, data_dir), fields, f.label_field,
                                     task, f"data.hf_name={config.data.hf_name!r} split {split!r}"), None
  return labelled.read_examples(f[f"{which}_file"], fields, f.label_field, task), None


def label_vocab(config: ml_collections.ConfigDict, train_examples: list[dict],
                glue_vocab: LabelVocab | None) -> LabelVocab | None:
  f = config.finetune
  if f.regression:
    return None
  if f.labels.strip():
    return LabelVocab([x.strip() for x in f.labels.split(",")])
  return glue_vocab or LabelVocab.from_labels(e["label"] for e in train_examples)


@dataclasses.dataclass(frozen=True)
class ClassificationData(ExampleData):
  eval_examples: list[dict] = dataclasses.field(default_factory=list)
  vocab: LabelVocab | None = None

  @property
  def num_outputs(self) -> int:
    return 1 if self.vocab is None else len(self.vocab)

  def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
            out_dir: Path | None) -> dict[str, float]:
    labels_N = self.eval["labels"][index_N]
    predicted_N = predictions["prediction"]
    labelled_N = labels_N >= 0 if self.vocab is not None else np.isfinite(labels_N)
    if self.vocab is None:
      metrics = finetune_metrics.regression_summary(labels_N[labelled_N], predicted_N[labelled_N])
    else:
      metrics = finetune_metrics.classification_summary(labels_N[labelled_N], predicted_N[labelled_N],
                                                        len(self.vocab))
    name = (lambda i: self.vocab.label(i)) if self.vocab is not None else float
    records = []
    for i, p in zip(index_N.tolist(), predicted_N.tolist()):
      example = self.eval_examples[i]
      records.append({**{k: example[k] for k in ("text_a", "text_b") if k in example},
                      "label": example.get("label"), "prediction": name(p)})
    write_jsonl(out_dir, split, step, records)
    return metrics


@TASKS.register("classification")
@dataclasses.dataclass(frozen=True)
class ClassificationTask(EncoderTask):
  regression: bool = False
  kind: ClassVar[str] = "classification"
  loss_unit: ClassVar[str] = "nats per example; squared error per example for a regression"

  @classmethod
  def trains(cls, family: Any) -> bool:
    """Every family with a sequence classifier: BERT's pooled [CLS], a decoder's last token, an encoder-decoder's
    pooled encoder."""
    return family.classifies and not family.fit_only

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> ClassificationData:
    train_examples, glue_vocab = _read(config, "train", data_dir)
    eval_examples, _ = _read(config, "eval", data_dir)
    eval_examples = cap(eval_examples, config.finetune.eval_examples)
    vocab = label_vocab(config, train_examples, glue_vocab)
    L = config.data.seq_len
    unlabelled = sum(e["label"] is None for e in train_examples)
    if unlabelled:
      raise ConfigError(f"config.finetune: {unlabelled} training examples have no label (a test split?); "
                        f"train on a labelled split")
    train = labelled.encode_examples(train_examples, tokenizer, L, vocab)
    eval_ = labelled.encode_examples(eval_examples, tokenizer, L, vocab)
    kind = "regression" if vocab is None else f"{len(vocab)} classes {list(vocab.labels)}"
    summary = f"{len(train_examples)} train and {len(eval_examples)} eval examples, {kind}"
    return ClassificationData(config, train, eval_, summary, eval_examples, vocab)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo,
             data: ClassificationData | None = None) -> "ClassificationTask":
    f = config.finetune
    if data is not None:
      num_outputs = data.num_outputs
    elif f.regression:
      num_outputs = 1
    elif f.labels.strip():
      num_outputs = len(f.labels.split(","))
    else:
      raise ConfigError("config.finetune.labels is empty: without the data the number of classes is unknown; "
                        "list the class names, e.g. 'negative,positive'")
    model = model_config(config, vocab.size).sequence_classifier(num_outputs)
    return cls(model, f.freeze_embeddings, f.freeze_layers, config.data.seq_len, f.regression)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    L = self.seq_len
    labels = ((), jnp.float32) if self.regression else ((), jnp.int32)
    return abstract_arrays({"inputs": ((L,), jnp.int32), "token_types": ((L,), jnp.int32),
                            "segment_ids": ((L,), jnp.int32), "labels": labels}, batch_size)

  def _per_example(self, logits_BC: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss [B], correct [B], labelled [B]): cross-entropy or squared error; unlabelled rows weigh 0."""
    if self.regression:
      known_B = jnp.isfinite(labels_B)
      target_B = jnp.where(known_B, labels_B, 0.0)
      return jnp.square(logits_BC[:, 0] - target_B), jnp.zeros_like(target_B), known_B.astype(jnp.float32)
    known_B = labels_B >= 0
    target_B = jnp.where(known_B, labels_B, 0)
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, target_B)
    correct_B = (logits_BC.argmax(-1) == target_B).astype(jnp.float32)
    return nll_B, correct_B, known_B.astype(jnp.float32)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits_BC = self.apply(params, batch, deterministic=False, rng=rng)
    loss_B, correct_B, weight_B = self._per_example(logits_BC, batch["labels"])
    n = jnp.maximum(weight_B.sum(), 1.0)
    loss = (loss_B * weight_B).sum() / n
    aux = {"loss": loss, "tokens": weight_B.sum()}
    if not self.regression:
      aux["accuracy"] = (correct_B * weight_B).sum() / n
    return loss, aux

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    logits_BC = self.apply(params, batch, deterministic=True)
    loss_B, correct_B, weight_B = self._per_example(logits_BC, batch["labels"])
    weight_B = weight_B * row_weights(batch)
    return {"loss": (loss_B * weight_B).sum(), "correct": (correct_B * weight_B).sum(), "examples": weight_B.sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["examples"], 1.0)
    out = {"loss": sums["loss"] / n, "examples": sums["examples"]}
    if not self.regression:
      out["accuracy"] = sums["correct"] / n
    return out

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    logits_BC = self.apply(params, batch, deterministic=True)
    return {"prediction": logits_BC[:, 0] if self.regression else logits_BC.argmax(-1).astype(jnp.int32)}
