"""LoRA (finetune.lora): the adapted model equals the base at initialization, merged equals unmerged, only the
adapters train (no optimizer moments for the rest), the adapters shard like their kernels, bad targets fail in one
line, and on an imported GPT-2 the merged export and the PEFT adapter both reproduce lmjax's logits in
transformers."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, single_device_env
from configs import tiny
from lmjax import programs, sharding
from lmjax.config import ConfigError, base_config, flatten
from lmjax.config_validation import validate
from lmjax.models import lora
from lmjax.registry import TASKS
from lmjax.state import create_train_state, strip_boxes
from lmjax.step import loss_and_grads
from lmjax.tasks.base import VocabInfo

MODERN = {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "num_kv_heads": 1, "use_bias": False,
          "tie_embeddings": False}


def lora_config(rank=4, **model):
  c = tiny.get_config()
  c.model.update(model)
  c.finetune.lora.update(rank=rank, alpha=8.0)
  c.train.update(num_samples=0, plot=False, tensorboard=False)
  validate(c)
  return c


def paths(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tokens(shape=(2, 32), vocab=40, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@pytest.mark.parametrize("model", [{}, MODERN], ids=["gpt2_like", "llama_like"])
def test_adapted_model_equals_the_base_at_initialization(model):
  task = TASKS.get("causal_lm").create(lora_config(**model), VocabInfo(40))
  adapted = task.model
  assert isinstance(adapted, lora.Adapted)
  expected = {"layer_1/attn/out", "layer_1/mlp/wo"} | (
      {"layer_1/attn/q", "layer_1/attn/kv", "layer_1/mlp/wi_gate", "layer_1/mlp/wi_up"} if model else
      {"layer_1/attn/qkv", "layer_1/mlp/wi"})
  assert expected <= set(adapted.paths) and "lm_head" not in adapted.paths
  params = strip_boxes(jax.jit(adapted.init)(jax.random.PRNGKey(0), tokens())["params"])
  base = strip_boxes(jax.jit(adapted.base.init)(jax.random.PRNGKey(0), tokens())["params"])
  # The adapters sit beside their kernels and leave every base parameter exactly as a base model initializes it.
  assert paths(lora.strip(params)).keys() == paths(base).keys()
  assert all(np.array_equal(v, paths(base)[k]) for k, v in paths(lora.strip(params)).items())
  # The low-rank term is exactly zero (B = 0), so the outputs are the base model's to the bit. Compared op by op:
  # compiled, XLA may lay out the matmuls differently once their input feeds the adapter too (last-bit changes).
  x = tokens((1, 8), seed=1)
  np.testing.assert_array_equal(adapted.apply({"params": params}, x), adapted.base.apply({"params": base}, x))


def test_merged_weights_equal_the_adapted_model():
  task = TASKS.get("causal_lm").create(lora_config(**MODERN), VocabInfo(40))
  params = strip_boxes(jax.jit(task.model.init)(jax.random.PRNGKey(0), tokens())["params"])
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype) if lora.is_adapter(p) else v, params)
  x = tokens(seed=3)
  adapted = jax.jit(task.model.apply)({"params": params}, x)
  merged = jax.jit(task.model.base.apply)({"params": lora.merge(params, task.model.settings.scale)}, x)
  base = jax.jit(task.model.base.apply)({"params": lora.strip(params)}, x)
  assert float(jnp.abs(adapted - base).max()) > 0.1  # the adapters do change the model
  np.testing.assert_allclose(merged, adapted, atol=2e-5, rtol=1e-5)


def test_targets_matching_no_layer_are_one_line_listing_real_paths():
  c = lora_config()
  c.finetune.lora.targets = "attention/query"
  with pytest.raises(ConfigError) as e:
    TASKS.get("causal_lm").create(c, VocabInfo(40))
  message = str(e.value)
  assert "\n" not in message and "config.finetune.lora.targets='attention/query'" in message
  assert "layer_0/attn/qkv" in message and "layer_0/mlp/wi" in message


@pytest.mark.parametrize("field, value, expected", [
    ("rank", -1, "config.finetune.lora.rank=-1 is invalid: must be >= 0"),
    ("targets", "attn/(qkv", "config.finetune.lora.targets='attn/(qkv' is invalid: is not a regular expression"),
    ("dropout", 1.0, "config.finetune.lora.dropout=1.0"),
])
def test_bad_lora_fields_are_one_line(field, value, expected):
  c = tiny.get_config()
  c.finetune.lora[field] = value
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert expected in str(e.value) and "\n" not in str(e.value)


def test_tasks_without_adapters_refuse_a_rank():
  c = base_config()
  c.task = "mlm"
  c.model.name = "bert"
  c.finetune.lora.rank = 8
  with pytest.raises(ConfigError, match=r"task='mlm' does not train LoRA adapters \(the tasks that do: causal_lm"):
    validate(c)


def build(config):
  mesh = sharding.make_mesh(config.mesh)
  task = TASKS.get(config.task).create(config, VocabInfo(40))
  return programs.build(config, task, mesh)


def test_adapters_shard_like_their_kernels_and_only_they_have_moments():
  c = lora_config()
  c.mesh.update(data=2, fsdp=2, tensor=2)
  progs = build(c)
  specs = {k: v.spec for k, v in paths(progs.state_shardings.params).items()}
  for layer in progs.model.paths:
    at = "".join(f"['{name}']" for name in layer.split("/"))
    kernel = tuple(specs[at + "['kernel']"]) + (None,) * 4
    a, b = specs[at + "['lora_a']"], specs[at + "['lora_b']"]
    n_in = len(a) - 1
    assert tuple(a)[:n_in] == kernel[:n_in] and a[n_in] is None, layer
    assert b[0] is None and tuple(b)[1:] == kernel[n_in:n_in + len(b) - 1], layer
  assert any(s is not None for s in specs["['layer_0']['attn']['qkv']['lora_b']"])  # heads over tensor
  # Adam's moments exist for the adapters only: frozen parameters have no optimizer state.
  moments = [leaf for leaf in jax.tree_util.tree_leaves(progs.abstract_state(c).opt_state) if leaf.ndim >= 1]
  adapters = [v for k, v in paths(progs.abstract_state(c).params).items() if "lora_" in k]
  assert len(moments) == 2 * len(adapters)


@pytest.mark.parametrize("microbatches", [1, 2])
def test_a_train_step_changes_only_the_adapters(microbatches):
  c = lora_config()
  c.optim.update(learning_rate=1e-2, warmup_steps=0)
  c.train.microbatches = microbatches
  progs = build(c)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, c.seed, progs.task.init_args(), progs.state_shardings)
    before = jax.device_get(state.params)
    x = tokens((1, c.train.batch_size, c.data.seq_len + 1), seed=4)
    batch = {"inputs": x[..., :-1], "targets": x[..., 1:], "positions": jnp.broadcast_to(jnp.arange(32), (1, 8, 32)),
             "segment_ids": jnp.ones((1, 8, 32), jnp.int32), "loss_mask": jnp.ones((1, 8, 32), jnp.float32)}
    batch = sharding.global_batch(jax.device_get(batch), progs.mesh, progs.train_batch_spec)
    state, metrics = progs.train_fn(state, batch)
  after = jax.device_get(state.params)
  changed = {k for k, v in paths(after).items() if not np.array_equal(v, paths(before)[k])}
  adapters = {k for k in paths(after) if "lora_" in k}
  # B leaves zero after one step; A moves with it only from the second step on (its gradient is B-weighted).
  assert {k for k in adapters if k.endswith("['lora_b']")} <= changed <= adapters
  assert float(metrics["grad_norm"][0]) > 0


def test_frozen_gradients_read_zero_and_trained_ones_are_exact():
  c = lora_config()
  task = TASKS.get("causal_lm").create(c, VocabInfo(40))
  params = strip_boxes(jax.jit(task.model.init)(jax.random.PRNGKey(0), tokens())["params"])
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.1 if lora.is_adapter(p) else v, params)
  x = tokens((4, 33), seed=5)
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "positions": jnp.broadcast_to(jnp.arange(32), (4, 32)),
           "segment_ids": jnp.ones((4, 32), jnp.int32), "loss_mask": jnp.ones((4, 32), jnp.float32)}
  (_, _), grads = jax.jit(lambda p: loss_and_grads(p, batch, jax.random.PRNGKey(0), task=task))(params)
  full = jax.jit(jax.grad(lambda p: task.loss(p, batch, jax.random.PRNGKey(0))[0]))(params)
  for key, g in paths(grads).items():
    if "lora_" in key:
      np.testing.assert_allclose(g, paths(full)[key], rtol=1e-5, atol=1e-7)
    else:
      assert not np.any(g), key


# --- an imported GPT-2, trained with adapters and exported ------------------------------------------------------

TEXT = ["The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine, they say; 12 of 13 agree.",
        "Café naïve résumé — emoji 🙂 and tabs\tare text too.", "She sells sea shells by the sea shore."]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A tiny random GPT-2 saved by transformers (a byte-level BPE vocabulary trained here), imported as a run."""
  torch, transformers, tokenizers = (pytest.importorskip(m) for m in ("torch", "transformers", "tokenizers"))
  from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("lora")
  hf_dir = root / "gpt2"
  hf_dir.mkdir()
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(TEXT * 3, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
  bpe.save_model(str(hf_dir))
  vocab = json.loads((hf_dir / "vocab.json").read_text())
  order = sorted(vocab, key=lambda piece: (piece == "<|endoftext|>", vocab[piece]))
  (hf_dir / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(order)}))
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(order), n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=len(order) - 1, eos_token_id=len(order) - 1)
  transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
  transformers.GPT2Tokenizer.from_pretrained(str(hf_dir)).save_pretrained(hf_dir)
  corpus = root / "corpus.txt"
  corpus.write_text("\n\n".join(TEXT * 20), encoding="utf-8")
  base = base_config()
  base.data.update(source="files", paths=str(corpus), seq_len=16)
  import_checkpoint(hf_dir, root / "imported", base)
  return root


@pytest.fixture(scope="module")
def lora_run(imported):
  """The import trained for a few steps with LoRA adapters (finetune.init_from)."""
  from lmjax.saved_run import load_config  # pylint: disable=import-outside-toplevel
  root = imported
  c = load_config(root / "imported")
  c.finetune.init_from = str(root / "imported")
  c.finetune.lora.update(rank=4, alpha=8.0)
  c.optim.update(learning_rate=3e-2, warmup_steps=0)
  c.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=6, checkpoint_every=6, eval_batches=2,
                 num_samples=0, plot=False, tensorboard=False, async_checkpoints=False)
  payload = json.dumps([{"config": c.to_dict(), "workdir": str(root / "lora")}])
  out = subprocess.run([sys.executable, __file__, payload], env=single_device_env(), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return root


def hf_logits(model, ids_BL):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(torch.tensor(ids_BL)).logits.numpy()


def lmjax_logits(workdir, ids_hf_BL):
  """The run's model (as generation and evaluation build it) on HF ids, over HF ids."""
  from lmjax.saved_run import open_run  # pylint: disable=import-outside-toplevel
  run = open_run(workdir)
  model = run.model()
  params, _ = run.load_params()
  vocab = run.tokenizer.vocab_map
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(vocab.lmjax_of_hf[ids_hf_BL], jnp.int32))
  return np.asarray(logits)[..., vocab.lmjax_of_hf], model, params


@pytest.mark.slow
def test_lora_on_an_imported_gpt2_exports_merged_and_as_a_peft_adapter(lora_run, tmp_path):
  peft = pytest.importorskip("peft")
  import transformers  # pylint: disable=import-outside-toplevel
  from lmjax.hf.export_checkpoint import export_run  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import load_params  # pylint: disable=import-outside-toplevel
  ids = np.random.default_rng(0).integers(0, 300, (3, 20))
  ours, model, params = lmjax_logits(lora_run / "lora", ids)
  assert isinstance(model, lora.Adapted)  # what lmjax.generate and evaluation get from the run

  # Training moved the adapters and nothing else: the base is the imported checkpoint, bit for bit.
  imported, _ = load_params(lora_run / "imported")
  assert paths(lora.strip(jax.device_get(params))).keys() == paths(imported).keys()
  assert all(np.array_equal(v, paths(imported)[k]) for k, v in paths(lora.strip(jax.device_get(params))).items())
  assert any(np.any(v) for k, v in paths(params).items() if k.endswith("['lora_b']"))
  original = transformers.GPT2LMHeadModel.from_pretrained(lora_run / "gpt2").eval()
  assert np.abs(hf_logits(original, ids) - ours).max() > 1e-3  # the adapters changed the model

  merged = export_run(lora_run / "lora", tmp_path / "merged")
  assert merged.lora == "merged"
  np.testing.assert_allclose(hf_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), ids),
                             ours, atol=1e-4, rtol=0)

  export_run(lora_run / "lora", tmp_path / "base", lora_mode="base")
  adapter = export_run(lora_run / "lora", tmp_path / "adapter", lora_mode="adapter", base_model="tiny-gpt2")
  assert adapter.adapter_modules == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in both layers
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["fan_in_fan_out"] is True
  for base_dir in (tmp_path / "base", lora_run / "gpt2"):  # the exported base, or the checkpoint imported
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    np.testing.assert_allclose(hf_logits(with_adapter, ids), ours, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_run_started_from_a_lora_run_starts_from_its_merged_weights(lora_run):
  from lmjax import init_from  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import load_config, load_params  # pylint: disable=import-outside-toplevel
  c = load_config(lora_run / "lora")
  c.finetune.init_from = str(lora_run / "lora")
  saved, _ = load_params(lora_run / "lora")
  merged = lora.merge(jax.device_get(saved), lora.LoraSettings.from_config(c).scale)
  for rank in (0, 2):  # a plain run, or one with adapters of its own (which start fresh)
    c.finetune.lora.rank = rank
    fresh = jax.device_get(saved) if rank else jax.tree_util.tree_map(np.zeros_like, merged)
    new, copied = init_from.pretrained_params(c, fresh)
    assert set(copied) == set(merged)
    assert all(np.array_equal(v, paths(merged)[k]) for k, v in paths(lora.strip(new)).items())
    if rank:
      assert all(np.array_equal(v, paths(fresh)[k]) for k, v in paths(new).items() if "lora_" in k)


def test_lora_settings_are_part_of_a_runs_identity():
  from lmjax.workdir import _is_identity  # pylint: disable=import-outside-toplevel
  assert _is_identity("finetune.lora.rank") and _is_identity("finetune.lora.targets")
  assert not _is_identity("finetune.head_lr_multiplier")


def test_export_without_adapters_refuses_the_lora_modes(imported, tmp_path):
  from lmjax.hf.export_checkpoint import export_run  # pylint: disable=import-outside-toplevel
  from lmjax.hf.files import HfError  # pylint: disable=import-outside-toplevel
  with pytest.raises(HfError, match=r"--lora=adapter exports a LoRA run's parts, but .* trained no adapters"):
    export_run(imported / "imported", tmp_path / "x", lora_mode="adapter")


if __name__ == "__main__":  # the training subprocess of `lora_run`
  from lmjax import train  # pylint: disable=ungrouped-imports
  for job in json.loads(sys.argv[1]):
    config = base_config()
    config.update_from_flattened_dict(flatten(job["config"]))
    train.train_and_evaluate(config, job["workdir"])
