"""Chat templates render conversations exactly as transformers' apply_chat_template does, and each message's span
of the rendered text is found."""

from __future__ import annotations

import pytest

from lmjax.data.chat import BUILTIN, ChatError, ChatTemplate

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
          "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")

CONVERSATION = [{"role": "system", "content": "Réponds en français. 日本語も"},
                {"role": "user", "content": "  Hi there!  "},
                {"role": "assistant", "content": "Bonjour ! 🙂"},
                {"role": "user", "content": "And {{ this }}?"},
                {"role": "assistant", "content": "Ça va."}]


def hf_tokenizer(template: str):
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                             unk_token="<unk>")
  tok.chat_template = template
  return tok


@pytest.mark.parametrize("template", [CHATML, LLAMA3, LLAMA2], ids=["chatml", "llama3", "llama2"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendering_equals_transformers(template, generation_prompt):
  tok = hf_tokenizer(template)
  ours = ChatTemplate(template, {"bos_token": "<s>", "eos_token": "</s>"}, "test")
  for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:4]):
    if template is LLAMA2 and generation_prompt and messages[-1]["role"] == "assistant":
      continue
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.render(messages, add_generation_prompt=generation_prompt) == want


def test_tokenizer_config_templates_and_their_special_tokens():
  config = {"chat_template": [{"name": "default", "template": LLAMA3}, {"name": "tool_use", "template": CHATML}],
            "bos_token": {"content": "<|begin_of_text|>", "lstrip": False}, "eos_token": "<|eot_id|>"}
  template = ChatTemplate.from_tokenizer_config(config)
  assert template.render(CONVERSATION[1:2]).startswith("<|begin_of_text|><|start_header_id|>user")
  assert ChatTemplate.from_tokenizer_config(config, choice="tool_use").source == CHATML
  assert ChatTemplate.from_tokenizer_config({"bos_token": "<s>"}) is None
  with pytest.raises(ChatError, match="no chat template named 'rag'"):
    ChatTemplate.from_tokenizer_config(config, choice="rag")


@pytest.mark.parametrize("template", [BUILTIN, CHATML, LLAMA3], ids=["builtin", "chatml", "llama3"])
def test_spans_cover_the_text_and_hold_each_message(template):
  ours = ChatTemplate(template, {"bos_token": "<s>", "eos_token": "</s>"}, "test")
  text, spans = ours.spans(CONVERSATION)
  assert text == ours.render(CONVERSATION)
  assert spans[0][0] == 0 and spans[-1][1] == len(text)
  assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  for message, (start, end) in zip(CONVERSATION, spans):
    assert message["content"].strip() in text[start:end]


def test_builtin_template_and_its_errors():
  t = ChatTemplate()
  assert t.render(CONVERSATION[1:3], add_generation_prompt=False) == (
      "### User:\n  Hi there!  \n\n### Assistant:\nBonjour ! 🙂\n\n")
  assert t.render(CONVERSATION[1:2], add_generation_prompt=True).endswith("### Assistant:\n")
  with pytest.raises(ChatError, match="role tool is not one of system, user, assistant"):
    t.render([{"role": "tool", "content": "x"}])
  with pytest.raises(ChatError, match="message 0 must be an object"):
    t.render([{"role": "user"}])
  with pytest.raises(ChatError, match="does not parse"):
    ChatTemplate("{% for m in messages %}", name="broken").render(CONVERSATION)
  # A template that rewrites earlier turns once a later one exists cannot give per-message spans.
  rewriting = "{% for m in messages %}{{ m['content'] if loop.last else '...' }}{% endfor %}"
  with pytest.raises(ChatError, match="changes the text of the earlier messages"):
    ChatTemplate(rewriting, name="rewriting").spans(CONVERSATION[1:3])
