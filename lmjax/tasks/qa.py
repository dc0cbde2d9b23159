"""Extractive question answering (SQuAD v1.1/v2.0 JSON) on the BERT encoder.

Inputs are [CLS] question [SEP] context-window [SEP]; a long context gives several windows, finetune.doc_stride
tokens apart (lmjax.data.squad). The loss is the mean of the start and end cross-entropies over the window's
positions (an answer outside the window, or none, points at [CLS]). At eval the best span over all windows of a
question becomes its answer text, scored with the official SQuAD normalization (exact match and F1 as fractions; the
SQuAD script prints them times 100). With unanswerable questions in the eval file (v2.0) a question is answered ""
when its [CLS] score beats the best span.

Two eval metrics measure different things and can disagree:
  exact_match, f1         per question: the best valid span (start <= end, at most finetune.max_answer_words
                          words) over all of the question's windows, as text, against the gold answers.
  window_start_end_match  per window: the fraction of windows whose start argmax and end argmax (taken
                          independently, with no start <= end constraint) both land on the window's gold
                          positions, [CLS] for a window that does not hold the answer. A training diagnostic:
                          the windows without the answer count too, and a question with several windows counts
                          several times, so it is neither exact_match nor comparable to it.
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
from lmjax.data import squad
from lmjax.data.tokenizers import Tokenizer
from lmjax.models import model_config
from lmjax.models.finetune_heads import SpanExtractor
from lmjax.registry import TASKS
from lmjax.tasks.base import VocabInfo
from lmjax.tasks.finetune import EncoderTask, ExampleData, abstract_arrays, cap, row_weights, write_jsonl

DEVICE_KEYS = ("inputs", "token_types", "segment_ids", "start_positions", "end_positions")
HOST_KEYS = ("offsets", "word_ids", "max_context", "example_index")


@dataclasses.dataclass(frozen=True)
class QaData(ExampleData):
  eval_examples: list[dict] = dataclasses.field(default_factory=list)
  eval_features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # HOST_KEYS, one row per window
  max_answer_words: int = 30

  def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
            out_dir: Path | None) -> dict[str, float]:
    features = {k: v[index_N] for k, v in self.eval_features.items()}
    v2 = any(e["is_impossible"] for e in self.eval_examples)
    answers = squad.best_answers(self.eval_examples, features, predictions["start_logits"],
                                 predictions["end_logits"], max_answer_words=self.max_answer_words,
                                 null_threshold=0.0 if v2 else None)
    scored = [e for e in self.eval_examples if e["id"] in answers]
    scores = finetune_metrics.squad_scores(answers, squad.gold_answers(scored))
    write_jsonl(out_dir, split, step, [{"id": e["id"], "question": e["question"], "prediction": answers[e["id"]],
                                        "answers": [a["text"] for a in e["answers"]]} for e in scored])
    return scores


@TASKS.register("qa")
@dataclasses.dataclass(frozen=True)
class QaTask(EncoderTask):
  kind: ClassVar[str] = "qa"
  loss_unit: ClassVar[str] = "nats per window, mean of the start and end cross-entropies"

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> QaData:
    f = config.finetune
    featurize = lambda examples: squad.make_features(examples, tokenizer, config.data.seq_len, f.doc_stride,
                                                     f.max_query_len)
    train_examples = squad.read_squad(f.train_file)
    eval_examples = cap(squad.read_squad(f.eval_file), f.eval_examples)
    train, eval_ = featurize(train_examples), featurize(eval_examples)
    summary = (f"{len(train_examples)} train questions in {len(train['inputs'])} windows, {len(eval_examples)} "
               f"eval questions in {len(eval_['inputs'])} windows")
    return QaData(config, {k: train[k] for k in DEVICE_KEYS}, {k: eval_[k] for k in DEVICE_KEYS}, summary,
                  eval_examples, {k: eval_[k] for k in HOST_KEYS}, f.max_answer_words)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: QaData | None = None) -> "QaTask":
    f = config.finetune
    return cls(SpanExtractor(model_config(config, vocab.size)), f.freeze_embeddings, f.freeze_layers,
               config.data.seq_len)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    L = self.seq_len
    shapes = {k: ((L,), jnp.int32) for k in ("inputs", "token_types", "segment_ids")}
    return abstract_arrays({**shapes, "start_positions": ((), jnp.int32), "end_positions": ((), jnp.int32)},
                           batch_size)

  def _per_window(self, params, batch, **kwargs) -> tuple[jax.Array, jax.Array]:
    """(loss [B], both ends right [B])."""
    start_BL, end_BL = self.apply(params, batch, **kwargs)
    nll_B = (optax.softmax_cross_entropy_with_integer_labels(start_BL, batch["start_positions"])
             + optax.softmax_cross_entropy_with_integer_labels(end_BL, batch["end_positions"])) / 2
    exact_B = (start_BL.argmax(-1) == batch["start_positions"]) & (end_BL.argmax(-1) == batch["end_positions"])
    return nll_B, exact_B.astype(jnp.float32)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    nll_B, _ = self._per_window(params, batch, deterministic=False, rng=rng)
    loss = nll_B.mean()
    return loss, {"loss": loss, "tokens": jnp.asarray(nll_B.shape[0], jnp.float32)}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    nll_B, exact_B = self._per_window(params, batch, deterministic=True)
    w_B = row_weights(batch)
    return {"loss": (nll_B * w_B).sum(), "start_end_match": (exact_B * w_B).sum(), "windows": w_B.sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["windows"], 1.0)
    return {"loss": sums["loss"] / n, "window_start_end_match": sums["start_end_match"] / n,
            "windows": sums["windows"]}

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    start_BL, end_BL = self.apply(params, batch, deterministic=True)
    return {"start_logits": start_BL, "end_logits": end_BL}
