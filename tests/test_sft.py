"""Supervised fine-tuning data: the loss falls exactly on the assistant's replies (or the completion), packed rows
compute what the examples compute one per row, and bad examples fail in one line naming them. (Training runs
of task='sft' are in tests/test_dpo.py, whose preference runs start from one.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.data import chat_examples, packing
from lmjax.data.chat import ChatTemplate
from lmjax.data.text_files import DataError
from lmjax.data.records import Record, read_jsonl
from lmjax.data.tokenizers import BOS_ID, EOS_ID, ByteTokenizer
from lmjax.models import model_config
from lmjax.tasks.sft import SftTask

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And 2+2?"},
                {"role": "assistant", "content": "4, ça va."}]
TOKENIZER = ByteTokenizer()


def trained_text(encoded):
  """The text of the trained tokens, <eos> shown as '|'."""
  ids = encoded.ids[encoded.trained].tolist()
  eos = ids[-1] == EOS_ID
  return TOKENIZER.decode(ids[:-1] if eos else ids) + ("|" if eos else "")


@pytest.mark.parametrize("template, replies", [
    (ChatTemplate(), "Hello.\n\n4, ça va.\n\n|"),
    (ChatTemplate(CHATML, {}, "chatml"), "Hello.<|im_end|>\n4, ça va.<|im_end|>\n|"),
], ids=["builtin", "chatml"])
def test_loss_is_on_the_replies_only(template, replies):
  encoded = chat_examples.encode(chat_examples.sft_pieces(Record("t:1", {"messages": CONVERSATION}), template),
                                 TOKENIZER)
  assert encoded.ids[0] == BOS_ID and encoded.ids[-1] == EOS_ID
  assert trained_text(encoded) == replies
  # Everything is the rendered conversation, token for token.
  assert TOKENIZER.decode(encoded.ids) == template.render(CONVERSATION)
  # The sample prompt ends with the template's generation prompt: where the last reply starts.
  assert TOKENIZER.decode(encoded.prompt_ids) == template.render(CONVERSATION[:-1], add_generation_prompt=True)
  assert encoded.reference.startswith("4, ça va.")


def test_prompt_completion_trains_the_completion_and_eos():
  encoded = chat_examples.encode(chat_examples.sft_pieces(Record("t:1", {"prompt": "Q: 2+2?\nA:", "completion": " 4"}),
                                                          ChatTemplate()), TOKENIZER)
  assert trained_text(encoded) == " 4|"
  assert TOKENIZER.decode(encoded.prompt_ids) == "Q: 2+2?\nA:" and encoded.reference == " 4"


@pytest.mark.parametrize("value, expected", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "data.jsonl:3: the conversation has no assistant turn "
                                                        "(roles: user)"),
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "data.jsonl:3: builtin: the chat template refused the conversation: role tool is not one of"),
    ({"messages": [{"role": "user"}]}, "message 0 must be an object with string 'role' and 'content'"),
    ({"text": "plain"}, "data.jsonl:3: expected {\"messages\": [...]} or {\"prompt\", \"completion\"}"),
    ({"prompt": "q", "completion": ""}, "the completion is empty"),
])
def test_bad_examples_fail_in_one_line(value, expected):
  with pytest.raises(DataError) as e:
    chat_examples.sft_pieces(Record("data.jsonl:3", value), ChatTemplate())
  assert expected in str(e.value) and "\n" not in str(e.value)


def test_jsonl_errors_name_the_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "a", "completion": "b"}\n\n[1, 2]\n')
  with pytest.raises(DataError, match=r"bad.jsonl:3: expected a JSON object, got list"):
    read_jsonl(str(path), "finetune.train_file")
  with pytest.raises(DataError, match=r"config.finetune.train_file: '.*none\*.jsonl' matches no file"):
    read_jsonl(str(tmp_path / "none*.jsonl"), "finetune.train_file")


def test_sft_config_needs_its_files():
  c = tiny.get_config()
  c.task = "sft"
  with pytest.raises(ConfigError, match="config.finetune.train_file='' is invalid: task='sft' reads its examples"):
    validate(c)


def test_rows_hold_every_sequence_once_within_capacity():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 30, 200).tolist()
  rows = packing.assign_rows(lengths, 33)
  assert sorted(i for row in rows for i in row) == list(range(200))
  assert all(sum(lengths[i] for i in row) <= 33 for row in rows)
  assert len(rows) <= 1.1 * sum(lengths) / 33 + 1  # best-fit decreasing leaves little room unused


def test_packed_rows_compute_what_one_example_per_row_computes(tmp_path):
  """Per-token losses of a packed batch equal the same examples' losses one per row: no attention and no loss
  crosses examples."""
  rng = np.random.default_rng(1)
  examples = []
  for i in range(9):
    a, b = rng.integers(0, 50, 2)
    if i % 3:
      examples.append({"messages": [{"role": "user", "content": f"{a} + {b}?" * (1 + i % 2)},
                                    {"role": "assistant", "content": str(a + b)}]})
    else:
      examples.append({"prompt": f"sum {a} {b}:", "completion": f" {a + b}"})
  encoded = [chat_examples.encode(chat_examples.sft_pieces(Record(f"t:{i}", e), ChatTemplate()), TOKENIZER)
             for i, e in enumerate(examples)]
  L = 96
  packed, single = packing.pack(encoded, L), packing.pack(encoded, L, pack_rows=False)
  assert len(packed["inputs"]) < len(single["inputs"]) == 9
  assert packed["loss_mask"].sum() == single["loss_mask"].sum() == sum(e.trained[1:].sum() for e in encoded)

  model = model_config(name="gpt", vocab_size=TOKENIZER.vocab_size, num_layers=2, num_heads=2, d_model=32, mlp_dim=64,
                       max_len=L, position="rope").build()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))["params"]

  @jax.jit
  def nll_of(arrays):
    logits = model.apply({"params": params}, arrays["inputs"], positions_BL=arrays["positions"],
                         segment_ids_BL=arrays["segment_ids"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, arrays["targets"])

  def token_losses(arrays):
    nll = np.asarray(nll_of(arrays))
    # Each example's trained losses, found by its segment: (row, segment) pairs in row-major order.
    out = {}
    for r in range(len(arrays["inputs"])):
      for s in np.unique(arrays["segment_ids"][r]):
        here = (arrays["segment_ids"][r] == s) & (arrays["loss_mask"][r] > 0)
        if s and here.any():
          out[tuple(arrays["targets"][r][here])] = nll[r][here]
    return out

  # Padded with empty rows to the same shape: one compilation serves both.
  padded = {k: np.concatenate([v, np.zeros((9 - len(v), L), v.dtype)]) for k, v in packed.items()}
  packed_losses, single_losses = token_losses(padded), token_losses(single)
  assert packed_losses.keys() == single_losses.keys()
  for key, value in single_losses.items():
    np.testing.assert_allclose(packed_losses[key], value, rtol=2e-5, atol=2e-6)


def test_sft_data_from_files(tmp_path):
  """prepare_data: packed train rows, eval rows whose padding counts for nothing, held-out prompts to answer."""
  rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}!"}]}
          for i in range(20)]
  for name in ("train", "eval"):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = tiny.get_config()
  c.task = "sft"
  c.data.seq_len, c.model.max_len = 128, 128
  c.finetune.update(train_file=str(tmp_path / "train.jsonl"), eval_file=str(tmp_path / "eval.jsonl"))
  c.train.update(batch_size=4, num_samples=2)
  validate(c)
  data = SftTask.prepare_data(c, TOKENIZER, tmp_path)
  assert data.train["inputs"].shape[1] == 128 and len(data.train["inputs"]) < 20
  batches = data.eval_sets(0, 1)["eval"]
  assert sum(b["loss_mask"].sum() for b in batches) == data.eval["loss_mask"].sum()
  assert set(batches[0]) == set(packing.KEYS)
  prompts = data.sample_prompts()
  assert [p.reference for p in prompts] == ["0!", "1!"]
  assert TOKENIZER.decode(prompts[1].ids) == "### User:\nSay 1.\n\n### Assistant:\n"


def test_tfds_records_read_as_json_would_hold_them():
  """A TFDS example (bytes, arrays, a sequence of dicts stored as a dict of sequences) becomes plain JSON values."""
  from lmjax.data.records import _plain  # pylint: disable=import-outside-toplevel
  example = {"messages": {"role": np.array([b"user", b"assistant"]), "content": np.array([b"2+2?", "4 ✓".encode()])},
             "prompt": b"Q", "id": np.int64(3)}
  assert _plain(example) == {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4 ✓"}],
                             "prompt": "Q", "id": 3}
