"""GPT-2 (GPT2LMHeadModel / GPT2Model) <-> the lmjax decoder (model.name='gpt').

GPT-2 is a pre-norm decoder with learned positions, biases everywhere, LayerNorm eps 1e-5, tanh-approximate GELU
('gelu_new'), a fused QKV projection and the output projection tied to the token embedding: exactly lmjax's default
GPT. Its Conv1D weights are stored [in, out], the orientation of lmjax kernels, so conversion is reshaping:
c_attn [D, 3D] -> qkv kernel [D, 3, H, d]; c_proj [D, D] -> out kernel [H, d, D]; c_fc / mlp.c_proj as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax.hf.adapter import Architecture, Plan, needs
from lmjax.hf.files import HfError
from lmjax.hf.tokenizers import read_bpe_tokenizer
from lmjax.hf.vocab import VocabMap

# HF activation_function -> lmjax model.activation (and back, first match).
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact",
               "relu": "relu"}


def model_fields(hf: dict[str, Any], names: set[str] = frozenset()) -> dict[str, Any]:
  """config.model fields of the lmjax decoder equivalent to an HF GPT-2 config.json."""
  act = hf.get("activation_function", "gelu_new")
  if act not in ACTIVATIONS:
    raise HfError(f"config.json activation_function={act!r} has no lmjax equivalent (supported: "
                  f"{', '.join(ACTIVATIONS)})")
  for field, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if hf.get(field, ok) != ok:
      raise HfError(f"config.json {field}={hf[field]!r} is not supported by the lmjax decoder (needs {ok})")
  d_model, heads = hf.get("n_embd", 768), hf.get("n_head", 12)
  if d_model % heads:
    raise HfError(f"config.json n_embd={d_model} is not divisible by n_head={heads}")
  return {"name": "gpt", "num_layers": hf.get("n_layer", 12), "num_heads": heads, "num_kv_heads": 0,
          "d_model": d_model, "mlp_dim": hf.get("n_inner") or 4 * d_model, "max_len": hf.get("n_positions", 1024),
          "position": "learned", "norm": "layernorm", "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
          "pre_norm": True, "activation": ACTIVATIONS[act], "use_bias": True,
          "tie_embeddings": bool(hf.get("tie_word_embeddings", True)), "dropout": float(hf.get("resid_pdrop", 0.1)),
          "attention_dropout": float(hf.get("attn_pdrop", 0.1)), "init_std": float(hf.get("initializer_range", 0.02))}


def plan(p: Plan, model: dict[str, Any], vocab: VocabMap) -> None:
  H, D, d = model["num_heads"], model["d_model"], model["d_model"] // model["num_heads"]
  t = "transformer." if p.has("transformer.wte.weight") else ""
  p.add("embed/embedding", t + "wte.weight", vocab.import_rows)
  p.add("positions/embedding", t + "wpe.weight")
  norm = lambda path, name: (p.add(f"{path}/scale", f"{t}{name}.weight"), p.add(f"{path}/bias", f"{t}{name}.bias"))
  norm("ln_final", "ln_f")
  for i in range(model["num_layers"]):
    layer, h = f"layer_{i}/", f"{t}h.{i}."
    norm(layer + "ln_attn", f"h.{i}.ln_1")
    norm(layer + "ln_mlp", f"h.{i}.ln_2")
    p.add(layer + "attn/qkv/kernel", h + "attn.c_attn.weight", lambda w: w.reshape(D, 3, H, d))
    p.add(layer + "attn/qkv/bias", h + "attn.c_attn.bias", lambda b: b.reshape(3, H, d))
    p.add(layer + "attn/out/kernel", h + "attn.c_proj.weight", lambda w: w.reshape(H, d, D))
    p.add(layer + "attn/out/bias", h + "attn.c_proj.bias")
    for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
      p.add(f"{layer}mlp/{ours}/kernel", f"{h}mlp.{theirs}.weight")
      p.add(f"{layer}mlp/{ours}/bias", f"{h}mlp.{theirs}.bias")
    p.ignore(h + "attn.bias", h + "attn.masked_bias")  # causal-mask buffers of older checkpoints
  if model["tie_embeddings"]:
    p.ignore("lm_head.weight")
  elif not p.has("lm_head.weight"):
    raise HfError("config.json tie_word_embeddings=false but the weights have no lm_head.weight")
  else:
    p.add("lm_head/kernel", "lm_head.weight", lambda w: vocab.import_rows(w).T)


def mismatches(model: Any) -> list[str]:
  out = needs(model, "gpt2", position="learned", norm="layernorm", pre_norm=True, use_bias=True, qkv_bias=False,
              head_width=0, scaled_attention=True, norm_offset=0.0, scale_embeddings=False)
  if model.activation not in ("gelu", "gelu_exact", "relu"):
    out.append(f"config.model.activation={model.activation!r} cannot be exported: Hugging Face gpt2 has a plain "
               f"MLP (gelu, gelu_exact or relu), not a gated one")
  if model.num_kv_heads not in (0, model.num_heads):
    out.append(f"config.model.num_kv_heads={model.num_kv_heads} cannot be exported: Hugging Face gpt2 has one "
               f"key/value head per query head (num_kv_heads=0)")
  return out


def export_params(params: dict[str, Any], model: dict[str, Any], vocab: VocabMap) -> dict[str, np.ndarray]:
  """GPT2LMHeadModel's state dict (names without the tied lm_head when the embeddings are tied)."""
  D, F = model["d_model"], model["mlp_dim"]
  out = {"transformer.wte.weight": vocab.export_rows(params["embed"]["embedding"]),
         "transformer.wpe.weight": params["positions"]["embedding"],
         "transformer.ln_f.weight": params["ln_final"]["scale"], "transformer.ln_f.bias": params["ln_final"]["bias"]}
  for i in range(model["num_layers"]):
    layer, p = params[f"layer_{i}"], f"transformer.h.{i}."
    out |= {p + "ln_1.weight": layer["ln_attn"]["scale"], p + "ln_1.bias": layer["ln_attn"]["bias"],
            p + "ln_2.weight": layer["ln_mlp"]["scale"], p + "ln_2.bias": layer["ln_mlp"]["bias"],
            p + "attn.c_attn.weight": layer["attn"]["qkv"]["kernel"].reshape(D, 3 * D),
            p + "attn.c_attn.bias": layer["attn"]["qkv"]["bias"].reshape(3 * D),
            p + "attn.c_proj.weight": layer["attn"]["out"]["kernel"].reshape(D, D),
            p + "attn.c_proj.bias": layer["attn"]["out"]["bias"],
            p + "mlp.c_fc.weight": layer["mlp"]["wi"]["kernel"].reshape(D, F),
            p + "mlp.c_fc.bias": layer["mlp"]["wi"]["bias"],
            p + "mlp.c_proj.weight": layer["mlp"]["wo"]["kernel"].reshape(F, D),
            p + "mlp.c_proj.bias": layer["mlp"]["wo"]["bias"]}
  if not model["tie_embeddings"]:
    out["lm_head.weight"] = vocab.export_rows(params["lm_head"]["kernel"].T)
  return out


def export_config(model: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
  act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[model["activation"]]
  eos = vocab.owned.get("eos")
  bos = vocab.owned.get("bos", vocab.copies.get("bos", eos))
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab.hf_vocab_size,
          "n_positions": model["max_len"], "n_embd": model["d_model"], "n_layer": model["num_layers"],
          "n_head": model["num_heads"], "n_inner": model["mlp_dim"], "activation_function": act,
          "resid_pdrop": model["dropout"], "embd_pdrop": model["dropout"], "attn_pdrop": model["attention_dropout"],
          "layer_norm_epsilon": model["norm_eps"] or 1e-5, "initializer_range": model["init_std"],
          "tie_word_embeddings": model["tie_embeddings"], "bos_token_id": bos, "eos_token_id": eos,
          "torch_dtype": "float32"}


ARCHITECTURES = (Architecture("gpt2", "gpt", "causal_lm", model_fields, plan, mismatches, export_params,
                              export_config, read_bpe_tokenizer, "a GPT-2", weight_layout="in_out"),)
