"""Llama 2/3, Mistral and Qwen2 (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) <-> the lmjax decoder.

All three are the same pre-norm decoder: RMSNorm, rotary positions (rotate-half layout, lmjax's), a SwiGLU MLP, no
biases and grouped-query attention. They differ only in what config.json says: Qwen2 adds biases to q/k/v
(model.qkv_bias), Llama 3.1 stretches its rotary frequencies (rope_scaling 'llama3' -> model.rope_scaling), Mistral
and Qwen2 may declare a sliding attention window, which lmjax does not have and so refuses unless the window covers
the whole context. Linear weights are stored [out, in]: q_proj [H*d, D] becomes the kernel [D, H, d]; with one
key/value head per query head q, k and v become the fused qkv kernel [D, 3, H, d], otherwise 'q' [D, H, d] and
'kv' [D, 2, K, d]. Gemma has the same weight layout (lmjax/hf/gemma.py reuses `plan` and `export_params`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax.hf.adapter import Architecture, Plan, needs
from lmjax.hf.files import HfError
from lmjax.hf.tokenizers import read_checkpoint_tokenizer
from lmjax.hf.vocab import VocabMap

ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu",
               "gelu_fast": "geglu"}
EXPORTED_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh"}
CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """model.rope_* from config.json: transformers 5 writes rope_parameters, earlier versions rope_theta and
  rope_scaling; both are read."""
  parameters = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  theta = parameters.get("rope_theta", hf.get("rope_theta", 10000.0))
  source = parameters if parameters.get("rope_type", "default") != "default" else scaling
  kind = source.get("rope_type", source.get("type", "default"))
  if float(hf.get("partial_rotary_factor", parameters.get("partial_rotary_factor", 1.0))) != 1.0:
    raise HfError(f"config.json partial_rotary_factor={hf.get('partial_rotary_factor')!r}: lmjax rotates every "
                  f"feature of a head (1.0)")
  fields: dict[str, Any] = {"position": "rope", "rope_base": float(theta)}
  if kind == "default":
    return fields | {"rope_scaling": "none"}
  if kind == "linear":
    return fields | {"rope_scaling": "linear", "rope_factor": float(source["factor"])}
  if kind == "llama3":
    return fields | {"rope_scaling": "llama3", "rope_factor": float(source["factor"]),
                     "rope_low_freq_factor": float(source.get("low_freq_factor", 1.0)),
                     "rope_high_freq_factor": float(source.get("high_freq_factor", 4.0)),
                     "rope_original_max_len": int(source.get("original_max_position_embeddings", 8192))}
  raise HfError(f"config.json rope_scaling type {kind!r} is not supported; lmjax has rope_scaling 'linear' and "
                f"'llama3'")


def _check_window(hf: dict[str, Any]) -> None:
  window = hf.get("sliding_window")
  used = hf.get("use_sliding_window", hf.get("model_type") == "mistral")
  if used and window and window < hf.get("max_position_embeddings", 0):
    raise HfError(f"config.json sliding_window={window}: lmjax has no sliding-window attention; set "
                  f"sliding_window to null in config.json to attend over the whole context (the same model for "
                  f"sequences of up to {window} tokens)")


def model_fields(hf: dict[str, Any], names: set[str] = frozenset()) -> dict[str, Any]:
  act = hf.get("hidden_act", hf.get("hidden_activation", "silu"))
  if act not in ACTIVATIONS:
    raise HfError(f"config.json hidden_act={act!r} has no lmjax equivalent (supported: {', '.join(ACTIVATIONS)})")
  _check_window(hf)
  attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
  if attention_bias != mlp_bias:
    raise HfError(f"config.json attention_bias={attention_bias} with mlp_bias={mlp_bias}: lmjax has biases on "
                  f"every projection or on none (model.use_bias)")
  d_model, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
  kv_heads = hf.get("num_key_value_heads") or heads
  head_dim = hf.get("head_dim") or d_model // heads
  if heads % kv_heads:
    raise HfError(f"config.json num_key_value_heads={kv_heads} does not divide num_attention_heads={heads}")
  tied = bool(hf.get("tie_word_embeddings", False)) or (bool(names) and "lm_head.weight" not in names)
  return {"name": "gpt", "num_layers": hf.get("num_hidden_layers", 32), "num_heads": heads,
          "num_kv_heads": 0 if kv_heads == heads else kv_heads, "d_model": d_model,
          "head_width": 0 if head_dim * heads == d_model else head_dim, "mlp_dim": hf.get("intermediate_size", 11008),
          "max_len": hf.get("max_position_embeddings", 2048), **rope_fields(hf), "norm": "rmsnorm",
          "norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "pre_norm": True, "activation": ACTIVATIONS[act],
          "use_bias": attention_bias, "qkv_bias": hf.get("model_type") == "qwen2", "tie_embeddings": tied,
          "dropout": 0.0, "attention_dropout": float(hf.get("attention_dropout", 0.0)),
          "init_std": float(hf.get("initializer_range", 0.02))}


def plan(p: Plan, model: dict[str, Any], vocab: VocabMap) -> None:
  D, H = model["d_model"], model["num_heads"]
  K, d = model["num_kv_heads"] or H, model["head_width"] or D // H
  biased = model["use_bias"] or model["qkv_bias"]
  p.add("embed/embedding", "model.embed_tokens.weight", vocab.import_rows)
  p.add("ln_final/scale", "model.norm.weight")
  for i in range(model["num_layers"]):
    layer, h = f"layer_{i}/", f"model.layers.{i}."
    a = h + "self_attn."
    p.add(layer + "ln_attn/scale", h + "input_layernorm.weight")
    p.add(layer + "ln_mlp/scale", h + "post_attention_layernorm.weight")
    heads_of = lambda w, n: w.T.reshape(D, n, d)
    if K == H:
      p.add(layer + "attn/qkv/kernel", tuple(f"{a}{n}_proj.weight" for n in "qkv"),
            lambda *ws: np.stack([heads_of(w, H) for w in ws], axis=1))
      if biased:
        p.add(layer + "attn/qkv/bias", tuple(f"{a}{n}_proj.bias" for n in "qkv"),
              lambda *bs: np.stack([b.reshape(H, d) for b in bs]))
    else:
      p.add(layer + "attn/q/kernel", a + "q_proj.weight", lambda w: heads_of(w, H))
      p.add(layer + "attn/kv/kernel", (a + "k_proj.weight", a + "v_proj.weight"),
            lambda k, v: np.stack([heads_of(k, K), heads_of(v, K)], axis=1))
      if biased:
        p.add(layer + "attn/q/bias", a + "q_proj.bias", lambda b: b.reshape(H, d))
        p.add(layer + "attn/kv/bias", (a + "k_proj.bias", a + "v_proj.bias"),
              lambda k, v: np.stack([k.reshape(K, d), v.reshape(K, d)]))
    p.add(layer + "attn/out/kernel", a + "o_proj.weight", lambda w: w.T.reshape(H, d, D))
    for ours, theirs in (("wi_gate", "gate_proj"), ("wi_up", "up_proj"), ("wo", "down_proj")):
      p.add(f"{layer}mlp/{ours}/kernel", f"{h}mlp.{theirs}.weight", lambda w: w.T)
      if model["use_bias"]:
        p.add(f"{layer}mlp/{ours}/bias", f"{h}mlp.{theirs}.bias")
    if model["use_bias"]:
      p.add(layer + "attn/out/bias", a + "o_proj.bias")
    p.ignore(a + "rotary_emb.inv_freq")  # a buffer of older checkpoints, recomputed from rope_theta
  if model["tie_embeddings"]:
    p.ignore("lm_head.weight")
  else:
    p.add("lm_head/kernel", "lm_head.weight", lambda w: vocab.import_rows(w).T)


def export_params(params: dict[str, Any], model: dict[str, Any], vocab: VocabMap) -> dict[str, np.ndarray]:
  D, H = model["d_model"], model["num_heads"]
  K, d = model["num_kv_heads"] or H, model["head_width"] or D // H
  out = {"model.embed_tokens.weight": vocab.export_rows(params["embed"]["embedding"]),
         "model.norm.weight": params["ln_final"]["scale"]}
  flat = lambda kernel: kernel.reshape(D, -1).T  # [D, n, d] -> [n*d, D]
  for i in range(model["num_layers"]):
    layer, h = params[f"layer_{i}"], f"model.layers.{i}."
    a, attn = h + "self_attn.", layer["attn"]
    out[h + "input_layernorm.weight"] = layer["ln_attn"]["scale"]
    out[h + "post_attention_layernorm.weight"] = layer["ln_mlp"]["scale"]
    if K == H:
      for j, n in enumerate("qkv"):
        out[f"{a}{n}_proj.weight"] = flat(attn["qkv"]["kernel"][:, j])
        if "bias" in attn["qkv"]:
          out[f"{a}{n}_proj.bias"] = attn["qkv"]["bias"][j].reshape(-1)
    else:
      out[a + "q_proj.weight"] = flat(attn["q"]["kernel"])
      for j, n in enumerate("kv"):
        out[f"{a}{n}_proj.weight"] = flat(attn["kv"]["kernel"][:, j])
      if "bias" in attn["q"]:
        out[a + "q_proj.bias"] = attn["q"]["bias"].reshape(-1)
        for j, n in enumerate("kv"):
          out[f"{a}{n}_proj.bias"] = attn["kv"]["bias"][j].reshape(-1)
    out[a + "o_proj.weight"] = attn["out"]["kernel"].reshape(H * d, D).T
    if "bias" in attn["out"]:
      out[a + "o_proj.bias"] = attn["out"]["bias"]
    for ours, theirs in (("wi_gate", "gate_proj"), ("wi_up", "up_proj"), ("wo", "down_proj")):
      out[f"{h}mlp.{theirs}.weight"] = layer["mlp"][ours]["kernel"].T
      if "bias" in layer["mlp"][ours]:
        out[f"{h}mlp.{theirs}.bias"] = layer["mlp"][ours]["bias"]
  if not model["tie_embeddings"]:
    out["lm_head.weight"] = vocab.export_rows(params["lm_head"]["kernel"].T)
  return out


def rope_config(model: dict[str, Any]) -> dict[str, Any]:
  """rope_theta and rope_scaling as earlier transformers read them, and rope_parameters as transformers 5 does."""
  scaling = None
  if model["rope_scaling"] == "linear":
    scaling = {"rope_type": "linear", "factor": model["rope_factor"]}
  elif model["rope_scaling"] == "llama3":
    scaling = {"rope_type": "llama3", "factor": model["rope_factor"],
               "low_freq_factor": model["rope_low_freq_factor"], "high_freq_factor": model["rope_high_freq_factor"],
               "original_max_position_embeddings": model["rope_original_max_len"]}
  parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": model["rope_base"]}
  return {"rope_theta": model["rope_base"], "rope_scaling": scaling, "rope_parameters": parameters}


def special_ids(vocab: VocabMap) -> dict[str, Any]:
  return {"bos_token_id": vocab.owned.get("bos"), "eos_token_id": vocab.owned.get("eos"),
          "pad_token_id": vocab.owned.get("pad")}


def _export_config(model_type: str):
  def export_config(model: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
    H = model["num_heads"]
    out = {"architectures": [CLASSES[model_type]], "model_type": model_type, "vocab_size": vocab.hf_vocab_size,
           "hidden_size": model["d_model"], "intermediate_size": model["mlp_dim"],
           "num_hidden_layers": model["num_layers"], "num_attention_heads": H,
           "num_key_value_heads": model["num_kv_heads"] or H, "head_dim": model["head_width"] or model["d_model"] // H,
           "hidden_act": EXPORTED_ACTIVATIONS[model["activation"]], "max_position_embeddings": model["max_len"],
           "rms_norm_eps": model["norm_eps"] or 1e-6, "initializer_range": model["init_std"],
           "attention_dropout": model["attention_dropout"], "tie_word_embeddings": model["tie_embeddings"],
           **rope_config(model), **special_ids(vocab), "torch_dtype": "float32"}
    if model_type == "llama":
      out |= {"attention_bias": model["use_bias"], "mlp_bias": model["use_bias"]}
    else:
      out |= {"sliding_window": None, "use_sliding_window": False}
    return out
  return export_config


def _mismatches(model_type: str):
  def mismatches(model: Any) -> list[str]:
    common = dict(position="rope", norm="rmsnorm", pre_norm=True, norm_offset=0.0, scaled_attention=True,
                  scale_embeddings=False, activation="swiglu")
    bias = {"llama": {"qkv_bias": False}, "mistral": {"qkv_bias": False, "use_bias": False},
            "qwen2": {"qkv_bias": True, "use_bias": False}}[model_type]
    return needs(model, model_type, **common, **bias)
  return mismatches


def read_tokenizer(hf_dir, model_vocab_size: int):
  # A document starts with the checkpoint's <s> where it has one; Qwen2 has none, and lmjax's <bos> then starts
  # as a copy of its end-of-text token, as for GPT-2.
  return read_checkpoint_tokenizer(hf_dir, model_vocab_size, {"bos": "eos"})


ARCHITECTURES = tuple(
    Architecture(model_type, "gpt", "causal_lm", model_fields, plan, _mismatches(model_type), export_params,
                 _export_config(model_type), read_tokenizer, f"a {name}")
    for model_type, name in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2")))
