"""Conversations as text: a checkpoint's Jinja chat template, or lmjax's built-in one, and which characters of the
rendered text each message produced (so supervised fine-tuning can put its loss on the assistant's turns only).

A conversation is a list of {"role", "content"} messages. `ChatTemplate.render` applies the template the way
Hugging Face tokenizers apply theirs: a sandboxed Jinja environment with trim_blocks and lstrip_blocks, the
variables `messages`, `add_generation_prompt` and the special-token strings (`bos_token`, `eos_token`, ...), a
`tojson` filter that keeps non-ASCII characters, and the helpers `raise_exception` and `strftime_now`.

`ChatTemplate.spans` finds what each message contributed by rendering the conversation one message longer at a
time: a template renders a prefix of a conversation as a prefix of its text, so message i owns the characters
between the render of messages[:i] and of messages[:i+1]. A template for which that does not hold (one that
rewrites earlier turns once later ones exist) is refused with a one-line error naming it.

The built-in template (`BUILTIN`) is for lmjax's own tokenizers, which have no chat tokens: each turn is a header
line naming the role, then its content and a blank line:

    ### System:
    You are terse.

    ### User:
    Hi!

    ### Assistant:
    Hello.

With add_generation_prompt the text ends with the assistant header, where a reply starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

ROLES = ("system", "user", "assistant")

BUILTIN = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role ' ~ message['role'] ~ ' is not one of system, user, assistant') }}"
    "{% endif %}"
    "### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}")


class ChatError(ValueError):
  """A conversation or template that cannot be rendered; the message is one line."""


def _environment():
  import jinja2  # pylint: disable=import-outside-toplevel
  import jinja2.ext  # pylint: disable=import-outside-toplevel  (not imported by `import jinja2` alone)
  from jinja2 import sandbox  # pylint: disable=import-outside-toplevel

  def raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
             sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


def check_messages(messages: Any, where: str = "conversation") -> list[dict[str, str]]:
  """The messages as a list of {'role', 'content'} dicts with string values, or a one-line ChatError."""
  if not isinstance(messages, list) or not messages:
    raise ChatError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
      raise ChatError(f"{where}: message {i} must be an object with string 'role' and 'content' (got {m!r:.80})")
    out.append({**m, "role": m["role"], "content": m["content"]})
  return out


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
  """A template compiled once: a dataset renders each conversation once per message."""
  return _environment().from_string(source)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A Jinja chat template and the special-token strings it may refer to."""
  source: str = BUILTIN
  special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)  # bos_token, eos_token, ...
  name: str = "builtin"  # for messages: where the template came from

  @classmethod
  def from_tokenizer_config(cls, tokenizer_config: Mapping[str, Any], where: str = "tokenizer_config.json",
                            choice: str = "default") -> "ChatTemplate | None":
    """The template of a Hugging Face tokenizer_config.json (a string, or a list of named templates), with its
    special-token strings; None when it has none."""
    template = tokenizer_config.get("chat_template")
    if template is None:
      return None
    if isinstance(template, list):
      named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
      if choice not in named:
        raise ChatError(f"{where}: no chat template named {choice!r} (it has {', '.join(map(str, named))})")
      template = named[choice]
    if not isinstance(template, str):
      raise ChatError(f"{where}: chat_template must be a string or a list of {{'name', 'template'}}")
    specials = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
      value = tokenizer_config.get(key)
      if isinstance(value, Mapping):  # an AddedToken written out as {"content": ...}
        value = value.get("content")
      if isinstance(value, str):
        specials[key] = value
    return cls(template, specials, where)

  def render(self, messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False,
             **variables: Any) -> str:
    import jinja2  # pylint: disable=import-outside-toplevel
    messages = check_messages(list(messages), self.name)
    try:
      template = _compiled(self.source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ChatError(f"{self.name}: the chat template does not parse ({e.message}, line {e.lineno})") from None
    try:
      return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                             **{**self.special_tokens, **variables})
    except jinja2.exceptions.TemplateError as e:
      raise ChatError(f"{self.name}: the chat template refused the conversation: {e}") from None

  def spans(self, messages: Iterable[Mapping[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, [start, end) character span of each message in it)."""
    messages = check_messages(list(messages), self.name)
    spans, previous = [], ""
    for i in range(1, len(messages) + 1):
      text = self.render(messages[:i])
      if not text.startswith(previous):
        raise ChatError(f"{self.name}: rendering message {i - 1} changes the text of the earlier messages, so "
                        f"its tokens cannot be told apart; use a template that renders turns in order")
      spans.append((len(previous), len(text)))
      previous = text
    return previous, spans


def from_directory(directory: str | Path) -> ChatTemplate:
  """The chat template of a saved tokenizer (a workdir's tokenizer/, or a checkpoint directory): its
  tokenizer_config.json's chat_template, or a chat_template.jinja beside it as newer checkpoints store it; the
  built-in template when it has neither."""
  directory = Path(directory)
  path = directory / "tokenizer_config.json"
  try:
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
  except json.JSONDecodeError as e:
    raise ChatError(f"{path} is not valid JSON ({e})") from None
  if config.get("chat_template") is None and (directory / "chat_template.jinja").is_file():
    config = {**config, "chat_template": (directory / "chat_template.jinja").read_text(encoding="utf-8")}
  return ChatTemplate.from_tokenizer_config(config, str(path)) or ChatTemplate()


def prompt_ids(template: ChatTemplate, tokenizer: Any, messages: Iterable[Mapping[str, str]]) -> list[int]:
  """The token ids that ask the model for the next assistant turn, as transformers' apply_chat_template(...,
  add_generation_prompt=True) gives them: the rendered text encoded as it is (a checkpoint's template writes its
  own <bos>); the built-in template's text follows lmjax's <bos>, as every lmjax document does."""
  from lmjax.data.tokenizers import BOS_ID  # pylint: disable=import-outside-toplevel
  ids = tokenizer.encode(template.render(messages, add_generation_prompt=True)).tolist()
  return [BOS_ID, *ids] if template.name == "builtin" else ids
