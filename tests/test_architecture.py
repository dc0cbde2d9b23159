"""The shape of the code: the import graph is layered without cycles, Flax stays inside the models, and every name
a config can choose comes from a registry (so adding an architecture, task or position encoding is one file)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import lmjax
from lmjax import registry
from lmjax.config import base_config
from lmjax.config_validation import validate

PACKAGE = Path(lmjax.__file__).resolve().parent

# Lowest first. A module may import modules of its own layer or of lower ones, never of a higher one. The package
# itself (lmjax/__init__.py) is the facade that imports the registries' built-in entries, and stands above all.
LAYERS = (
    ("base", ("lmjax.registry", "lmjax.config", "lmjax.config_mixture", "lmjax.config_validation",
              "lmjax.metrics", "lmjax.text_metrics", "lmjax.finetune_metrics",
              "lmjax.preemption", "lmjax.distributed", "lmjax.writers", "lmjax.console", "lmjax.cli",
              "lmjax.eval_results", "lmjax.stats", "lmjax.provenance", "lmjax.failures")),
    ("data", ("lmjax.data", "lmjax.data.*", "lmjax.hf.files", "lmjax.hf.vocab", "lmjax.hf.tokenizers")),
    ("models", ("lmjax.models", "lmjax.models.*")),
    ("runs", ("lmjax.compile_cache", "lmjax.profiling", "lmjax.decode", "lmjax.saved_run", "lmjax.checkpoint",
              "lmjax.checkpoint_checksums",
              "lmjax.sharding", "lmjax.state", "lmjax.workdir_lock", "lmjax.optim", "lmjax.prepare", "lmjax.workdir",
              "lmjax.init_from", "lmjax.hf", "lmjax.hf.gpt2",
              "lmjax.hf.bert", "lmjax.hf.architectures", "lmjax.hf.adapter", "lmjax.hf.llama", "lmjax.hf.gemma",
              "lmjax.hf.t5", "lmjax.scoring", "lmjax.harness", "lmjax.frozen_run", "lmjax.hf.peft")),
    ("tasks", ("lmjax.tasks", "lmjax.tasks.*", "lmjax.distill", "lmjax.distill.heads", "lmjax.distill.layers",
               "lmjax.distill.losses", "lmjax.distill.offline", "lmjax.distill.student", "lmjax.distill.teacher")),
    ("programs", ("lmjax.step", "lmjax.programs", "lmjax.memory_check")),
    ("trainer", ("lmjax.train",)),
    ("commands", ("lmjax.main", "lmjax.generate", "lmjax.aot", "lmjax.sweep", "lmjax.hyper", "lmjax.report",
                  "lmjax.report_select", "lmjax.report_tables", "lmjax.report_runs", "lmjax.report_plots",
                  "lmjax.report_html", "lmjax.profile_summary", "lmjax.evaluate", "lmjax.prepare_beam", "lmjax.exit_status",
                  "lmjax.hf.import_checkpoint", "lmjax.hf.export_checkpoint", "lmjax.hf.workdir_config",
                  "lmjax.distill.precompute")),
)


def module_names() -> dict[str, Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
  """Every lmjax module `path` imports, at the top or inside functions (type-checking imports included)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmjax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if candidate in modules else node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("lmjax"))
  return {m for m in found if m in modules}


def layer_of(module: str) -> int:
  matches = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
  assert matches, f"{module} is in no layer of tests/test_architecture.py; add it where it belongs"
  return max(matches)  # a specific entry (lmjax.distill.precompute) outranks a pattern of a lower layer


def graph() -> dict[str, set[str]]:
  modules = module_names()
  return {name: imports_of(path, modules) for name, path in modules.items() if name != "lmjax"}


def test_no_module_imports_from_a_higher_layer():
  upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m, targets in graph().items() for t in targets if t != "lmjax" and layer_of(t) > layer_of(m)]
  assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycles():
  edges = graph()
  cycles, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    for target in sorted(edges.get(node, ())):
      if state.get(target) == "open":
        cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
      elif target not in state:
        visit(target, stack + [target])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])
  assert not cycles, "\n".join(cycles)


def test_flax_stays_inside_the_models():
  outside = sorted(str(path.relative_to(PACKAGE)) for name, path in module_names().items()
                   if not name.startswith("lmjax.models") and name != "lmjax.state"
                   and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "flax" in ast.unparse(n)
                           for n in ast.walk(ast.parse(path.read_text()))))
  assert not outside, outside


def test_no_optional_hook_is_probed():
  """Optional hooks have explicit defaults on their base classes; nothing asks whether an object has them."""
  probing = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in module_names().values()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "hasattr"]
  assert not probing, probing


@pytest.mark.parametrize("kind, field", [(registry.MODELS, "model.name"), (registry.POSITIONS, "model.position"),
                                         (registry.TASKS, "task"), (registry.TOKENIZERS, "tokenizer.kind")])
def test_unknown_names_are_refused_with_the_registered_ones(kind, field):
  c = base_config()
  section, _, key = field.rpartition(".")
  (c[section] if section else c)[key] = "nonexistent"
  with pytest.raises(Exception) as e:
    validate(c)
  message = str(e.value)
  assert f"config.{field}='nonexistent'" in message and "\n" not in message
  assert all(name in message for name in kind.names())


def test_every_registered_name_has_a_valid_default_config_section():
  """base_config() holds the fields of every registered architecture, encoding and section, with defaults that
  validate together."""
  c = base_config()
  for _, family in registry.MODELS.items():
    assert set(family.section_fields()) <= set(c.model.keys())
  for _, encoding in registry.POSITIONS.items():
    assert set(encoding.section_fields()) <= set(c.model.keys())
  for name, section in registry.SECTIONS.items():
    assert set(section.fields) == set(c[name].keys())
  validate(c)
