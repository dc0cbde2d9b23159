"""T5 v1.0, v1.1 and Flan-T5 (T5ForConditionalGeneration) <-> the lmjax encoder-decoder (model.name='encdec').

T5 is a pre-norm encoder-decoder with RMSNorm (no bias anywhere), one embedding shared by both sides, a learned
bias per relative-position bucket and head that each side's first layer owns and all its layers reuse (lmjax's
position='t5', one table per stack), and attention logits q.k without the 1/sqrt(d) scale (its initialization
absorbed it: model.scaled_attention=False). v1.0 has a ReLU MLP, an output head tied to the embedding and the
decoder output scaled by d_model^-0.5 before it (model.scale_decoder_output); v1.1 and Flan-T5 have gated GELU
(geglu), a separate lm_head and no scale, and a head width d_kv independent of d_model (model.head_width).

transformers 5 writes scale_decoder_outputs in config.json; earlier versions derive the scale from
tie_word_embeddings, and a checkpoint whose lm_head.weight is present has its own head whatever the config says.
The decoder of T5 starts from its pad token; lmjax decoders start from <bos>, which an imported T5 vocabulary lacks,
so lmjax's <bos> row is a copy of <pad>'s: the same first input, and model.logit_mask keeps it out of the outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmjax.hf.adapter import Architecture, Plan, needs
from lmjax.hf.files import HfError
from lmjax.hf.tokenizers import read_checkpoint_tokenizer
from lmjax.hf.vocab import VocabMap

# (gated, dense_act_fn) -> model.activation
ACTIVATIONS = {(False, "relu"): "relu", (False, "gelu_new"): "gelu", (False, "gelu"): "gelu_exact",
               (True, "gelu_new"): "geglu", (True, "gelu"): "geglu", (True, "silu"): "swiglu"}


def _activation(hf: dict[str, Any]) -> str:
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  gated, act = parts[0] == "gated", parts[-1]
  if proj == "gated-gelu":
    act = "gelu_new"  # what transformers runs for 'gated-gelu', whatever dense_act_fn says
  if (gated, act) not in ACTIVATIONS:
    raise HfError(f"config.json feed_forward_proj={proj!r} has no lmjax equivalent (supported: relu, gelu_new, "
                  f"gated-gelu, gated-silu)")
  return ACTIVATIONS[(gated, act)]


def model_fields(hf: dict[str, Any], names: set[str] = frozenset()) -> dict[str, Any]:
  if hf.get("is_decoder") or not hf.get("is_encoder_decoder", True):
    raise HfError("config.json is_decoder/is_encoder_decoder: lmjax imports T5 as a whole encoder-decoder")
  d_model, heads = hf.get("d_model", 512), hf.get("num_heads", 8)
  d_kv = hf.get("d_kv", d_model // heads)
  tied = "lm_head.weight" not in names if names else bool(hf.get("tie_word_embeddings", True))
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  return {"name": "encdec", "num_layers": hf.get("num_layers", 6),
          "num_decoder_layers": hf.get("num_decoder_layers") or hf.get("num_layers", 6), "num_heads": heads,
          "num_kv_heads": 0, "d_model": d_model, "head_width": 0 if d_kv * heads == d_model else d_kv,
          "mlp_dim": hf.get("d_ff", 2048), "max_len": hf.get("n_positions", 512), "position": "t5",
          "relative_buckets": hf.get("relative_attention_num_buckets", 32),
          "relative_max_distance": hf.get("relative_attention_max_distance", 128), "norm": "rmsnorm",
          "norm_eps": float(hf.get("layer_norm_epsilon", 1e-6)), "pre_norm": True, "activation": _activation(hf),
          "use_bias": False, "scaled_attention": False, "share_embeddings": True, "tie_embeddings": tied,
          "scale_decoder_output": bool(scale), "dropout": float(hf.get("dropout_rate", 0.1)),
          "attention_dropout": float(hf.get("dropout_rate", 0.1)), "init_std": 0.02}


_MLP = {"wi": "wi", "wo": "wo", "wi_gate": "wi_0", "wi_up": "wi_1"}


def _mlp_names(model: dict[str, Any]) -> tuple[str, ...]:
  return ("wi_gate", "wi_up", "wo") if model["activation"] in ("geglu", "swiglu") else ("wi", "wo")


def plan(p: Plan, model: dict[str, Any], vocab: VocabMap) -> None:
  D, H = model["d_model"], model["num_heads"]
  d = model["head_width"] or D // H
  heads_of = lambda w: w.T.reshape(D, H, d)

  def self_attention(path: str, prefix: str) -> None:
    p.add(path + "qkv/kernel", tuple(f"{prefix}{n}.weight" for n in "qkv"),
          lambda *ws: np.stack([heads_of(w) for w in ws], axis=1))
    p.add(path + "out/kernel", prefix + "o.weight", lambda w: w.T.reshape(H, d, D))

  def mlp(path: str, prefix: str) -> None:
    for ours in _mlp_names(model):
      p.add(f"{path}{ours}/kernel", f"{prefix}{_MLP[ours]}.weight", lambda w: w.T)

  p.add("target_embed/embedding", "shared.weight", vocab.import_rows)
  p.ignore("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")  # copies of shared.weight
  for side, ours in (("encoder", "source"), ("decoder", "target")):
    p.add(f"{ours}_relative_bias/rel_embedding", f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    p.add(f"{side}_norm/scale", f"{side}.final_layer_norm.weight")
  for i in range(model["num_layers"]):
    layer, h = f"encoder_{i}/", f"encoder.block.{i}.layer."
    self_attention(layer + "attn/", h + "0.SelfAttention.")
    p.add(layer + "ln_attn/scale", h + "0.layer_norm.weight")
    mlp(layer + "mlp/", h + "1.DenseReluDense.")
    p.add(layer + "ln_mlp/scale", h + "1.layer_norm.weight")
  for i in range(model["num_decoder_layers"] or model["num_layers"]):
    layer, h = f"decoder_{i}/", f"decoder.block.{i}.layer."
    self_attention(layer + "self_attn/", h + "0.SelfAttention.")
    p.add(layer + "ln_self/scale", h + "0.layer_norm.weight")
    c = h + "1.EncDecAttention."
    p.add(layer + "cross_attn/q/kernel", c + "q.weight", heads_of)
    p.add(layer + "cross_attn/kv/kernel", (c + "k.weight", c + "v.weight"),
          lambda k, v: np.stack([heads_of(k), heads_of(v)], axis=1))
    p.add(layer + "cross_attn/out/kernel", c + "o.weight", lambda w: w.T.reshape(H, d, D))
    p.add(layer + "ln_cross/scale", h + "1.layer_norm.weight")
    mlp(layer + "mlp/", h + "2.DenseReluDense.")
    p.add(layer + "ln_mlp/scale", h + "2.layer_norm.weight")
  if not model["tie_embeddings"]:
    p.add("lm_head/kernel", "lm_head.weight", lambda w: vocab.import_rows(w).T)


def export_params(params: dict[str, Any], model: dict[str, Any], vocab: VocabMap) -> dict[str, np.ndarray]:
  D, H = model["d_model"], model["num_heads"]
  d = model["head_width"] or D // H
  flat = lambda kernel: kernel.reshape(D, H * d).T
  out_of = lambda kernel: kernel.reshape(H * d, D).T
  shared = vocab.export_rows(params["target_embed"]["embedding"])
  out = {"shared.weight": shared, "encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared}
  for side, ours in (("encoder", "source"), ("decoder", "target")):
    out[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
        params[f"{ours}_relative_bias"]["rel_embedding"]
    out[f"{side}.final_layer_norm.weight"] = params[f"{side}_norm"]["scale"]

  def self_attention(attn: dict[str, Any], prefix: str) -> None:
    for j, n in enumerate("qkv"):
      out[f"{prefix}{n}.weight"] = flat(attn["qkv"]["kernel"][:, j])
    out[prefix + "o.weight"] = out_of(attn["out"]["kernel"])

  def mlp(layer_mlp: dict[str, Any], prefix: str) -> None:
    for ours in _mlp_names(model):
      out[f"{prefix}{_MLP[ours]}.weight"] = layer_mlp[ours]["kernel"].T

  for i in range(model["num_layers"]):
    layer, h = params[f"encoder_{i}"], f"encoder.block.{i}.layer."
    self_attention(layer["attn"], h + "0.SelfAttention.")
    out[h + "0.layer_norm.weight"] = layer["ln_attn"]["scale"]
    mlp(layer["mlp"], h + "1.DenseReluDense.")
    out[h + "1.layer_norm.weight"] = layer["ln_mlp"]["scale"]
  for i in range(model["num_decoder_layers"] or model["num_layers"]):
    layer, h = params[f"decoder_{i}"], f"decoder.block.{i}.layer."
    self_attention(layer["self_attn"], h + "0.SelfAttention.")
    out[h + "0.layer_norm.weight"] = layer["ln_self"]["scale"]
    cross, c = layer["cross_attn"], h + "1.EncDecAttention."
    out[c + "q.weight"] = flat(cross["q"]["kernel"])
    out[c + "k.weight"] = flat(cross["kv"]["kernel"][:, 0])
    out[c + "v.weight"] = flat(cross["kv"]["kernel"][:, 1])
    out[c + "o.weight"] = out_of(cross["out"]["kernel"])
    out[h + "1.layer_norm.weight"] = layer["ln_cross"]["scale"]
    mlp(layer["mlp"], h + "2.DenseReluDense.")
    out[h + "2.layer_norm.weight"] = layer["ln_mlp"]["scale"]
  if not model["tie_embeddings"]:  # a tied head is shared.weight itself, which transformers ties on loading
    out["lm_head.weight"] = vocab.export_rows(params["lm_head"]["kernel"].T)
  return out


def export_config(model: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
  act = {"relu": "relu", "gelu": "gelu_new", "gelu_exact": "gelu", "geglu": "gated-gelu", "swiglu": "gated-silu"}
  H = model["num_heads"]
  return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
          "vocab_size": vocab.hf_vocab_size, "d_model": model["d_model"],
          "d_kv": model["head_width"] or model["d_model"] // H, "d_ff": model["mlp_dim"],
          "num_layers": model["num_layers"], "num_decoder_layers": model["num_decoder_layers"] or model["num_layers"],
          "num_heads": H, "relative_attention_num_buckets": model["relative_buckets"],
          "relative_attention_max_distance": model["relative_max_distance"], "dropout_rate": model["dropout"],
          "layer_norm_epsilon": model["norm_eps"] or 1e-6, "feed_forward_proj": act[model["activation"]],
          "tie_word_embeddings": model["tie_embeddings"], "scale_decoder_outputs": model["scale_decoder_output"],
          "pad_token_id": vocab.owned.get("pad", 0), "eos_token_id": vocab.owned.get("eos", 1),
          "decoder_start_token_id": vocab.owned.get("pad", 0), "n_positions": model["max_len"],
          "torch_dtype": "float32"}


def mismatches(model: Any) -> list[str]:
  out = needs(model, "t5", position="t5", norm="rmsnorm", pre_norm=True, use_bias=False, qkv_bias=False,
              scaled_attention=False, share_embeddings=True, num_kv_heads=0, norm_offset=0.0)
  if model.activation not in ("relu", "gelu", "gelu_exact", "geglu", "swiglu"):
    out.append(f"config.model.activation={model.activation!r} cannot be exported: Hugging Face t5 has relu, gelu "
               f"or a gated gelu/silu MLP")
  return out


def read_tokenizer(hf_dir, model_vocab_size: int):
  return read_checkpoint_tokenizer(hf_dir, model_vocab_size, {"bos": "pad"})


ARCHITECTURES = (Architecture("t5", "encdec", "seq2seq", model_fields, plan, mismatches, export_params,
                              export_config, read_tokenizer, "a T5"),)
