"""Token classification (named-entity tagging) on the BERT encoder from CoNLL-format files.

Each word's tag is predicted at its first subword (lmjax.data.conll); the loss is the cross-entropy over those
positions. Metrics: token accuracy (per word) from the eval sums, and entity-level precision, recall and F1
(seqeval's default mode, the CoNLL-2003 metric) from the predicted tag sequences.
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
from lmjax.data import conll
from lmjax.data.labelled import LabelVocab
from lmjax.data.tokenizers import Tokenizer
from lmjax.models import model_config
from lmjax.models.finetune_heads import TokenClassifier
from lmjax.registry import TASKS
from lmjax.tasks.base import VocabInfo
from lmjax.tasks.finetune import EncoderTask, ExampleData, abstract_arrays, cap, row_weights, write_jsonl

DEVICE_KEYS = ("inputs", "token_types", "segment_ids", "labels", "label_weights")


@dataclasses.dataclass(frozen=True)
class TaggingData(ExampleData):
  eval_sentences: list[dict] = dataclasses.field(default_factory=list)
  eval_words: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # word_ids, num_words, label_weights
  vocab: LabelVocab | None = None

  def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
            out_dir: Path | None) -> dict[str, float]:
    rows = {k: v[index_N] for k, v in self.eval_words.items()}
    predicted = conll.predicted_tags(predictions["tags"], rows, self.vocab)
    gold = [self.eval_sentences[i]["tags"] for i in index_N.tolist()]
    scores = finetune_metrics.entity_scores(gold, predicted)
    write_jsonl(out_dir, split, step, [{"words": self.eval_sentences[i]["words"], "tags": g, "predicted": p}
                                       for i, g, p in zip(index_N.tolist(), gold, predicted)])
    return {f"entity_{k}": v for k, v in scores.items()}


@TASKS.register("tagging")
@dataclasses.dataclass(frozen=True)
class TaggingTask(EncoderTask):
  kind: ClassVar[str] = "tagging"
  loss_unit: ClassVar[str] = "nats per tagged word (its first token)"

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> TaggingData:
    f = config.finetune
    train_sentences = conll.read_conll(f.train_file, f.tag_column)
    eval_sentences = cap(conll.read_conll(f.eval_file, f.tag_column), f.eval_examples)
    # The tag set is closed (CoNLL's 9 tags): an eval tag the training file lacks still needs an id to be scored.
    vocab = conll.tag_vocab(train_sentences + eval_sentences)
    L = config.data.seq_len
    train = conll.encode_sentences(train_sentences, tokenizer, L, vocab)
    eval_ = conll.encode_sentences(eval_sentences, tokenizer, L, vocab)
    summary = (f"{len(train_sentences)} train and {len(eval_sentences)} eval sentences, {len(vocab)} tags "
               f"{list(vocab.labels)}")
    return TaggingData(config, {k: train[k] for k in DEVICE_KEYS}, {k: eval_[k] for k in DEVICE_KEYS}, summary,
                       eval_sentences, {k: eval_[k] for k in ("word_ids", "num_words", "label_weights")}, vocab)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo,
             data: TaggingData | None = None) -> "TaggingTask":
    f = config.finetune
    if data is None:
      # Compiling without data (lmjax.aot, benchmarks): CoNLL-2003's 9 BIO tags.
      num_tags = 9
    else:
      num_tags = len(data.vocab)
    model = TokenClassifier(model_config(config, vocab.size), num_tags)
    return cls(model, f.freeze_embeddings, f.freeze_layers, config.data.seq_len)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    L = self.seq_len
    shapes = {k: ((L,), jnp.int32) for k in ("inputs", "token_types", "segment_ids", "labels")}
    return abstract_arrays({**shapes, "label_weights": ((L,), jnp.float32)}, batch_size)

  def _nll(self, logits_BLT: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLT, batch["labels"])
    correct_BL = (logits_BLT.argmax(-1) == batch["labels"]).astype(jnp.float32)
    return nll_BL, correct_BL

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll_BL, correct_BL = self._nll(self.apply(params, batch, deterministic=False, rng=rng), batch)
    weights_BL = batch["label_weights"]
    words = weights_BL.sum()
    loss = (nll_BL * weights_BL).sum() / jnp.maximum(words, 1.0)
    return loss, {"loss": loss, "tokens": words,
                  "accuracy": (correct_BL * weights_BL).sum() / jnp.maximum(words, 1.0)}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    nll_BL, correct_BL = self._nll(self.apply(params, batch, deterministic=True), batch)
    weights_BL = batch["label_weights"] * row_weights(batch)[:, None]
    return {"loss": (nll_BL * weights_BL).sum(), "correct": (correct_BL * weights_BL).sum(),
            "words": weights_BL.sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["words"], 1.0)
    return {"loss": sums["loss"] / n, "accuracy": sums["correct"] / n, "words": sums["words"]}

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    return {"tags": self.apply(params, batch, deterministic=True).argmax(-1).astype(jnp.int32)}
