"""Sequence to sequence (translation, summarization) with the encoder-decoder: task='seq2seq', model.name='encdec'.

Training is teacher forcing on padded pairs, or with seq2seq.pack several pairs per row (lmjax.data.parallel): the
decoder reads <bos> y and predicts y <eos> with label-smoothed cross-entropy (seq2seq.label_smoothing; the smoothed
target puts 1 - eps on the true token and eps spread uniformly over the vocabulary less model.logit_mask, as in
Vaswani et al.). Evaluation reports that loss, the unsmoothed NLL with its perplexity and token accuracy over the
eval batches, and, through the predict/score hook, BLEU and chrF (SacreBLEU) or ROUGE of beam-search translations of the first seq2seq.eval_decode_examples eval pairs; the
translations go to workdir/predictions/<split>_step<N>.jsonl and the scores with their signatures to
<split>_step<N>.scores.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lmjax import config as config_lib
from lmjax import decode, text_metrics
from lmjax.data import parallel, sources
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer
from lmjax.models import family, logit_mask, model_config
from lmjax.models.base import ModelConfig
from lmjax.models.vocab_head import token_stats
from lmjax.registry import TASKS
from lmjax.tasks.base import Batch, Task, TaskData, VocabInfo

METRICS = ("bleu", "chrf", "rouge")

# Translation or summarization with the encoder-decoder (model.name='encdec'). Pairs come from data.paths: one TSV
# file (source TAB target) or two aligned files 'train.de,train.en'; or from a TFDS dataset (data.source='tfds')
# whose features source_lang/target_lang hold the two sides.
FIELDS = {
    "source_lang": "",  # TFDS feature of the source side, e.g. 'de' for wmt14_translate/de-en, 'article'
    "target_lang": "",  # TFDS feature of the target side, e.g. 'en', 'highlights'
    "eval_paths": "",  # validation pairs (same format as data.paths); '' holds out data.validation_fraction
    "test_paths": "",  # optional test pairs, evaluated and scored as split 'test' at every eval
    "source_max_len": 64,  # source tokens kept (EOS included); longer sources are cut
    "target_max_len": 64,  # target tokens kept (EOS included); longer targets are cut
    "pack": False,  # fill each train row with several pairs (attention stays within a pair): less padding
    "label_smoothing": 0.1,  # the train loss; eval also reports the unsmoothed NLL and its perplexity
    "beam_size": 4,  # eval decoding (and the generation CLI's default for these runs)
    "length_penalty": 0.6,  # GNMT alpha of the beam search
    "max_decode_len": 0,  # new tokens at most when decoding; 0 -> seq2seq.target_max_len
    "metrics": "bleu,chrf",  # computed from the decoded eval examples: 'bleu', 'chrf', 'rouge'; '' for none
    "bleu_tokenize": "13a",  # SacreBLEU tokenizer ('13a', 'intl', 'char', 'none', ...)
    "eval_decode_examples": 256,  # eval examples decoded for the metrics (the loss uses all eval batches)
}


def _validate(cfg: ml_collections.ConfigDict) -> None:
  if not config_lib.reads(cfg, "seq2seq"):
    return
  s, d, m = cfg.seq2seq, cfg.data, cfg.model
  if d.source == "embedded":
    config_lib.fail("data.source", d.source, "task='seq2seq' needs parallel data: data.source='files' with "
                    "data.paths 'pairs.tsv' or 'train.de,train.en', or 'tfds' with seq2seq.source_lang and "
                    "seq2seq.target_lang")
  if d.source in ("tfds", "hf"):
    for field in ("source_lang", "target_lang"):
      if not s[field].strip():
        config_lib.fail(f"seq2seq.{field}", s[field], f"data.source={d.source!r} needs the features (columns) of "
                        f"both sides, e.g. source_lang='de', target_lang='en' for wmt14_translate/de-en, or "
                        f"'translation.de' and 'translation.en' for a Hugging Face translation dataset")
  context = family(m.name).max_context(m)
  for field in ("source_max_len", "target_max_len"):
    config_lib.at_least(cfg, f"seq2seq.{field}", 2)
    if context is not None and s[field] > context:
      config_lib.fail(f"seq2seq.{field}", s[field], f"exceeds model.max_len={context}, the longest input "
                      f"model.position={m.position!r} allows; raise model.max_len or lower it")
  if not 0.0 <= s.label_smoothing < 1.0:
    config_lib.fail("seq2seq.label_smoothing", s.label_smoothing, "must be in [0, 1) (Vaswani et al.: 0.1)")
  config_lib.at_least(cfg, "seq2seq.beam_size", 1)
  config_lib.at_least(cfg, "seq2seq.length_penalty", 0.0)
  config_lib.at_least(cfg, "seq2seq.max_decode_len", 0)
  config_lib.at_least(cfg, "seq2seq.eval_decode_examples", 0)
  if context is not None and (s.max_decode_len or s.target_max_len) + 1 > context:
    config_lib.fail("seq2seq.max_decode_len", s.max_decode_len, f"plus <bos> exceeds model.max_len={context} for "
                    f"model.position={m.position!r}; lower it (0 takes seq2seq.target_max_len) or raise "
                    f"model.max_len")
  metrics = [x.strip() for x in s.metrics.split(",") if x.strip()]
  if any(x not in METRICS for x in metrics):
    config_lib.fail("seq2seq.metrics", s.metrics, f"give a comma-separated subset of {', '.join(METRICS)}, or ''")


config_lib.register_section("seq2seq", FIELDS, _validate)

SOURCE_KEYS, TARGET_KEYS = parallel.SOURCE_FIELDS, parallel.TARGET_FIELDS
_FOREVER = 2**62  # batch indices of the endless training stream


def pair_texts(config: ml_collections.ConfigDict, data_dir: Path) -> Iterator[str]:
  """Both sides of the train pairs, interleaved: a joint vocabulary for a shared embedding."""
  for source, target in read_split_pairs(config, data_dir)["train"]:
    yield source
    yield target


def prepare_pairs(config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path,
                  encode: Callable[..., dict[str, np.ndarray]], train_keys: Collection[str] | None = None) -> Seq2seqData:
  """Every split's pairs, read and encoded by `encode(pairs, tokenizer, source_len, target_len)`; the train arrays
  keep only `train_keys` when given (what a train batch reads), the eval splits keep their raw pairs beside."""
  s = config.seq2seq
  splits = read_split_pairs(config, data_dir)
  encoded = lambda pairs: encode(pairs, tokenizer, s.source_max_len, s.target_max_len)
  train = encoded(splits["train"])
  if train_keys is not None:
    train = {k: v for k, v in train.items() if k in train_keys}
  evals = {split: pairs for split, pairs in splits.items() if split != "train"}
  return Seq2seqData(config, tokenizer, train, evals, {k: encoded(v) for k, v in evals.items()})


def read_split_pairs(config: ml_collections.ConfigDict, data_dir: Path) -> dict[str, list[parallel.Pair]]:
  """{'train', 'eval' and, with seq2seq.test_paths, 'test'}: the raw text pairs of each split."""
  d, s = config.data, config.seq2seq
  if d.source == "tfds":
    read = lambda split: parallel.open_tfds_pairs(d.tfds_name, split, data_dir, s.source_lang, s.target_lang)
    splits = {"train": read(d.train_split), "eval": read(d.eval_split)}
  elif d.source == "hf":
    read = lambda split: parallel.record_pairs(sources.iter_records(d, split, data_dir), s.source_lang,
                                               s.target_lang, f"data.hf_name={d.hf_name!r} split {split!r}")
    splits = {"train": read(d.train_split), "eval": read(d.eval_split)}
  elif d.source == "files":
    train = parallel.read_pairs(d.paths)
    if s.eval_paths.strip():
      splits = {"train": train, "eval": parallel.read_pairs(s.eval_paths)}
    else:
      train, held_out = parallel.hold_out(train, d.validation_fraction, d.shuffle_seed)
      splits = {"train": train, "eval": held_out}
  else:
    raise DataError(f"data.source={d.source!r}: task='seq2seq' reads pairs from 'files', 'tfds' or 'hf'")
  if s.test_paths.strip():
    splits["test"] = parallel.read_pairs(s.test_paths)
  for split, pairs in splits.items():
    if not pairs:
      raise DataError(f"the {split} split of the parallel data holds no pairs; check data.paths / data.tfds_name")
  return splits


def _metric_names(config: ml_collections.ConfigDict) -> list[str]:
  return [m.strip() for m in config.seq2seq.metrics.split(",") if m.strip()]


class _PairBatches:
  """Global batch k = positions [k*G, (k+1)*G) of the concatenated per-epoch permutations of the pairs; a pure
  function of k, so the iterator's state is one counter and a resumed run sees the batches it would have seen."""

  def __init__(self, arrays: dict[str, np.ndarray], global_batch_size: int, seed: int, process_index: int,
               process_count: int):
    self.arrays, self.seed = arrays, seed
    self.num = arrays["inputs"].shape[0]
    if global_batch_size % process_count:
      raise DataError(f"train.batch_size={global_batch_size} must be a multiple of the process count {process_count}")
    local = global_batch_size // process_count
    self.global_batch_size = global_batch_size
    self.local_offsets = process_index * local + np.arange(local, dtype=np.int64)
    self._permutation = functools.lru_cache(maxsize=4)(self._make_permutation)

  def _make_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed % 2**32, epoch, 3]).permutation(self.num)

  def __call__(self, batch_index: int) -> Batch:
    epochs, offsets = np.divmod(batch_index * self.global_batch_size + self.local_offsets, self.num)
    rows = np.asarray([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)], np.int64)
    return {k: v[rows] for k, v in self.arrays.items()}


class _PackedBatches(_PairBatches):
  """seq2seq.pack: the same epoch permutations, each packed into rows of several pairs (parallel.pack_rows); global
  batch k = rows [k*G, (k+1)*G) of the concatenated epochs' rows. Each epoch's packing is recomputed from its
  permutation, so the stream is still a pure function of k."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    a = self.arrays
    self.source_lengths_N = (a["input_segment_ids"] > 0).sum(1)
    self.target_lengths_N = (a["target_segment_ids"] > 0).sum(1)
    self.S, self.T = a["inputs"].shape[1], a["targets"].shape[1]
    self._rows = functools.lru_cache(maxsize=4)(self._make_rows)
    self._ends = [0]  # _ends[e + 1]: packed rows in epochs 0..e

  def _make_rows(self, epoch: int) -> list[list[int]]:
    return parallel.pack_rows(self.source_lengths_N, self.target_lengths_N, self._permutation(epoch), self.S, self.T)

  def _locate(self, position: int) -> tuple[int, int]:
    while self._ends[-1] <= position:
      self._ends.append(self._ends[-1] + len(self._make_rows(len(self._ends) - 1)))
    epoch = int(np.searchsorted(self._ends, position, side="right")) - 1
    return epoch, position - self._ends[epoch]

  def __call__(self, batch_index: int) -> Batch:
    rows = []
    for position in (batch_index * self.global_batch_size + self.local_offsets).tolist():
      epoch, row = self._locate(position)
      rows.append(self._rows(epoch)[row])
    return parallel.packed_batch(self.arrays, rows)


@dataclasses.dataclass(frozen=True)
class Seq2seqData(TaskData):
  """Encoded train pairs, and each eval split's raw pairs (for references) with their encoded arrays."""
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  train: dict[str, np.ndarray]
  eval_pairs: dict[str, list[parallel.Pair]]
  eval_arrays: dict[str, dict[str, np.ndarray]]

  @property
  def summary(self) -> str:
    evals = ", ".join(f"{len(p)} {split} pairs" for split, p in self.eval_pairs.items())
    return f"{self.train['inputs'].shape[0]} train pairs, {evals}"

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    t = self.config.train
    batches = _PackedBatches if self.config.seq2seq.pack else _PairBatches
    batch_fn = batches(self.train, t.batch_size, self.config.data.shuffle_seed, process_index, process_count)
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.MapDataset.range(_FOREVER).map(batch_fn).to_iter_dataset(read)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    """Every eval pair in order (at most train.eval_batches batches), padding rows with index -1."""
    t = self.config.train
    batch_size = t.eval_batch_size or t.batch_size
    if batch_size % process_count:
      raise DataError(f"train.eval_batch_size={batch_size} must be a multiple of the process count {process_count}")
    local = batch_size // process_count
    sets = {}
    for split, arrays in self.eval_arrays.items():
      n = arrays["inputs"].shape[0]
      num_batches = -(-n // batch_size)
      if t.eval_batches:
        num_batches = min(num_batches, t.eval_batches)
      batches = []
      for k in range(num_batches):
        index = k * batch_size + process_index * local + np.arange(local)
        rows = np.minimum(index, n - 1)
        batch = {key: np.where((index < n).reshape(-1, *([1] * (v.ndim - 1))), v[rows], 0) for key, v in arrays.items()}
        batch["index"] = np.where(index < n, index, -1).astype(np.int32)
        batches.append(batch)
      sets[split] = batches
    return sets

  def score(self, split: str, index_N: np.ndarray, predictions: dict[str, np.ndarray], *, step: int,
            out_dir: Path | None) -> dict[str, float]:
    """BLEU/chrF/ROUGE of the decoded eval pairs against their untokenized references; writes what was decoded."""
    s = self.config.seq2seq
    keep = index_N < s.eval_decode_examples
    order = np.argsort(index_N[keep], kind="stable")
    index_N, tokens_NT = index_N[keep][order], predictions["tokens"][keep][order]
    if not index_N.shape[0]:
      return {}
    pairs = self.eval_pairs[split]
    hypotheses = [self.tokenizer.decode(cut_at_eos(row)) for row in tokens_NT]
    references = [pairs[i][1] for i in index_N]
    scores, signatures = text_metrics.score_texts(hypotheses, references, _metric_names(self.config),
                                                  s.bleu_tokenize)
    for name, signature in signatures.items():
      logging.info("%s step %d: %s over %d decoded pairs, signature %s", split, step, name, len(hypotheses),
                   signature)
    if out_dir is not None:
      out_dir.mkdir(parents=True, exist_ok=True)
      records = [{"index": int(i), "source": pairs[i][0], "reference": pairs[i][1], "hypothesis": h}
                 for i, h in zip(index_N, hypotheses)]
      (out_dir / f"{split}_step{step}.jsonl").write_text(
          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
      summary = {"step": step, "split": split, "decoded": len(hypotheses), "scores": scores,
                 "signatures": signatures, "beam_size": s.beam_size, "length_penalty": s.length_penalty}
      (out_dir / f"{split}_step{step}.scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**scores, "decoded": float(len(hypotheses))}


def cut_at_eos(tokens_T: np.ndarray) -> list[int]:
  tokens = np.asarray(tokens_T).tolist()
  return tokens[: tokens.index(EOS_ID)] if EOS_ID in tokens else tokens


@TASKS.register("seq2seq")
@dataclasses.dataclass(frozen=True)
class Seq2seqTask(Task):
  """Batches: inputs, input_segment_ids, input_positions [B, S]; decoder_inputs, targets, target_segment_ids,
  target_positions [B, T]; eval batches also index [B]. Segment ids are 0 on padding and number the pairs of a
  row from 1 (one pair per row unless seq2seq.pack)."""
  model: Any
  source_len: int
  target_len: int
  label_smoothing: float
  beam_size: int
  length_penalty: float
  max_decode_len: int
  eval_decode_examples: int
  loss_chunk: int = 0  # train.loss_chunk_tokens (lmjax/models/vocab_head.py)
  # model.logit_mask's ids: rows with no probability, so smoothing spreads eps over the others (a share of eps on
  # a row whose log-probability is -1e9 would add ~1e8 to the loss).
  masked_ids: tuple[int, ...] = ()
  family_config: ModelConfig | None = None  # the model's frozen config, which counts its training FLOPs

  model_interface: ClassVar[str] = "seq2seq"
  predicts: ClassVar[bool] = True
  sections: ClassVar[tuple[str, ...]] = ("seq2seq",)
  chunked_loss: ClassVar[bool] = True
  loss_unit: ClassVar[str] = "nats per target token, label-smoothed"

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterator[str]:
    return pair_texts(config, data_dir)

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> Seq2seqData:
    return prepare_pairs(config, tokenizer, data_dir, parallel.encode_pairs)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "Seq2seqTask":
    s = config.seq2seq
    family_config = model_config(config, vocab.size)
    return cls(family_config.build(), s.source_max_len, s.target_max_len,
               s.label_smoothing, s.beam_size, s.length_penalty, s.max_decode_len or s.target_max_len,
               s.eval_decode_examples, config.train.loss_chunk_tokens, logit_mask.parse(config.model.logit_mask),
               family_config=family_config)

  def train_flops(self, params: Any, batch_size: int) -> float | None:
    """Rows are padded (or packed) to source_max_len and target_max_len tokens, and every position is computed."""
    if self.family_config is None:
      return None
    per_pair = self.family_config.flops_per_pair(params, self.source_len, self.target_len)
    return None if per_pair is None else per_pair * batch_size

  def init_args(self) -> tuple[jax.Array, ...]:
    return jnp.zeros((1, self.source_len), jnp.int32), jnp.zeros((1, self.target_len), jnp.int32)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = {k: (batch_size, self.source_len) for k in SOURCE_KEYS} | {k: (batch_size, self.target_len)
                                                                         for k in TARGET_KEYS}
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k, shape in shapes.items()}

  def logits(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None) -> jax.Array:
    rngs = {"dropout": rng} if rng is not None else None
    hidden = {"return_hidden": True} if self.loss_chunk else {}
    return self.model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"], batch["input_segment_ids"],
                            batch["target_segment_ids"], deterministic=deterministic, rngs=rngs,
                            source_positions_BS=batch["input_positions"],
                            target_positions_BL=batch["target_positions"], **hidden)

  def _token_losses(self, logits_BLV: jax.Array, targets_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (smoothed, plain) cross-entropies and hits [B, L] of logits (or of a chunk of them)."""
    logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
    nll_BL = -jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]
    eps = self.label_smoothing
    if self.masked_ids:
      kept_V = np.ones(logp_BLV.shape[-1], np.float32)
      kept_V[list(self.masked_ids)] = 0.0
      uniform_BL = (logp_BLV * kept_V).sum(-1) / kept_V.sum()
    else:
      uniform_BL = logp_BLV.mean(-1)
    smoothed_BL = (1.0 - eps) * nll_BL - eps * uniform_BL if eps else nll_BL
    return smoothed_BL, nll_BL, logits_BLV.argmax(-1) == targets_BL

  def _losses(self, logits_BLV, targets_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return token_stats(self._token_losses, [logits_BLV], [targets_BL], chunk=self.loss_chunk)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    smoothed_BL, nll_BL, _ = self._losses(self.logits(params, batch, deterministic=False, rng=rng),
                                          batch["targets"])
    mask_BL = (batch["target_segment_ids"] > 0).astype(jnp.float32)
    tokens = mask_BL.sum()
    loss = (smoothed_BL * mask_BL).sum() / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "nll": (nll_BL * mask_BL).sum() / jnp.maximum(tokens, 1.0), "tokens": tokens}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    smoothed_BL, nll_BL, hit_BL = self._losses(self.logits(params, batch, deterministic=True), batch["targets"])
    mask_BL = ((batch["target_segment_ids"] > 0) & (batch["index"][:, None] >= 0)).astype(jnp.float32)
    return {"smoothed": (smoothed_BL * mask_BL).sum(), "nll": (nll_BL * mask_BL).sum(), "tokens": mask_BL.sum(),
            "correct": (hit_BL * mask_BL).sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    tokens = max(sums["tokens"], 1.0)
    nll = sums["nll"] / tokens
    return {"loss": sums["smoothed"] / tokens, "nll": nll, "perplexity": float(np.exp(min(nll, 80.0))),
            "accuracy": sums["correct"] / tokens, "tokens": tokens}

  def translate(self, params, source_BS: jax.Array, source_lengths_B: jax.Array) -> jax.Array:
    """[B, N] the best beam's new tokens for each source (ending at <eos>, then padding)."""
    B = source_BS.shape[0]
    bos_B1 = jnp.full((B, 1), BOS_ID, jnp.int32)
    tokens_BWT, _ = decode.beam_search(decode.step_decoder(self.model), params, bos_B1, jnp.ones((B,), jnp.int32),
                                       beam_size=self.beam_size, max_new_tokens=self.max_decode_len,
                                       alpha=self.length_penalty,
                                       encoder_inputs={"tokens": source_BS, "lengths": source_lengths_B})
    return tokens_BWT[:, 0, 1:]

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    """Beam search on batches holding one of the first eval_decode_examples pairs; later batches skip it."""
    lengths_B = (batch["input_segment_ids"] > 0).sum(-1).astype(jnp.int32)
    B = batch["inputs"].shape[0]
    wanted = jnp.any((batch["index"] >= 0) & (batch["index"] < self.eval_decode_examples))
    tokens_BN = jax.lax.cond(wanted, lambda: self.translate(params, batch["inputs"], lengths_B),
                             lambda: jnp.zeros((B, self.max_decode_len), jnp.int32))
    return {"tokens": tokens_BN}
