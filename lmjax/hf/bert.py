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

from lmjax.hf.files import HfError
from lmjax.hf.vocab import VocabMap

ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
HEADS = ("pooler", "mlm_head", "nsp_head")


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
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


def _renamed(name: str) -> str:
  """Original TF-converted checkpoints name LayerNorm parameters gamma/beta."""
  return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _norm(w: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"scale": w.pop(f"{name}.LayerNorm.weight"), "bias": w.pop(f"{name}.LayerNorm.bias")}


def _dense(w: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"kernel": w.pop(f"{name}.weight").T, "bias": w.pop(f"{name}.bias")}


def import_params(weights: dict[str, np.ndarray], model: dict[str, Any], vocab: VocabMap) -> tuple[dict, list[str]]:
  """(lmjax params for the parts the checkpoint has, HF weights left unused). Consumes `weights`."""
  w = {_renamed(k): v for k, v in weights.items()}
  spine = "bert." if any(k.startswith("bert.") for k in w) else ""
  H, D, d = model["num_heads"], model["d_model"], model["d_model"] // model["num_heads"]
  e = spine + "embeddings."
  try:
    encoder: dict[str, Any] = {
        "embed": {"embedding": vocab.import_rows(w.pop(e + "word_embeddings.weight"))},
        "positions": {"embedding": w.pop(e + "position_embeddings.weight")},
        "token_types": {"embedding": w.pop(e + "token_type_embeddings.weight")},
        "ln_embed": _norm(w, e[:-1])}
    for i in range(model["num_layers"]):
      p = f"{spine}encoder.layer.{i}."
      qkv = [_dense(w, p + f"attention.self.{n}") for n in ("query", "key", "value")]
      out = _dense(w, p + "attention.output.dense")
      encoder[f"layer_{i}"] = {
          "attn": {"qkv": {"kernel": np.stack([x["kernel"] for x in qkv], axis=1).reshape(D, 3, H, d),
                           "bias": np.stack([x["bias"] for x in qkv]).reshape(3, H, d)},
                   "out": {"kernel": out["kernel"].reshape(H, d, D), "bias": out["bias"]}},
          "ln_attn": _norm(w, p + "attention.output"),
          "mlp": {"wi": _dense(w, p + "intermediate.dense"), "wo": _dense(w, p + "output.dense")},
          "ln_mlp": _norm(w, p + "output")}
  except KeyError as err:
    raise HfError(f"the checkpoint's weights lack {err.args[0]!r}; is it a BERT checkpoint saved by "
                  f"transformers?") from None
  params: dict[str, Any] = {"encoder": encoder}
  if spine + "pooler.dense.weight" in w:
    params["pooler"] = {"dense": _dense(w, spine + "pooler.dense")}
  if "cls.predictions.bias" in w:
    c = "cls.predictions."
    head = {"transform": _dense(w, c + "transform.dense"), "ln": _norm(w, c + "transform"),
            "bias": vocab.import_rows(w.pop(c + "bias"))}
    decoder = w.pop(c + "decoder.weight", None)
    w.pop(c + "decoder.bias", None)  # the same parameter as cls.predictions.bias
    if not model["tie_embeddings"]:
      if decoder is None:
        raise HfError("config.json tie_word_embeddings=false but the weights have no cls.predictions.decoder.weight")
      head["decoder"] = {"kernel": vocab.import_rows(decoder).T}
    params["mlm_head"] = head
  if "cls.seq_relationship.weight" in w:
    params["nsp_head"] = _dense(w, "cls.seq_relationship")
  unused = [k for k in w if not k.endswith("position_ids")]
  return params, unused


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
