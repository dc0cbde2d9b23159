"""Preference optimization (task='dpo') and the runs it starts from (task='sft'): the loss against a hand
computation, response log-probabilities against a direct sum, one-line errors, and tiny runs in which SFT writes
its answers and DPO's reward margin rises, with a loaded reference or the LoRA policy's own frozen base."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, single_device_env
from configs import tiny
from lmjax.config import ConfigError, base_config, flatten
from lmjax.config_validation import validate
from lmjax.data.chat import ChatTemplate
from lmjax.data.text_files import DataError
from lmjax.data.records import Record
from lmjax.data.tokenizers import ByteTokenizer
from lmjax.models import model_config
from lmjax.tasks.dpo import encode_pairs, preference_loss, response_logps
from lmjax.writers import read_metrics


def log_sigmoid(x):
  return -np.log1p(np.exp(-x))


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.2)])
def test_the_loss_equals_a_hand_computation(beta, eps):
  policy_chosen, policy_rejected = np.array([-5.0, -3.0, -8.0]), np.array([-6.0, -2.5, -8.0])
  reference_chosen, reference_rejected = np.array([-5.5, -2.0, -7.0]), np.array([-5.0, -3.0, -9.5])
  loss, chosen, rejected = preference_loss(jnp.asarray(policy_chosen), jnp.asarray(policy_rejected),
                                           jnp.asarray(reference_chosen), jnp.asarray(reference_rejected), beta, eps)
  # Pair 0: chosen up 0.5, rejected down 1.0 -> margin beta * 1.5; pair 1: chosen down 1, rejected up 0.5.
  margin = beta * np.array([0.5 - (-1.0), -1.0 - 0.5, -1.0 - 1.5])
  np.testing.assert_allclose(chosen, beta * np.array([0.5, -1.0, -1.0]), rtol=1e-6)
  np.testing.assert_allclose(rejected, beta * np.array([-1.0, 0.5, 1.5]), rtol=1e-6)
  np.testing.assert_allclose(loss, -(1 - eps) * log_sigmoid(margin) - eps * log_sigmoid(-margin), rtol=1e-6)


def test_response_log_probabilities_sum_the_trained_tokens():
  tok = ByteTokenizer()
  c = tiny.get_config()
  c.data.seq_len = 48
  records = [Record("t:1", {"prompt": "Q: 2+2=", "chosen": "4", "rejected": "five"}),
             Record("t:2", {"prompt": [{"role": "user", "content": "1+1?"}], "chosen": "2",
                            "rejected": [{"role": "assistant", "content": "3"}]})]
  arrays, prompts = encode_pairs(c, records, tok, ChatTemplate())
  assert arrays["inputs"].shape == (2, 2, 48) and prompts[1].reference == "2"
  # Only the response and the <eos> after it count: "4" + <eos>, "five" + <eos>, and so on.
  np.testing.assert_array_equal(arrays["loss_mask"].sum(-1), [[2, 5], [4, 4]])  # replies end "\n\n"
  model = model_config(name="gpt", vocab_size=tok.vocab_size, num_layers=1, num_heads=2, d_model=16, mlp_dim=32,
                       max_len=48).build()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 48), jnp.int32))["params"]
  batch = {k: jnp.asarray(v) for k, v in arrays.items()}
  ours = jax.jit(lambda p: response_logps(model, p, batch, deterministic=True))(params)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, batch["inputs"].reshape(4, 48))
  logp = np.asarray(jax.nn.log_softmax(logits))
  targets, mask = arrays["targets"].reshape(4, 48), arrays["loss_mask"].reshape(4, 48)
  by_hand = [sum(logp[r, t, targets[r, t]] for t in range(48) if mask[r, t]) for r in range(4)]
  np.testing.assert_allclose(ours.reshape(-1), by_hand, rtol=1e-5)


@pytest.mark.parametrize("value, expected", [
    ({"prompt": "Q: " + "x" * 40, "chosen": "yes", "rejected": "no"},
     "t.jsonl:7: the pair is 48 tokens long (prompt 43, chosen 3, rejected 2, with <bos> and <eos>), more than "
     "data.seq_len + 1 = 33; raise data.seq_len or drop the pair"),
    ({"prompt": "Q", "chosen": "a"}, "t.jsonl:7: a preference pair needs 'prompt', 'chosen' and 'rejected'; it lacks "
                                     "'rejected'"),
    ({"prompt": "Q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "'chosen' must be a string or a list with one assistant message"),
])
def test_bad_pairs_are_one_line(value, expected):
  with pytest.raises(DataError) as e:
    encode_pairs(tiny.get_config(), [Record("t.jsonl:7", value)], ByteTokenizer(), ChatTemplate())
  assert expected in str(e.value) and "\n" not in str(e.value)


def test_dpo_needs_a_reference():
  c = tiny.get_config()
  c.task = "dpo"
  c.finetune.update(train_file="t.jsonl", eval_file="e.jsonl")
  with pytest.raises(ConfigError, match="config.dpo.reference_workdir='' is invalid: task='dpo' compares the policy"):
    validate(c)
  c.dpo.update(reference_workdir="runs/sft", label_smoothing=0.5)
  with pytest.raises(ConfigError, match="config.dpo.label_smoothing=0.5 is invalid"):
    validate(c)


# --- tiny runs: SFT, then DPO from it --------------------------------------------------------------------------

def write_data(root: Path) -> None:
  """Sums of two digits, as chats for SFT and as preference pairs (the right sum against a wrong one) for DPO."""
  rng = np.random.default_rng(0)
  sft, pairs = [], []
  for i in range(64):
    a, b = (int(v) for v in rng.integers(0, 10, 2))
    wrong = (a + b + int(rng.integers(1, 9))) % 19
    sft.append({"messages": [{"role": "user", "content": f"{a}+{b}"}, {"role": "assistant", "content": str(a + b)}]})
    pairs.append({"prompt": [{"role": "user", "content": f"{a}+{b}"}], "chosen": str(a + b), "rejected": str(wrong)})
  for name, rows in (("sft", sft), ("pairs", pairs)):
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_config(root: Path, task: str, **finetune):
  c = tiny.get_config()
  c.task = task
  c.tokenizer.kind = "byte"
  c.model.update(num_layers=2, d_model=32, mlp_dim=64, max_len=48)
  c.data.update(seq_len=48, data_dir=str(root / "data"))
  name = "sft" if task == "sft" else "pairs"
  c.finetune.update(train_file=str(root / f"{name}.jsonl"), eval_file=str(root / f"{name}.jsonl"), **finetune)
  c.optim.update(learning_rate=3e-3, warmup_steps=0, schedule="constant")
  c.train.update(batch_size=8, num_steps=40, steps_per_call=10, log_every=10, eval_every=20, checkpoint_every=40,
                 eval_batches=0, num_samples=2, sample_length=8, plot=False, tensorboard=False)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("post_training")
  write_data(root)
  sft = run_config(root, "sft")
  sft.optim.learning_rate = 1e-2
  dpo = run_config(root, "dpo", init_from=str(root / "sft"))
  dpo_lora = run_config(root, "dpo", init_from=str(root / "sft"))
  dpo_lora.finetune.lora.update(rank=4, alpha=16.0)
  dpo_lora.optim.learning_rate = 2e-2
  for c in (dpo, dpo_lora):
    c.dpo.beta = 0.5
    c.train.num_samples = 0
  jobs = [{"config": c.to_dict(), "workdir": str(root / name)}
          for c, name in ((sft, "sft"), (dpo, "dpo"), (dpo_lora, "dpo_lora"))]
  out = subprocess.run([sys.executable, __file__, json.dumps(jobs)], env=single_device_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return root


def evals(workdir):
  return [r for r in read_metrics(workdir) if r["split"] == "eval"]


@pytest.mark.slow
def test_sft_learns_the_replies_and_writes_its_answers(runs):
  first, last = evals(runs / "sft")
  assert last["loss"] < first["loss"]
  answers = [json.loads(line) for line in (runs / "sft" / "samples" / "step_000040.jsonl").read_text().splitlines()]
  assert len(answers) == 2 and answers[0]["prompt"].endswith("### Assistant:\n")
  assert all(set(a) == {"step", "prompt", "answer", "reference"} for a in answers)
  sheet = (runs / "sft" / "samples" / "step_000040.txt").read_text()
  assert "--- reference ---" in sheet and answers[1]["reference"] in sheet


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "dpo_lora"])
def test_dpo_raises_the_reward_margin(runs, name):
  """The policy starts as the reference (margin 0 on every pair); training on the pairs opens the margin."""
  train = [r for r in read_metrics(runs / name) if r["split"] == "train"]
  assert {"chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"} <= set(train[-1])
  assert train[-1]["reward_margin"] > train[0]["reward_margin"]
  first, last = evals(runs / name)
  assert first["reward_margin"] > 0 and last["reward_margin"] > 0 and last["reward_accuracy"] > 0.5
  # The reference never moves: its own preference is the same at every eval.
  assert first["reference_logp_accuracy"] == last["reference_logp_accuracy"]


@pytest.mark.slow
def test_the_reference_stays_out_of_the_checkpoints(runs):
  from lmjax.models import lora  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import load_params  # pylint: disable=import-outside-toplevel
  sft, _ = load_params(runs / "sft")
  dpo, _ = load_params(runs / "dpo")
  assert jax.tree_util.tree_structure(sft) == jax.tree_util.tree_structure(dpo)
  # With LoRA the reference is the policy's base, which training leaves exactly as the SFT run's.
  dpo_lora, _ = load_params(runs / "dpo_lora")
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), lora.strip(dpo_lora), sft)
  assert all(jax.tree_util.tree_leaves(same))


if __name__ == "__main__":  # the training subprocess of `runs`
  from lmjax import train  # pylint: disable=ungrouped-imports
  for job in json.loads(sys.argv[1]):
    config = base_config()
    config.update_from_flattened_dict(flatten(job["config"]))
    train.train_and_evaluate(config, job["workdir"])
