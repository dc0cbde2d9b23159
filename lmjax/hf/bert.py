"""BERT (BertForPreTraining / BertForMaskedLM / BertModel) <-> the lmjax encoder (model.name='bert').

BERT is post-norm with learned positions, token types, LayerNorm eps 1e-12 and exact (erf) GELU; the lmjax Bert
module has the same parts under 'encoder', 'pooler', 'mlm_head' and 'nsp_head'. HF Linear weights are stored
[out, in], so kernels are transposed; Q, K and V become the fused qkv kernel [D, 3, H, d].

A checkpoint without some head (BertModel has no pretraining heads, BertForMaskedLM no pooler or NSP head) imports
what it has; the missing heads keep lmjax's fresh initialization and the importer says which. Export writes
BertForPreTraining's layout, which transformers loads into any of the three classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax.hf.adapter import Architecture, Plan, needs
from lmjax.hf.files import HfError
from lmjax.hf.tokenizers import read_wordpiece_tokenizer
from lmjax.hf.vocab import VocabMap

ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
HEADS = ("pooler", "mlm_head", "nsp_head")


def model_fields(hf: dict[str, Any], names: set[str] = frozenset()) -> dict[str, Any]:
  act = hf.get("hidden_act", "gelu")
  if act not in ACTIVATIONS:
    raise HfError(f"config.json hidden_act={act!r} has no lmjax equivalent (supported: {', '.join(ACTIVATIONS)})")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise HfError(f"config.json position_embedding_type={hf['position_embedding_type']!r} is not supported; lmjax "
                  f"imports BERT with absolute positions only")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise HfError("config.json is_decoder/add_cross_attention: lmjax imports bidirectional BERT encoders only")
  d_model, heads = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
  if d_model % heads:
    raise HfError(f"config.json hidden_size={d_model} is not divisible by num_attention_heads={heads}")
  return {"name": "bert", "num_layers": hf.get("num_hidden_layers", 12), "num_heads": heads, "num_kv_heads": 0,
          "d_model": d_model, "mlp_dim": hf.get("intermediate_size", 3072),
          "max_len": hf.get("max_position_embeddings", 512), "position": "learned", "norm": "layernorm",
          "norm_eps": float(hf.get("layer_norm_eps", 1e-12)), "pre_norm": False, "activation": ACTIVATIONS[act],
          "use_bias": True, "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
          "dropout": float(hf.get("hidden_dropout_prob", 0.1)),
          "attention_dropout": float(hf.get("attention_probs_dropout_prob", 0.1)),
          "init_std": float(hf.get("initializer_range", 0.02)), "type_vocab_size": hf.get("type_vocab_size", 2)}


def plan(p: Plan, model: dict[str, Any], vocab: VocabMap) -> None:
  """The parts the checkpoint has; the importer initializes the rest."""
  H, D, d = model["num_heads"], model["d_model"], model["d_model"] // model["num_heads"]
  spine = "bert." if any(k.startswith("bert.") for k in p.names) else ""

  def name(hf_name: str) -> str:  # original TF-converted checkpoints name LayerNorm parameters gamma/beta
    for new, old in (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta")):
      if hf_name.endswith(new) and not p.has(hf_name) and p.has(hf_name.replace(new, old)):
        return hf_name.replace(new, old)
    return hf_name

  def norm(path: str, prefix: str) -> None:
    p.add(f"{path}/scale", name(f"{prefix}.LayerNorm.weight"))
    p.add(f"{path}/bias", name(f"{prefix}.LayerNorm.bias"))

  def dense(path: str, prefix: str) -> None:
    p.add(f"{path}/kernel", f"{prefix}.weight", lambda w: w.T)
    p.add(f"{path}/bias", f"{prefix}.bias")

  e = spine + "embeddings."
  p.add("encoder/embed/embedding", e + "word_embeddings.weight", vocab.import_rows)
  p.add("encoder/positions/embedding", e + "position_embeddings.weight")
  p.add("encoder/token_types/embedding", e + "token_type_embeddings.weight")
  norm("encoder/ln_embed", e[:-1])
  for i in range(model["num_layers"]):
    layer, h = f"encoder/layer_{i}/", f"{spine}encoder.layer.{i}."
    qkv = [f"{h}attention.self.{n}" for n in ("query", "key", "value")]
    p.add(layer + "attn/qkv/kernel", tuple(f"{n}.weight" for n in qkv),
          lambda *ws: np.stack([w.T for w in ws], axis=1).reshape(D, 3, H, d))
    p.add(layer + "attn/qkv/bias", tuple(f"{n}.bias" for n in qkv), lambda *bs: np.stack(bs).reshape(3, H, d))
    p.add(layer + "attn/out/kernel", h + "attention.output.dense.weight", lambda w: w.T.reshape(H, d, D))
    p.add(layer + "attn/out/bias", h + "attention.output.dense.bias")
    norm(layer + "ln_attn", h + "attention.output")
    dense(layer + "mlp/wi", h + "intermediate.dense")
    dense(layer + "mlp/wo", h + "output.dense")
    norm(layer + "ln_mlp", h + "output")
  p.ignore(e + "position_ids")
  if p.has(spine + "pooler.dense.weight"):
    dense("pooler/dense", spine + "pooler.dense")
  c = "cls.predictions."
  if p.has(c + "bias"):
    dense("mlm_head/transform", c + "transform.dense")
    norm("mlm_head/ln", c + "transform")
    p.add("mlm_head/bias", c + "bias", vocab.import_rows)
    p.ignore(c + "decoder.bias")  # the same parameter as cls.predictions.bias
    if model["tie_embeddings"]:
      p.ignore(c + "decoder.weight")
    elif not p.has(c + "decoder.weight"):
      raise HfError("config.json tie_word_embeddings=false but the weights have no cls.predictions.decoder.weight")
    else:
      p.add("mlm_head/decoder/kernel", c + "decoder.weight", lambda w: vocab.import_rows(w).T)
  if p.has("cls.seq_relationship.weight"):
    dense("nsp_head", "cls.seq_relationship")


def mismatches(model: Any) -> list[str]:
  out = needs(model, "bert", position="learned", norm="layernorm", pre_norm=False, use_bias=True, qkv_bias=False,
              head_width=0, scaled_attention=True, norm_offset=0.0)
  if model.activation not in ("gelu", "gelu_exact", "relu"):
    out.append(f"config.model.activation={model.activation!r} cannot be exported: Hugging Face bert has a plain "
               f"MLP (gelu, gelu_exact or relu), not a gated one")
  if model.num_kv_heads not in (0, model.num_heads):
    out.append(f"config.model.num_kv_heads={model.num_kv_heads} cannot be exported: Hugging Face bert has one "
               f"key/value head per query head (num_kv_heads=0)")
  return out


def _hf_norm(norm: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {f"{name}.LayerNorm.weight": norm["scale"], f"{name}.LayerNorm.bias": norm["bias"]}


def _hf_dense(dense: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  kernel = dense["kernel"]
  return {f"{name}.weight": kernel.reshape(-1, kernel.shape[-1]).T, f"{name}.bias": dense["bias"].reshape(-1)}


def export_params(params: dict[str, Any], model: dict[str, Any], vocab: VocabMap) -> dict[str, np.ndarray]:
  """BertForPreTraining's state dict."""
  D = model["d_model"]
  enc, e = params["encoder"], "bert.embeddings"
  out = {f"{e}.word_embeddings.weight": vocab.export_rows(enc["embed"]["embedding"]),
         f"{e}.position_embeddings.weight": enc["positions"]["embedding"],
         f"{e}.token_type_embeddings.weight": enc["token_types"]["embedding"], **_hf_norm(enc["ln_embed"], e)}
  for i in range(model["num_layers"]):
    layer, p = enc[f"layer_{i}"], f"bert.encoder.layer.{i}."
    qkv = layer["attn"]["qkv"]
    for j, n in enumerate(("query", "key", "value")):
      out |= _hf_dense({"kernel": qkv["kernel"][:, j].reshape(D, D), "bias": qkv["bias"][j]}, p + f"attention.self.{n}")
    out |= _hf_dense({"kernel": layer["attn"]["out"]["kernel"].reshape(D, D), "bias": layer["attn"]["out"]["bias"]},
                     p + "attention.output.dense")
    out |= _hf_norm(layer["ln_attn"], p + "attention.output") | _hf_norm(layer["ln_mlp"], p + "output")
    out |= _hf_dense(layer["mlp"]["wi"], p + "intermediate.dense") | _hf_dense(layer["mlp"]["wo"], p + "output.dense")
  head = params["mlm_head"]
  out |= _hf_dense(params["pooler"]["dense"], "bert.pooler.dense")
  out |= _hf_dense(params["nsp_head"], "cls.seq_relationship")
  out |= _hf_dense(head["transform"], "cls.predictions.transform.dense")
  out |= _hf_norm(head["ln"], "cls.predictions.transform")
  out["cls.predictions.bias"] = vocab.export_rows(head["bias"])
  if not model["tie_embeddings"]:
    out["cls.predictions.decoder.weight"] = vocab.export_rows(head["decoder"]["kernel"].T)
  return out


def export_config(model: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
  act = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}[model["activation"]]
  return {"architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": vocab.hf_vocab_size,
          "hidden_size": model["d_model"], "num_hidden_layers": model["num_layers"],
          "num_attention_heads": model["num_heads"], "intermediate_size": model["mlp_dim"], "hidden_act": act,
          "hidden_dropout_prob": model["dropout"], "attention_probs_dropout_prob": model["attention_dropout"],
          "max_position_embeddings": model["max_len"], "type_vocab_size": model["type_vocab_size"],
          "initializer_range": model["init_std"], "layer_norm_eps": model["norm_eps"] or 1e-5,
          "pad_token_id": vocab.owned.get("pad", 0), "position_embedding_type": "absolute",
          "tie_word_embeddings": model["tie_embeddings"], "torch_dtype": "float32"}


ARCHITECTURES = (Architecture("bert", "bert", "mlm", model_fields, plan, mismatches, export_params, export_config,
                              read_wordpiece_tokenizer, "a BERT"),)
