"""pyproject.toml: every console script points at a command's entry function, and every command has a script."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]

# Modules with a __main__ block that are not commands of the package.
NOT_COMMANDS = {
    "lmjax.data.corpus.make_corpus": "rebuilds the shipped kjv.txt.xz from a verse dump; for maintainers",
}


def module_source(module: str) -> tuple[Path, ast.Module]:
  path = Path(importlib.util.find_spec(module).origin)  # imports the parent packages only, never the module
  return path, ast.parse(path.read_text(), filename=str(path))


def is_main_block(node: ast.stmt) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
          and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def calls(nodes: list[ast.stmt]) -> list[str]:
  """The dotted names called anywhere in these statements, e.g. 'app.run', 'run'."""
  return [ast.unparse(n.func) for stmt in nodes for n in ast.walk(stmt) if isinstance(n, ast.Call)]


def command_modules() -> dict[str, Path]:
  found = {}
  for path in sorted((REPO / "lmjax").rglob("*.py")):
    if any(is_main_block(node) for node in ast.parse(path.read_text()).body):
      found[".".join(path.relative_to(REPO).with_suffix("").parts)] = path
  return found


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_runs_its_commands_entry_function(script):
  module, _, function = SCRIPTS[script].partition(":")
  path, tree = module_source(module)
  entry = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
  assert entry is not None, f"{script}: {path} has no top-level function {function}()"
  assert not entry.args.args, f"{script}: {module}.{function}() must take no arguments"
  assert "app.run" in calls(entry.body), f"{script}: {module}.{function}() does not start the absl app"
  # `python -m MODULE` and the script must be one and the same command.
  [main_block] = [n for n in tree.body if is_main_block(n)]
  assert calls(main_block.body) == [function], f"{path}: its __main__ block should only call {function}()"


def test_every_command_has_a_script():
  declared = {target.partition(":")[0] for target in SCRIPTS.values()}
  missing = sorted(set(command_modules()) - declared - set(NOT_COMMANDS))
  assert not missing, (f"{missing} can be run as programs but have no [project.scripts] entry in pyproject.toml; "
                       "add one (lmjax-NAME = \"MODULE:run\") or list the module in NOT_COMMANDS with the reason")
  assert set(NOT_COMMANDS) <= set(command_modules()), "NOT_COMMANDS names a module that no longer has __main__"


def test_script_names_are_lmjax_commands():
  assert all(name.startswith("lmjax-") for name in SCRIPTS), sorted(SCRIPTS)
  assert len(set(SCRIPTS.values())) == len(SCRIPTS), "two scripts run the same command"


@pytest.mark.parametrize("script, own_flag", [("lmjax-train", "--workdir"), ("lmjax-report", "--metric"),
                                             ("lmjax-profile", "--threads")])
def test_script_help_lists_the_commands_flags(script, own_flag):
  # What the installed script does: import the module, call the function, with argv[0] the script's name.
  module, _, function = SCRIPTS[script].partition(":")
  code = f"import sys; sys.argv[0] = {script!r}; from {module} import {function}; sys.exit({function}())"
  result = subprocess.run([sys.executable, "-c", code, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  help_text = result.stdout  # absl prints --help to stdout and exits with status 1
  assert f"{script}:" in help_text and own_flag in help_text and "--[no]verbose" in help_text, help_text


def test_package_data_ships_the_corpus():
  data = PYPROJECT["tool"]["setuptools"]["package-data"]["lmjax.data.corpus"]
  corpus = REPO / "lmjax" / "data" / "corpus"
  assert [p.name for p in corpus.glob("*.txt.xz")] and "*.txt.xz" in data and "README.md" in data


def test_extras_named_in_launch_scripts_and_docs_exist():
  extras = set(PYPROJECT["project"]["optional-dependencies"])
  texts = [*(REPO / "launch").iterdir(), REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "Makefile"]
  named = {name for path in texts for group in re.findall(r"\.\[([a-z0-9_,-]+)\]", path.read_text())
           for name in group.split(",")}
  assert {"tpu", "test"} <= named, named  # launch/tpu_pod.sh and the Makefile install these
  assert named <= extras, f"no such extra in pyproject.toml: {sorted(named - extras)}"
