"""The one place where a ConfigDict becomes validated, frozen run settings.

Every config file under configs/ starts from `base_config()` and overrides fields. `validate` checks the whole
tree before anything is compiled and raises `ConfigError` with one line: the field, the bad value, what is valid.
`model_config` turns the `model` section into the frozen dataclass that the Flax modules receive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

TOKENIZER_KINDS = ("char", "byte", "bpe", "unigram", "hf_bpe", "hf_wordpiece")  # hf_*: imported (lmjax.hf)
DATA_SOURCES = ("embedded", "files", "tfds")
DOCUMENT_SPLITS = ("file", "paragraph", "line")
SAMPLING_KINDS = ("epochs", "random")
INVALID_UTF8_POLICIES = ("replace", "fail")
MODEL_NAMES = ("gpt", "ffnn", "lstm", "ngram", "bert", "encdec")
FINETUNE_TASKS = ("classification", "tagging", "qa")
TASK_NAMES = ("causal_lm", "mlm", *FINETUNE_TASKS, "seq2seq")
# The architectures each objective can train: a decoder predicts the next token, an encoder fills in masks.
TASK_MODELS = {"causal_lm": ("gpt", "ffnn", "lstm", "ngram"), "mlm": ("bert",),
               **{task: ("bert",) for task in FINETUNE_TASKS}, "seq2seq": ("encdec",)}
# Knowledge distillation (lmjax/tasks/distill.py): each wraps a base objective and trains its student architectures.
DISTILL_TASKS = {"distill_lm": "causal_lm", "distill_mlm": "mlm", "distill_classification": "classification"}
TASK_NAMES = (*TASK_NAMES, *DISTILL_TASKS)
TASK_MODELS = {**TASK_MODELS, "distill_lm": ("gpt", "ffnn", "lstm"), "distill_mlm": ("bert",),
               "distill_classification": ("bert",)}
POSITION_KINDS = ("learned", "sinusoidal", "none", "rope", "alibi", "t5")
NORM_KINDS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_exact", "relu", "tanh", "swiglu", "geglu")
ATTENTION_IMPLS = ("xla", "jax")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "linear", "constant")
DECAY_MASKS = ("matrices", "all", "none")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "save_dots")
MESH_AXES = ("data", "fsdp", "tensor")
SEQ2SEQ_METRICS = ("bleu", "chrf", "rouge")


class ConfigError(ValueError):
  """A bad config field; the message is one line naming the field and the fix."""


def base_config() -> ml_collections.ConfigDict:
  """Every field lmjax knows, with defaults. Config files override; unknown keys are rejected."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "causal_lm"

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"
  c.data.paths = ""
  c.data.tfds_name = ""
  c.data.text_key = "text"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.data_dir = ""
  c.data.document_split = "paragraph"
  c.data.validation_fraction = 0.1
  c.data.invalid_utf8 = "replace"
  c.data.allow_binary = False  # accept files that look binary (NUL bytes, or mostly undecodable bytes) as text
  c.data.seq_len = 256
  c.data.shuffle_seed = 0
  c.data.sampling = "epochs"  # 'epochs': every window once per epoch; 'random': uniform random offsets (nanoGPT)
  c.data.num_workers = 0

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.kind = "byte"
  c.tokenizer.vocab_size = 0  # sentencepiece only; char/byte vocabularies follow from the data
  c.tokenizer.max_training_chars = 20_000_000

  c.model = ml_collections.ConfigDict()
  c.model.name = "gpt"
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 0  # 0: one key/value head per query head; fewer gives grouped-query (1: multi-query)
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 256
  c.model.position = "learned"
  c.model.rope_base = 10000.0  # position='rope': wavelengths of the rotary frequencies
  c.model.relative_buckets = 32  # position='t5': buckets of the learned relative position bias
  c.model.relative_max_distance = 128  # position='t5': offsets at least this far apart share the last bucket
  c.model.norm = "layernorm"
  c.model.norm_eps = 0.0  # 0: the norm's usual epsilon (layernorm 1e-5, rmsnorm 1e-6); BERT uses 1e-12
  c.model.pre_norm = True
  c.model.activation = "gelu"
  c.model.use_bias = True
  c.model.tie_embeddings = True
  c.model.dropout = 0.0
  c.model.attention_dropout = 0.0
  c.model.attention_impl = "xla"
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"
  c.model.init_std = 0.02
  c.model.remat = "none"  # recompute activations in the backward pass: 'none', 'full', or 'save_dots' (keep matmuls)
  c.model.ffnn_context = 8  # model.name='ffnn': previous tokens the feed-forward LM sees (Bengio et al. 2003)
  c.model.ngram_order = 5  # model.name='ngram': n of the Kneser-Ney n-gram model
  c.model.type_vocab_size = 2  # model.name='bert': token types (segment A / B) the encoder embeds
  c.model.share_embeddings = True  # model.name='encdec': one embedding table for source and target tokens
  c.model.num_decoder_layers = 0  # model.name='encdec': decoder layers; 0 -> model.num_layers

  # task='mlm': BERT pretraining examples, [CLS] A [SEP] B [SEP] (see lmjax/data/mlm_pairs.py).
  c.mlm = ml_collections.ConfigDict()
  c.mlm.mask_prob = 0.15  # fraction of the text tokens of an example that the loss predicts
  c.mlm.mask_token_prob = 0.8  # of those, replaced by <mask>; random_token_prob by a random token; the rest kept
  c.mlm.random_token_prob = 0.1
  c.mlm.max_predictions = 0  # cap on predicted tokens per example; 0: no cap
  c.mlm.nsp = True  # next-sentence prediction: B follows A half of the time; False: single segments, no NSP loss
  c.mlm.short_seq_prob = 0.1  # examples given a random shorter target length, so short inputs are seen too

  # Fine-tuning the BERT encoder: task='classification' (single sentences or pairs; regression), 'tagging' (CoNLL
  # token classification) or 'qa' (SQuAD extractive QA). Examples from train_file/eval_file (.tsv/.jsonl, CoNLL,
  # SQuAD JSON), or for classification a GLUE task prepared with TFDS (tfds_name='glue/sst2', under data.data_dir).
  # The data section stays the tokenizer's corpus, as in pretraining (init_from brings the pretraining tokenizer).
  c.finetune = ml_collections.ConfigDict()
  c.finetune.train_file = ""
  c.finetune.eval_file = ""
  c.finetune.tfds_name = ""  # classification: 'glue/<task>' instead of files
  c.finetune.train_split = "train"
  c.finetune.eval_split = "validation"  # GLUE MNLI: 'validation_matched' or 'validation_mismatched'
  c.finetune.text_fields = "sentence"  # classification: one column/key, or two comma-separated for sentence pairs
  c.finetune.label_field = "label"
  c.finetune.regression = False  # classification: a real-valued target (STS-B), MSE loss, Pearson/Spearman
  c.finetune.labels = ""  # classification: class names in id order, comma-separated; '' sorts the training labels
  c.finetune.tag_column = -1  # tagging: the CoNLL column holding the tag (the word is column 0)
  c.finetune.doc_stride = 128  # qa: tokens between the starts of consecutive windows over a long context
  c.finetune.max_query_len = 64  # qa: question tokens kept
  c.finetune.max_answer_words = 30  # qa: longest answer span considered, in words
  c.finetune.eval_examples = 0  # examples scored at each eval; 0: the whole eval file
  c.finetune.init_from = ""  # workdir of a pretraining run (task='mlm'): its encoder and pooler start this model
  c.finetune.init_step = 0  # that run's checkpoint step; 0: its latest
  c.finetune.freeze_embeddings = False  # keep the token, position and token-type embeddings fixed
  c.finetune.freeze_layers = 0  # keep the first k encoder layers fixed
  c.finetune.head_lr_multiplier = 1.0  # learning rate of the new head (and anything not pretrained) relative to the rest

  # task='seq2seq': translation or summarization with the encoder-decoder (model.name='encdec'). Pairs come from
  # data.paths: one TSV file (source TAB target) or two aligned files 'train.de,train.en'; or from a TFDS dataset
  # (data.source='tfds') whose features source_lang/target_lang hold the two sides.
  c.seq2seq = ml_collections.ConfigDict()
  c.seq2seq.source_lang = ""  # TFDS feature of the source side, e.g. 'de' for wmt14_translate/de-en, 'article'
  c.seq2seq.target_lang = ""  # TFDS feature of the target side, e.g. 'en', 'highlights'
  c.seq2seq.eval_paths = ""  # validation pairs (same format as data.paths); '' holds out data.validation_fraction
  c.seq2seq.test_paths = ""  # optional test pairs, evaluated and scored as split 'test' at every eval
  c.seq2seq.source_max_len = 64  # source tokens kept (EOS included); longer sources are cut
  c.seq2seq.target_max_len = 64  # target tokens kept (EOS included); longer targets are cut
  c.seq2seq.pack = False  # fill each train row with several pairs (attention stays within a pair): less padding
  c.seq2seq.label_smoothing = 0.1  # the train loss; eval also reports the unsmoothed NLL and its perplexity
  c.seq2seq.beam_size = 4  # eval decoding (and the generation CLI's default for these runs)
  c.seq2seq.length_penalty = 0.6  # GNMT alpha of the beam search
  c.seq2seq.max_decode_len = 0  # new tokens at most when decoding; 0 -> seq2seq.target_max_len
  c.seq2seq.metrics = "bleu,chrf"  # computed from the decoded eval examples: 'bleu', 'chrf', 'rouge'; '' for none
  c.seq2seq.bleu_tokenize = "13a"  # SacreBLEU tokenizer ('13a', 'intl', 'char', 'none', ...)
  c.seq2seq.eval_decode_examples = 256  # eval examples decoded for the metrics (the loss uses all eval batches)

  # task='distill_lm' / 'distill_mlm' / 'distill_classification': a student (this config's model) learns from a
  # frozen teacher run's outputs
  # (lmjax/tasks/distill.py). loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the base task's loss.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""  # any lmjax run of the same objective and tokenizer; reloaded on every start
  c.distill.teacher_step = 0  # the teacher's checkpoint step; 0: its latest
  c.distill.alpha = 0.5  # weight of the distillation term; 1 - alpha weighs the loss on the labels
  c.distill.temperature = 2.0  # T: both distributions are softmax(logits / T) in the KL term
  c.distill.hidden_weight = 0.0  # MSE of hidden states at distill.layer_pairs (learned projection if widths differ)
  c.distill.attention_weight = 0.0  # KL between attention maps at distill.layer_pairs
  c.distill.layer_pairs = ""  # 'teacher:student' block indices, e.g. '1:0,3:1'
  c.distill.init_student_layers = ""  # '0,2,4' or 'every_other': student layer i starts as that teacher layer
  c.distill.offline_logits_dir = ""  # train from precomputed teacher top-k logits (python -m lmjax.distill.precompute)
  c.distill.top_k = 32  # logits kept per position by the precompute

  # Devices form a mesh with axes (data, fsdp, tensor); -1 takes the devices the other axes leave. Parameters and
  # activations name logical axes; `rules` maps each logical axis to mesh axes ("" replicates, "a,b" splits over
  # both), so a new sharding layout is a config change, not a code change.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = ml_collections.ConfigDict()
  c.mesh.rules.batch = "data,fsdp"
  c.mesh.rules.activation_tokens = "data,fsdp"
  c.mesh.rules.length = ""
  c.mesh.rules.embed = "fsdp"
  c.mesh.rules.vocab = "tensor"
  c.mesh.rules.mlp = "tensor"
  c.mesh.rules.heads = "tensor"
  c.mesh.rules.kv = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.min_learning_rate = 1e-4  # where cosine/linear decay ends
  c.optim.decay_steps = 0  # 0 -> train.num_steps
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.decay_mask = "matrices"  # decay only kernels/embeddings of rank >= 2, not biases or norm scales
  c.optim.grad_clip_norm = 1.0  # 0 disables clipping

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 12  # global, in sequences
  c.train.num_steps = 2000
  c.train.microbatches = 1  # gradient accumulation: each step sums gradients over this many slices of the batch
  c.train.steps_per_call = 1  # train steps fused into one jitted call (a lax.scan): fewer dispatches for tiny models
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 20  # 0 -> the whole validation split
  c.train.eval_batch_size = 0  # 0 -> train.batch_size
  c.train.extra_eval_seq_lens = ""  # e.g. "512,1024": also evaluate at these context lengths (length extrapolation)
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.async_checkpoints = True
  c.train.sample_prompt = "\n"
  c.train.sample_length = 200
  c.train.sample_temperature = 0.8
  c.train.sample_top_k = 0
  c.train.num_samples = 2
  c.train.plot = True
  c.train.tensorboard = True
  c.train.max_nonfinite_steps = 10  # stop after this many consecutive steps with non-finite loss or gradients
  c.train.allow_config_change = False  # resume a workdir whose saved model/tokenizer/seq_len config differs
  return c


def _fail(field: str, value: Any, expected: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is invalid: {expected}.")


def _check_keys(cfg: ml_collections.ConfigDict, ref: ml_collections.ConfigDict, prefix: str = "") -> None:
  for key in cfg.keys():
    field = f"{prefix}{key}"
    if key not in ref:
      section = f"config.{prefix[:-1]}" if prefix else "config"
      raise ConfigError(f"config.{field} is not a known field (a typo?); {section} has: "
                        f"{', '.join(sorted(ref.keys()))}.")
    if isinstance(ref[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
        _fail(field, cfg[key], "expected a section (ConfigDict)")
      _check_keys(cfg[key], ref[key], f"{field}.")


def _check_types(cfg: ml_collections.ConfigDict, ref: ml_collections.ConfigDict, prefix: str = "") -> None:
  for key in ref.keys():
    field = f"{prefix}{key}"
    if isinstance(ref[key], ml_collections.ConfigDict):
      _check_types(cfg[key], ref[key], f"{field}.")
      continue
    want, value = type(ref[key]), cfg[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      continue
    if want is int and isinstance(value, bool) or not isinstance(value, want):
      _fail(field, value, f"expected {want.__name__}")
    if want is float:
      _check_finite(field, value)


def _check_finite(field: str, value: float) -> None:
  """Every float field passes through here: NaN or inf is never a setting, and would only surface as a diverged
  run after compiling and writing."""
  if not math.isfinite(value):
    _fail(field, value, "must be a finite number, not NaN or inf")


def _one_of(cfg, field: str, choices) -> None:
  value = cfg
  for part in field.split("."):
    value = value[part]
  if value not in choices:
    _fail(field, value, f"choose one of {', '.join(map(str, choices))}")


def _at_least(cfg, field: str, low, *, strict: bool = False) -> None:
  value = cfg
  for part in field.split("."):
    value = value[part]
  if value < low or (strict and value == low):
    _fail(field, value, f"must be {'>' if strict else '>='} {low}")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field. Cheap: touches no data, builds no model."""
  ref = base_config()
  _check_keys(cfg, ref)
  _check_types(cfg, ref)

  for field, choices in (("task", TASK_NAMES), ("data.source", DATA_SOURCES),
                         ("data.document_split", DOCUMENT_SPLITS), ("data.sampling", SAMPLING_KINDS),
                         ("data.invalid_utf8", INVALID_UTF8_POLICIES),
                         ("tokenizer.kind", TOKENIZER_KINDS), ("model.name", MODEL_NAMES),
                         ("model.position", POSITION_KINDS), ("model.norm", NORM_KINDS),
                         ("model.activation", ACTIVATIONS), ("model.attention_impl", ATTENTION_IMPLS),
                         ("model.dtype", DTYPES), ("model.param_dtype", DTYPES), ("model.remat", REMAT_POLICIES),
                         ("optim.name", OPTIMIZERS),
                         ("optim.schedule", SCHEDULES), ("optim.decay_mask", DECAY_MASKS)):
    _one_of(cfg, field, choices)

  d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
  if d.source == "files" and not d.paths.strip():
    _fail("data.paths", d.paths, "data.source='files' needs a file, glob or comma-separated list")
  if d.source == "tfds" and not d.tfds_name.strip():
    _fail("data.tfds_name", d.tfds_name, "data.source='tfds' needs a TFDS dataset name, e.g. 'lm1b'")
  if not 0.0 < d.validation_fraction < 1.0:
    _fail("data.validation_fraction", d.validation_fraction, "must be strictly between 0 and 1")
  _at_least(cfg, "data.seq_len", 1)
  _at_least(cfg, "data.num_workers", 0)
  if cfg.tokenizer.kind in ("bpe", "unigram") and cfg.tokenizer.vocab_size < 16:
    _fail("tokenizer.vocab_size", cfg.tokenizer.vocab_size,
          f"tokenizer.kind={cfg.tokenizer.kind!r} trains a SentencePiece model: set a vocabulary size >= 16, e.g. 4096")
  _at_least(cfg, "tokenizer.max_training_chars", 1000)

  for field in ("num_layers", "num_heads", "d_model", "mlp_dim", "max_len"):
    _at_least(cfg, f"model.{field}", 1)
  if m.name not in TASK_MODELS[cfg.task]:
    _fail("model.name", m.name, f"task={cfg.task!r} trains one of: {', '.join(TASK_MODELS[cfg.task])}; set "
          f"model.name to one of them, or choose the task that trains it")
  attention = m.name in ("gpt", "bert", "encdec")  # the baselines have no attention heads and no position table
  if attention and m.d_model % m.num_heads:
    _fail("model.d_model", m.d_model, f"must be divisible by model.num_heads={m.num_heads} "
          f"(e.g. {m.num_heads * max(1, m.d_model // m.num_heads)})")
  _at_least(cfg, "model.num_kv_heads", 0)
  if m.num_kv_heads and m.num_heads % m.num_kv_heads:
    divisors = [k for k in range(1, m.num_heads + 1) if m.num_heads % k == 0]
    _fail("model.num_kv_heads", m.num_kv_heads, f"must divide model.num_heads={m.num_heads} "
          f"(one of {', '.join(map(str, divisors))}) or be 0 for one per head")
  if attention and m.position == "rope" and (m.d_model // m.num_heads) % 2:
    _fail("model.d_model", m.d_model, f"gives an odd head width {m.d_model // m.num_heads} with "
          f"model.num_heads={m.num_heads}; position='rope' rotates pairs of features, so it must be even")
  _at_least(cfg, "model.rope_base", 1.0, strict=True)
  _at_least(cfg, "model.relative_buckets", 2)
  if m.relative_max_distance <= m.relative_buckets // 2:
    _fail("model.relative_max_distance", m.relative_max_distance,
          f"must exceed model.relative_buckets // 2 = {m.relative_buckets // 2}, where exact buckets end")
  if attention and d.seq_len > m.max_len and m.position == "learned":
    _fail("data.seq_len", d.seq_len, f"exceeds model.max_len={m.max_len} for learned positions; "
          f"raise model.max_len or lower data.seq_len")
  for field in ("dropout", "attention_dropout"):
    if not 0.0 <= m[field] < 1.0:
      _fail(f"model.{field}", m[field], "must be in [0, 1)")
  _at_least(cfg, "model.init_std", 0.0, strict=True)
  _at_least(cfg, "model.ffnn_context", 1)
  _at_least(cfg, "model.ngram_order", 1)
  _at_least(cfg, "model.type_vocab_size", 1)
  _at_least(cfg, "model.norm_eps", 0.0)
  if cfg.task in ("mlm", "distill_mlm"):
    _validate_mlm(cfg)
  _validate_distill(cfg)
  _validate_finetune(cfg)
  _validate_seq2seq(cfg)

  sizes = {axis: cfg.mesh[axis] for axis in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "must be a positive device count, or -1 to take the devices left over")
  if list(sizes.values()).count(-1) > 1:
    _fail("mesh", sizes, "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  for logical, mesh_axes in cfg.mesh.rules.items():
    named = [a.strip() for a in mesh_axes.split(",") if a.strip()]
    unknown = [a for a in named if a not in MESH_AXES]
    if unknown or len(set(named)) != len(named):
      _fail(f"mesh.rules.{logical}", mesh_axes,
            f"give mesh axes from {', '.join(MESH_AXES)} separated by commas, each at most once, or '' to replicate")

  _at_least(cfg, "optim.learning_rate", 0.0, strict=True)
  _at_least(cfg, "optim.min_learning_rate", 0.0)
  _at_least(cfg, "optim.warmup_steps", 0)
  _at_least(cfg, "optim.decay_steps", 0)
  _at_least(cfg, "optim.weight_decay", 0.0)
  _at_least(cfg, "optim.grad_clip_norm", 0.0)
  _at_least(cfg, "optim.eps", 0.0, strict=True)
  for field in ("b1", "b2"):
    if not 0.0 <= o[field] < 1.0:
      _fail(f"optim.{field}", o[field], "must be in [0, 1)")

  for field in ("batch_size", "num_steps", "microbatches", "steps_per_call", "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints", "num_samples", "max_nonfinite_steps"):
    _at_least(cfg, f"train.{field}", 1 if field != "num_samples" else 0)
  for field in ("eval_batches", "eval_batch_size", "sample_length", "sample_top_k"):
    _at_least(cfg, f"train.{field}", 0)
  _at_least(cfg, "train.sample_temperature", 0.0)
  if t.batch_size % t.microbatches:
    _fail("train.microbatches", t.microbatches, f"must divide train.batch_size={t.batch_size}")
  try:
    extra_lens = parse_lengths(t.extra_eval_seq_lens)
  except ValueError:
    extra_lens = [0]
  if any(n < 1 for n in extra_lens):
    _fail("train.extra_eval_seq_lens", t.extra_eval_seq_lens, "give positive integers separated by commas, e.g. '512,1024'")
  for n in extra_lens:
    if attention and n > m.max_len and m.position == "learned":
      _fail("train.extra_eval_seq_lens", t.extra_eval_seq_lens, f"{n} exceeds model.max_len={m.max_len}, the size of "
            f"the learned position table; raise model.max_len")
  for field in ("log_every", "eval_every", "checkpoint_every"):
    if t[field] % t.steps_per_call:
      _fail(f"train.{field}", t[field], f"must be a multiple of train.steps_per_call={t.steps_per_call}")


def _validate_mlm(cfg: ml_collections.ConfigDict) -> None:
  k = cfg.mlm
  if not 0.0 < k.mask_prob < 1.0:
    _fail("mlm.mask_prob", k.mask_prob, "must be strictly between 0 and 1 (BERT: 0.15)")
  for field in ("mask_token_prob", "random_token_prob", "short_seq_prob"):
    if not 0.0 <= k[field] <= 1.0:
      _fail(f"mlm.{field}", k[field], "must be in [0, 1]")
  if k.mask_token_prob + k.random_token_prob > 1.0:
    _fail("mlm.random_token_prob", k.random_token_prob, f"plus mlm.mask_token_prob={k.mask_token_prob} exceeds 1; "
          f"the rest of the predicted tokens are kept, so the two must sum to at most 1 (BERT: 0.8 and 0.1)")
  _at_least(cfg, "mlm.max_predictions", 0)
  specials = 3 if k.nsp else 2  # [CLS] A [SEP] B [SEP], or [CLS] A [SEP]
  if cfg.data.seq_len < specials + 2:
    _fail("data.seq_len", cfg.data.seq_len, f"task='mlm' needs room for {specials} special tokens and some text: "
          f"use at least {specials + 2}, e.g. 128")
  if k.nsp and cfg.model.type_vocab_size < 2:
    _fail("model.type_vocab_size", cfg.model.type_vocab_size, "mlm.nsp=True gives segments A and B two token types: "
          "set it to 2, or mlm.nsp=False")
  if cfg.train.extra_eval_seq_lens.strip():
    _fail("train.extra_eval_seq_lens", cfg.train.extra_eval_seq_lens, "evaluating at other lengths is for "
          "task='causal_lm'; set it to ''")


def _validate_seq2seq(cfg: ml_collections.ConfigDict) -> None:
  s, d, m = cfg.seq2seq, cfg.data, cfg.model
  _at_least(cfg, "model.num_decoder_layers", 0)
  if cfg.task != "seq2seq":
    return
  if d.source == "embedded":
    _fail("data.source", d.source, "task='seq2seq' needs parallel data: data.source='files' with data.paths "
          "'pairs.tsv' or 'train.de,train.en', or 'tfds' with seq2seq.source_lang and seq2seq.target_lang")
  if d.source == "tfds":
    for field in ("source_lang", "target_lang"):
      if not s[field].strip():
        _fail(f"seq2seq.{field}", s[field], "data.source='tfds' needs the TFDS features of both sides, e.g. "
              "source_lang='de', target_lang='en' for wmt14_translate/de-en")
  for field in ("source_max_len", "target_max_len"):
    _at_least(cfg, f"seq2seq.{field}", 2)
    if m.position == "learned" and s[field] > m.max_len:
      _fail(f"seq2seq.{field}", s[field], f"exceeds model.max_len={m.max_len}, the size of the learned position "
            f"table; raise model.max_len or lower it")
  if not 0.0 <= s.label_smoothing < 1.0:
    _fail("seq2seq.label_smoothing", s.label_smoothing, "must be in [0, 1) (Vaswani et al.: 0.1)")
  _at_least(cfg, "seq2seq.beam_size", 1)
  _at_least(cfg, "seq2seq.length_penalty", 0.0)
  _at_least(cfg, "seq2seq.max_decode_len", 0)
  _at_least(cfg, "seq2seq.eval_decode_examples", 0)
  if m.position == "learned" and (s.max_decode_len or s.target_max_len) + 1 > m.max_len:
    _fail("seq2seq.max_decode_len", s.max_decode_len, f"plus <bos> exceeds model.max_len={m.max_len} for learned "
          f"positions; lower it (0 takes seq2seq.target_max_len) or raise model.max_len")
  metrics = [x.strip() for x in s.metrics.split(",") if x.strip()]
  if any(x not in SEQ2SEQ_METRICS for x in metrics):
    _fail("seq2seq.metrics", s.metrics, f"give a comma-separated subset of {', '.join(SEQ2SEQ_METRICS)}, or ''")
  if cfg.train.extra_eval_seq_lens.strip():
    _fail("train.extra_eval_seq_lens", cfg.train.extra_eval_seq_lens, "evaluating at other lengths is for "
          "task='causal_lm'; set it to ''")


def _validate_finetune(cfg: ml_collections.ConfigDict) -> None:
  """A distilled fine-tuning task (distill_classification) reads the same fields as its base task."""
  f, d = cfg.finetune, cfg.data
  task = DISTILL_TASKS.get(cfg.task, cfg.task)
  if task not in FINETUNE_TASKS:
    if f.init_from:
      _fail("finetune.init_from", f.init_from, f"starts a fine-tuning task ({', '.join(FINETUNE_TASKS)}) from a "
            f"pretraining run; task={cfg.task!r} does not use it, so set it to ''")
    return
  if f.tfds_name and task != "classification":
    _fail("finetune.tfds_name", f.tfds_name, "GLUE through TFDS is for task='classification'; give files instead")
  if not f.tfds_name:
    for field in ("train_file", "eval_file"):
      if not f[field].strip():
        how = " (or finetune.tfds_name='glue/<task>')" if task == "classification" else ""
        _fail(f"finetune.{field}", f[field], f"task={cfg.task!r} reads its examples from a file: set "
              f"finetune.train_file and finetune.eval_file{how}")
  if task == "classification":
    fields = [x.strip() for x in f.text_fields.split(",")]
    if len(fields) not in (1, 2) or not all(fields):
      _fail("finetune.text_fields", f.text_fields, "name one text field, or two separated by a comma for pairs")
    if len(fields) == 2 and cfg.model.type_vocab_size < 2:
      _fail("model.type_vocab_size", cfg.model.type_vocab_size, "sentence pairs use token types 0 and 1: set 2")
    if not f.label_field.strip():
      _fail("finetune.label_field", f.label_field, "name the column or key holding the label")
  specials = 3 if task != "tagging" else 2
  if d.seq_len < specials + 2:
    _fail("data.seq_len", d.seq_len, f"task={cfg.task!r} needs room for {specials} special tokens and some text: "
          f"use at least {specials + 2}, e.g. 128")
  if task == "qa":
    _at_least(cfg, "finetune.doc_stride", 1)
    _at_least(cfg, "finetune.max_query_len", 1)
    _at_least(cfg, "finetune.max_answer_words", 1)
    if d.seq_len <= f.max_query_len + 3:
      _fail("data.seq_len", d.seq_len, f"must exceed finetune.max_query_len + 3 = {f.max_query_len + 3} so that "
            f"some context fits beside the question")
  _at_least(cfg, "finetune.eval_examples", 0)
  _at_least(cfg, "finetune.init_step", 0)
  if not 0 <= f.freeze_layers <= cfg.model.num_layers:
    _fail("finetune.freeze_layers", f.freeze_layers, f"must be between 0 and model.num_layers={cfg.model.num_layers}")
  _at_least(cfg, "finetune.head_lr_multiplier", 0.0, strict=True)
  if cfg.train.extra_eval_seq_lens.strip():
    _fail("train.extra_eval_seq_lens", cfg.train.extra_eval_seq_lens, "evaluating at other lengths is for "
          "task='causal_lm'; set it to ''")


def _validate_distill(cfg: ml_collections.ConfigDict) -> None:
  """Fields checkable without the teacher; the teacher run itself is checked when the task opens it."""
  k, m = cfg.distill, cfg.model
  if cfg.task not in DISTILL_TASKS:
    if k.teacher_workdir or k.offline_logits_dir:
      _fail("distill.teacher_workdir" if k.teacher_workdir else "distill.offline_logits_dir",
            k.teacher_workdir or k.offline_logits_dir,
            f"distillation needs task={' or '.join(map(repr, DISTILL_TASKS))}, "
            f"not {cfg.task!r}; set the task or clear the field")
    return
  if not k.teacher_workdir and not k.offline_logits_dir:
    _fail("distill.teacher_workdir", k.teacher_workdir, f"task={cfg.task!r} needs the teacher's run directory (or "
          f"distill.offline_logits_dir with precomputed teacher logits)")
  if cfg.task == "distill_classification" and cfg.finetune.regression:
    _fail("finetune.regression", cfg.finetune.regression, "a regression model has one output and no class "
          "distribution to distil; set it to False, or train the student with task='classification'")
  if cfg.task == "distill_classification" and k.offline_logits_dir:
    _fail("distill.offline_logits_dir", k.offline_logits_dir, "precomputed logits are for distill_lm and "
          "distill_mlm; a classifier's teacher runs online, so set it to ''")
  if not 0.0 <= k.alpha <= 1.0:
    _fail("distill.alpha", k.alpha, "must be in [0, 1] (1: only the teacher's distribution, 0: only the labels)")
  _at_least(cfg, "distill.temperature", 0.0, strict=True)
  _at_least(cfg, "distill.teacher_step", 0)
  _at_least(cfg, "distill.hidden_weight", 0.0)
  _at_least(cfg, "distill.attention_weight", 0.0)
  _at_least(cfg, "distill.top_k", 1)
  try:
    pairs = parse_layer_pairs(k.layer_pairs)
  except ValueError:
    _fail("distill.layer_pairs", k.layer_pairs, "give teacher:student block indices separated by commas, "
          "e.g. '1:0,3:1'")
  needs_layers = k.hidden_weight > 0 or k.attention_weight > 0
  if needs_layers and not pairs:
    _fail("distill.layer_pairs", k.layer_pairs, "distill.hidden_weight or attention_weight > 0 needs layer pairs to "
          "match, e.g. '1:0,3:1' (teacher block 1 to student block 0, ...)")
  if needs_layers and m.name not in ("gpt", "bert"):
    _fail("model.name", m.name, "hidden-state and attention distillation match Transformer blocks (gpt, bert); set "
          "distill.hidden_weight=0 and distill.attention_weight=0")
  for _, student in pairs:
    if student >= m.num_layers:
      _fail("distill.layer_pairs", k.layer_pairs, f"student block {student} does not exist: the student has "
            f"model.num_layers={m.num_layers} (blocks 0..{m.num_layers - 1})")
  if k.offline_logits_dir and needs_layers:
    _fail("distill.offline_logits_dir", k.offline_logits_dir, "precomputed logits carry no hidden states or "
          "attention maps; set distill.hidden_weight=0 and distill.attention_weight=0, or train online")
  if k.init_student_layers:
    try:
      layers = parse_student_layers(k.init_student_layers, m.num_layers)
    except ValueError:
      layers = None
    if layers is None or len(layers) != m.num_layers:
      _fail("distill.init_student_layers", k.init_student_layers, f"give one teacher layer per student layer "
            f"(model.num_layers={m.num_layers}), e.g. '{','.join(str(2 * i) for i in range(m.num_layers))}', or "
            f"'every_other'")
    if not k.teacher_workdir:
      _fail("distill.teacher_workdir", k.teacher_workdir, "distill.init_student_layers copies the teacher's layers; "
            "give its run directory")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{'model': {'d_model': 64}} -> {'model.d_model': 64}: how fields are named in flags, errors and reports."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def parse_lengths(text: str) -> list[int]:
  """'512, 1024' -> [512, 1024]; '' -> []."""
  return [int(part) for part in text.split(",") if part.strip()]


def parse_layer_pairs(text: str) -> list[tuple[int, int]]:
  """distill.layer_pairs: '1:0, 3:1' -> [(1, 0), (3, 1)], (teacher block, student block); '' -> []."""
  pairs = []
  for part in (p.strip() for p in text.split(",")):
    if part:
      teacher, student = (int(x) for x in part.split(":"))
      if teacher < 0 or student < 0:
        raise ValueError(part)
      pairs.append((teacher, student))
  return pairs


def parse_student_layers(text: str, num_layers: int) -> list[int]:
  """distill.init_student_layers: '0,2,4' -> [0, 2, 4]; 'every_other' -> [0, 2, ..., 2 * (num_layers - 1)]."""
  if text.strip() == "every_other":
    return [2 * i for i in range(num_layers)]
  layers = parse_lengths(text)
  if any(i < 0 for i in layers):
    raise ValueError(text)
  return layers


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What the Flax modules see: immutable, hashable, built once from config.model."""
  vocab_size: int
  num_layers: int
  num_heads: int
  d_model: int
  mlp_dim: int
  max_len: int
  num_kv_heads: int = 0
  position: str = "learned"
  rope_base: float = 10000.0
  relative_buckets: int = 32
  relative_max_distance: int = 128
  norm: str = "layernorm"
  norm_eps: float = 0.0
  pre_norm: bool = True
  activation: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  attention_impl: str = "xla"
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02
  remat: str = "none"
  ffnn_context: int = 8
  type_vocab_size: int = 2
  share_embeddings: bool = True
  num_decoder_layers: int = 0
  name: str = "gpt"

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}
  return ModelConfig(vocab_size=vocab_size, **{k: cfg.model[k] for k in fields})

