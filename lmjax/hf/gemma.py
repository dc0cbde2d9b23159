"""Gemma (GemmaForCausalLM, the first generation) <-> the lmjax decoder.

Gemma is Llama's layout (lmjax/hf/llama.py: the same tensor names, converted the same way) with three differences,
each an lmjax model option: token embeddings are multiplied by sqrt(d_model) (model.scale_embeddings), every
RMSNorm multiplies by 1 + its stored scale (model.norm_offset=1, so the stored values import unchanged), and the
head width is its own (head_dim 256 with d_model 3072: model.head_width). Its MLP is gated GELU (tanh form:
geglu), and its output head is always the tied embedding. Gemma 2 and 3 (soft-capped logits, sliding windows, extra
norms) are other model types, not converted.
"""

from __future__ import annotations

from typing import Any

from lmjax.hf import llama
from lmjax.hf.adapter import Architecture, needs
from lmjax.hf.files import HfError
from lmjax.hf.vocab import VocabMap


def model_fields(hf: dict[str, Any], names: set[str] = frozenset()) -> dict[str, Any]:
  act = hf.get("hidden_activation") or hf.get("hidden_act", "gelu_pytorch_tanh")
  if act not in ("gelu_pytorch_tanh", "gelu"):
    raise HfError(f"config.json hidden_activation={act!r} has no lmjax equivalent (Gemma uses gelu_pytorch_tanh)")
  # Gemma's "gelu" checkpoints were trained with the tanh form too (transformers reads it so).
  fields = llama.model_fields({**hf, "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True}, names)
  head_dim = hf.get("head_dim") or fields["d_model"] // fields["num_heads"]
  return fields | {"head_width": head_dim, "norm_offset": 1.0, "scale_embeddings": True, "tie_embeddings": True}


def mismatches(model: Any) -> list[str]:
  return needs(model, "gemma", position="rope", norm="rmsnorm", pre_norm=True, norm_offset=1.0,
               scale_embeddings=True, scaled_attention=True, activation="geglu", use_bias=False, qkv_bias=False,
               tie_embeddings=True, rope_scaling="none")


def export_config(model: dict[str, Any], vocab: VocabMap) -> dict[str, Any]:
  H = model["num_heads"]
  return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": vocab.hf_vocab_size,
          "hidden_size": model["d_model"], "intermediate_size": model["mlp_dim"],
          "num_hidden_layers": model["num_layers"], "num_attention_heads": H,
          "num_key_value_heads": model["num_kv_heads"] or H, "head_dim": model["head_width"] or model["d_model"] // H,
          "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
          "max_position_embeddings": model["max_len"], "rms_norm_eps": model["norm_eps"] or 1e-6,
          "initializer_range": model["init_std"], "attention_dropout": model["attention_dropout"],
          "attention_bias": False, "tie_word_embeddings": True, **llama.rope_config(model),
          **llama.special_ids(vocab), "torch_dtype": "float32"}


ARCHITECTURES = (Architecture("gemma", "gpt", "causal_lm", model_fields, llama.plan, mismatches,
                              llama.export_params, export_config, llama.read_tokenizer, "a Gemma"),)
