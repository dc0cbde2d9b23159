"""The one Transformer stack that every attention model is made of, and the config it reads.

`TransformerStack` is everything between the token embeddings and the output head: the position encoding, the
embedding norm (post-norm stacks), dropout, the attention mask, the layer loop and the final norm (pre-norm
stacks). Each `Layer` is self-attention, an optional cross-attention over an encoder's output, and an MLP, each a
residual branch, pre-norm x + f(norm(x)) or post-norm norm(x + f(x)); `model.remat` wraps the layer once.

The families are thin compositions of it (lmjax/models/decoder.py, encoder.py, encoder_decoder.py): a causal stack
under an embedding and a vocabulary head (GPT), a bidirectional one (BERT), or one of each joined by
cross-attention (encoder-decoder). A family shares its scope with its stack (`nn.share_scope`), so the stack's
parameters sit directly in the family's tree; `StackNames` holds the names they get there, which never change, so
checkpoints written by any earlier lmjax version restore unchanged.

The stack never asks which position encoding it has: it asks the encoding (lmjax/models/positions/base.py) for an
embedding term, an attention bias and a query/key rotation, each of which may be None.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from lmjax import config as config_lib
from lmjax.models.attention import CrossAttention, KVCache, MultiHeadAttention, attention_mask
from lmjax.models import logit_mask
from lmjax.models.base import ModelConfig, multiplying_params
from lmjax.models.layers import ACTIVATIONS, GATED_ACTIVATIONS, NORMS, Mlp, Norm
from lmjax.models.positions import PositionSettings, Rotation
from lmjax.models.kernels import Needs
from lmjax.registry import ATTENTION, POSITIONS

REMAT_POLICIES = {
    "none": None,  # no rematerialization
    "full": None,  # keep only each layer's input; recompute everything inside it in the backward pass
    "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute elementwise ops
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
  """The fields of every Transformer family (the config's model.* fields of the same names)."""
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0  # 0: one key/value head per query head; fewer gives grouped-query (1: multi-query)
  d_model: int = 128
  mlp_dim: int = 512
  max_len: int = 256  # the trained context; a learned position table has this many rows
  # model.position names the encoding; its own fields (rope_base, ...) live in lmjax/models/positions/<kind>.py.
  position: PositionSettings = PositionSettings(kind="learned")
  norm: str = "layernorm"
  norm_eps: float = 0.0  # 0: the norm's usual epsilon (layernorm 1e-5, rmsnorm 1e-6); BERT uses 1e-12
  pre_norm: bool = True
  activation: str = "gelu"
  use_bias: bool = True
  tie_embeddings: bool = True
  attention_dropout: float = 0.0
  attention_impl: str = "auto"  # lmjax/models/kernels/: xla, cudnn, splash, pallas_gpu, flash, ring, auto (jax)
  remat: str = "none"  # recompute activations in the backward pass: 'none', 'full', or 'save_dots' (keep matmuls)
  # Options of imported checkpoints (lmjax/hf/); each default keeps lmjax's own models as they were.
  head_width: int = 0  # width of one attention head; 0: d_model // num_heads (Gemma and T5 v1.1 set their own)
  qkv_bias: bool = False  # biases on the query/key/value projections even when use_bias=False (Qwen2)
  scaled_attention: bool = True  # False: softmax(q.k) without the 1/sqrt(head width), as T5 was trained
  norm_offset: float = 0.0  # a norm multiplies by (norm_offset + scale): Gemma stores its RMSNorm scale minus 1
  logit_mask: str = ""  # lmjax special tokens (comma-separated: 'pad,bos,...') given no probability: the rows an
  # imported vocabulary lacks, so scores are the checkpoint's own distribution

  attention: ClassVar[bool] = True

  @property
  def head_dim(self) -> int:
    return self.head_width or self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @classmethod
  def section_fields(cls) -> dict[str, Any]:
    return {**super().section_fields(), "position": "learned"}

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict, vocab_size: int) -> "TransformerConfig":
    names = set(cls.section_fields()) | set(POSITIONS.get(section.position).section_fields())
    return cls.from_fields(vocab_size=vocab_size, **{k: section[k] for k in names if k in section})

  @classmethod
  def from_fields(cls, **fields: Any) -> "TransformerConfig":
    """Flat fields as in the config section: `position` is a name, and its encoding's fields sit beside it."""
    fields = dict(fields)
    encoding = POSITIONS.get(fields.pop("position", "learned"))
    own = {}
    for _, other in POSITIONS.items():  # every encoding's fields, so a config naming one may carry the others'
      for key in other.section_fields():
        if key in fields:
          value = fields.pop(key)
          if other is encoding:
            own[key] = value
    return cls(position=encoding.settings(own), **fields)

  def flat_fields(self) -> dict[str, Any]:
    out = super().flat_fields()
    settings = out.pop("position")
    out["position"] = settings.kind
    out.update({k: v for k, v in dataclasses.asdict(settings).items() if k != "kind"})
    return out

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    super().validate(cfg)
    m = cfg.model
    for field in ("num_layers", "num_heads", "d_model", "mlp_dim", "max_len"):
      config_lib.at_least(cfg, f"model.{field}", 1)
    config_lib.at_least(cfg, "model.head_width", 0)
    if m.d_model % m.num_heads and not m.head_width:
      config_lib.fail("model.d_model", m.d_model, f"must be divisible by model.num_heads={m.num_heads} "
                      f"(e.g. {m.num_heads * max(1, m.d_model // m.num_heads)}), or model.head_width set")
    config_lib.at_least(cfg, "model.num_kv_heads", 0)
    if m.num_kv_heads and m.num_heads % m.num_kv_heads:
      divisors = [k for k in range(1, m.num_heads + 1) if m.num_heads % k == 0]
      config_lib.fail("model.num_kv_heads", m.num_kv_heads, f"must divide model.num_heads={m.num_heads} "
                      f"(one of {', '.join(map(str, divisors))}) or be 0 for one per head")
    if m.position not in POSITIONS:
      raise config_lib.ConfigError(POSITIONS.unknown_message(m.position) + ".")
    for field, choices in (("model.norm", NORMS), ("model.activation", (*ACTIVATIONS, *GATED_ACTIVATIONS)),
                           ("model.remat", tuple(REMAT_POLICIES))):
      config_lib.one_of(cfg, field, choices)
    config_lib.at_least(cfg, "model.norm_eps", 0.0)
    logit_mask.validate(cfg)
    config_lib.in_unit_interval(cfg, "model.attention_dropout")
    POSITIONS.get(m.position).validate(cfg)
    cls.validate_attention(cfg)

  @classmethod
  def validate_attention(cls, cfg: ml_collections.ConfigDict) -> None:
    """model.attention_impl against what the model needs of it (position bias, dropout, dtype, mesh.sequence)."""
    m = cfg.model
    if m.attention_impl not in ATTENTION:
      raise config_lib.ConfigError(ATTENTION.unknown_message(m.attention_impl) + ".")
    shards = cfg.mesh.sequence
    needs = Needs(bias=POSITIONS.get(m.position).adds_bias, dropout=m.attention_dropout > 0.0, dtype=m.dtype,
                  sequence_shards=2 if shards == -1 else shards)
    kernel = ATTENTION.get(m.attention_impl)
    if needs.sequence_shards > 1:
      kernel = ATTENTION.get("ring") if m.attention_impl == "auto" else kernel
      if cfg.data.seq_len % max(shards, 1):
        config_lib.fail("data.seq_len", cfg.data.seq_len, f"ring attention splits it over mesh.sequence={shards} "
                        f"devices: use a multiple of {shards}")
      lengths = config_lib.parse_lengths(cfg.train.extra_eval_seq_lens)
      if any(n % max(shards, 1) for n in lengths):
        config_lib.fail("train.extra_eval_seq_lens", cfg.train.extra_eval_seq_lens, f"ring attention splits "
                        f"each over mesh.sequence={shards} devices: use multiples of {shards}")
    why = kernel.unsupported(needs)
    if why:
      able = [n for n, k in ATTENTION.items() if n != "auto" and not k.unsupported(needs)]
      reason = {"it adds no attention bias": f"it adds no attention bias, which model.position={m.position!r} "
                                             f"needs",
                "it has no attention dropout": f"it has no attention dropout (model.attention_dropout="
                                               f"{m.attention_dropout})"}.get(why, why)
      ran = " (which runs 'ring' here)" if kernel.name != m.attention_impl else ""
      config_lib.fail("model.attention_impl", m.attention_impl, f"{reason}{ran}; choose one of "
                      f"{', '.join(able) or 'none: change the model'}")

  @classmethod
  def max_context(cls, section: Any) -> int | None:
    return POSITIONS.get(section.position).max_length(section)

  def context_limit(self) -> int | None:
    return POSITIONS.get(self.position.kind).max_length(self)

  def lookup_tables(self) -> tuple[tuple[str, ...], ...]:
    """Paths of the parameter tables that are read, not multiplied: the position encoding's own parameters (a
    learned table, T5's bias buckets) and, when the output layer has its own weights, the input token table. A
    tied token table is the output layer's matmul and counts once."""
    tables = ((POSITIONS.get(self.position.kind).subtree,),)
    return tables if self.tie_embeddings else (*tables, ("embed", "embedding"))

  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """6 N + 12 num_layers d_model seq_len (nanoGPT, PaLM appendix B): N counts the parameters that multiply every
    token (all but `lookup_tables`); the second term is the attention scores and their weighted sum, forward and
    backward, over the whole seq_len x seq_len square (no discount for a causal mask)."""
    return 6.0 * multiplying_params(params, self.lookup_tables()) + 12.0 * self.num_layers * self.d_model * seq_len


class AttentionInputs(NamedTuple):
  """What every layer's self-attention reads, computed once per stack call."""
  mask_B1LM: jax.Array | None  # None over a cache, where attention masks by position
  bias_BHLM: jax.Array | None
  rotation: Rotation | None
  positions_BL: jax.Array
  segment_ids_BL: jax.Array | None = None  # what mask_B1LM was made from, for kernels that mask tile by tile


class CrossInputs(NamedTuple):
  """A decoder layer's view of the encoder: its cross-attention keys/values and which source tokens each
  target token may read."""
  kv: KVCache
  mask_B1LS: jax.Array


class Layer(nn.Module):
  """Self-attention, optional cross-attention, MLP. With a `cache` (decoding), returns (x, updated cache)."""
  cfg: TransformerConfig
  out_std: float  # init std of the projections writing into the residual stream
  cross_attention: bool = False
  attn_name: str = "attn"
  attn_norm_name: str = "ln_attn"
  causal: bool = False

  def setup(self):
    cfg = self.cfg
    self.attn = MultiHeadAttention(cfg, self.out_std, self.causal, name=self.attn_name)
    self.attn_norm = Norm(cfg, name=self.attn_norm_name)
    if self.cross_attention:
      self.cross_attn = CrossAttention(cfg, self.out_std, name="cross_attn")
      self.cross_norm = Norm(cfg, name="ln_cross")
    self.mlp = Mlp(cfg, self.out_std, name="mlp")
    self.mlp_norm = Norm(cfg, name="ln_mlp")

  def cross_kv(self, enc_BSD: jax.Array) -> KVCache:
    return self.cross_attn.keys_values(enc_BSD)

  def __call__(self, x_BLD: jax.Array, deterministic: bool, inputs: AttentionInputs,
               cross: CrossInputs | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    new_cache = []

    def attend(h_BLD):
      out = self.attn(h_BLD, inputs.mask_B1LM, deterministic, positions_BL=inputs.positions_BL,
                      bias_BHLM=inputs.bias_BHLM, rotation=inputs.rotation, segment_ids_BL=inputs.segment_ids_BL,
                      cache=cache)
      if cache is None:
        return out
      new_cache.append(out[1])
      return out[0]

    branches = [(self.attn_norm, attend)]
    if self.cross_attention:
      branches.append((self.cross_norm, lambda h: self.cross_attn(h, cross.kv, cross.mask_B1LS, deterministic)))
    branches.append((self.mlp_norm, lambda h: self.mlp(h, deterministic)))
    for norm, branch in branches:
      if self.cfg.pre_norm:
        x_BLD = x_BLD + branch(norm(x_BLD))
      else:
        x_BLD = norm(x_BLD + branch(x_BLD))
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    # Recorded only when the caller makes 'intermediates' mutable (distillation matches hidden states); a no-op
    # otherwise, so default outputs and speed are unchanged.
    self.sow("intermediates", "hidden", x_BLD)
    return x_BLD if cache is None else (x_BLD, new_cache[0])


def remat_layer(policy: str) -> type[nn.Module]:
  """The layer class with activation rematerialization: memory for compute, per model.remat."""
  if policy == "none":
    return Layer
  # Argument 2 (counting self) is `deterministic`, a Python bool that picks code paths, so it must stay static.
  return nn.remat(Layer, policy=REMAT_POLICIES[policy], static_argnums=(2,), prevent_cse=True)


def empty_cache(cfg: TransformerConfig, num_layers: int, batch: int, length: int) -> tuple[KVCache, ...]:
  """Empty self-attention caches of `num_layers` layers for `length` positions; plain arrays, so callers can jit,
  donate and reorder them freely. The shapes follow from the config alone (no parameters needed)."""
  return tuple(KVCache.zeros(batch, length, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype))
               for _ in range(num_layers))


@dataclasses.dataclass(frozen=True)
class StackNames:
  """Where the stack's parameters live in the family's tree (the encoder-decoder keeps its historical names)."""
  layer: str = "layer_{}"
  positions_prefix: str = ""  # before the encoding's subtree ('positions', 'relative_bias')
  final_norm: str = "ln_final"
  embed_norm: str = "ln_embed"
  dropout: str = "dropout"
  attn: str = "attn"
  attn_norm: str = "ln_attn"


class TransformerStack(nn.Module):
  """x_BLD token embeddings (plus anything the family adds, `added_BLD`) -> [B, L, D] hidden states."""
  cfg: TransformerConfig
  causal: bool
  num_layers: int
  cross_attention: bool = False
  normalize_embeddings: bool = True  # post-norm: a norm on the embedding sum before the first layer (BERT)
  names: StackNames = StackNames()

  def setup(self):
    cfg, names = self.cfg, self.names
    encoding = POSITIONS.get(cfg.position.kind)
    self.positions = encoding(cfg, bidirectional=not self.causal, name=names.positions_prefix + encoding.subtree)
    # GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(branches * layers).
    out_std = cfg.init_std / math.sqrt((3 if self.cross_attention else 2) * self.num_layers)
    layer = remat_layer(cfg.remat)
    self.layers = [layer(cfg, out_std, self.cross_attention, names.attn, names.attn_norm, self.causal,
                         name=names.layer.format(i)) for i in range(self.num_layers)]
    if cfg.pre_norm:
      self.final_norm = Norm(cfg, name=names.final_norm)  # blocks normalize their inputs: the output needs it once
    elif self.normalize_embeddings:
      self.embed_norm = Norm(cfg, name=names.embed_norm)  # blocks normalize their outputs: the input needs it once
    self.dropout = nn.Dropout(cfg.dropout, name=names.dropout)

  def cross_kv(self, enc_BSD: jax.Array) -> tuple[KVCache, ...]:
    """Every layer's cross-attention keys and values of an encoder output."""
    return tuple(layer.cross_kv(enc_BSD) for layer in self.layers)

  def init_cache(self, batch: int, length: int) -> tuple[KVCache, ...]:
    return empty_cache(self.cfg, self.num_layers, batch, length)

  def __call__(self, x_BLD: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
               added_BLD: jax.Array | None = None, cross: tuple[KVCache, ...] | None = None,
               cross_mask_B1LS: jax.Array | None = None,
               cache: tuple[KVCache, ...] | None = None) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
    """`segment_ids_BL` is 0 at padding and equal within a document (None: one document per row); `positions_BL`
    counts from 0 in each document. Over a `cache` (one KVCache per layer), the new tokens attend to every slot up
    to their own positions and the result is (x, updated cache)."""
    cfg = self.cfg
    B, L = x_BLD.shape[:2]
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    # Keys are this call's tokens, or when decoding every cache slot, whose position is its index.
    kv_positions_BM, num_positions = None, 0
    if cache is not None:
      num_positions = cache[0].k_BKMd.shape[2]
      kv_positions_BM = jnp.arange(num_positions, dtype=jnp.int32)[None]
    embedding_BLD = self.positions.embedding(positions_BL, num_positions)
    if embedding_BLD is not None:
      x_BLD = x_BLD + embedding_BLD
    if added_BLD is not None:
      x_BLD = x_BLD + added_BLD
    if not cfg.pre_norm and self.normalize_embeddings:
      x_BLD = self.embed_norm(x_BLD)
    x_BLD = self.dropout(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))

    mask_B1LM = attention_mask(segment_ids_BL, causal=self.causal, length=L) if cache is None else None
    inputs = AttentionInputs(mask_B1LM, self.positions.bias(positions_BL, kv_positions_BM),
                             self.positions.rotation(positions_BL), positions_BL,
                             segment_ids_BL if cache is None else None)
    new_cache = []
    for i, layer in enumerate(self.layers):
      layer_cross = None if cross is None else CrossInputs(cross[i], cross_mask_B1LS)
      if cache is None:
        x_BLD = layer(x_BLD, deterministic, inputs, layer_cross)
      else:
        x_BLD, layer_cache = layer(x_BLD, deterministic, inputs, layer_cross, cache[i])
        new_cache.append(layer_cache)
    if cfg.pre_norm:
      x_BLD = self.final_norm(x_BLD)
    return x_BLD if cache is None else (x_BLD, tuple(new_cache))
