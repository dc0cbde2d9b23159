"""What every lmjax command line shares: one-line errors for bad input and the exit statuses scripts rely on.

Exit statuses (the README's "What happens when" table says what to do about each):

  0   finished
  1   an internal error: a bug or a crash, with its traceback (worth a retry; worth a report if it repeats)
  2   bad input: a config file, field, flag, value, data file or prompt; one line naming it and the fix
  3   training diverged: too many consecutive non-finite steps, or a state that is not finite (nothing broken saved)
  4   the workdir is in use by another run (named by pid and host)
  5   the workdir cannot be used: a file, under a file, read-only, no permission, or not visible on every host
  6   out of disk space (or quota) while writing; the line names the file and the free space
  7   checkpoints exist but none of them restores
  75  stopped by SIGTERM or SIGINT (preemption, a time limit, Ctrl-C); rerun to resume (EX_TEMPFAIL)

Launch scripts retry 1 and 75 (and deaths by signal) and nothing else: the others fail the same way until a
person acts.
"""

import difflib
import importlib.util
import os
import sys
import traceback

from absl import flags

from lmjax import console

OK_EXIT_CODE = 0
INTERNAL_ERROR_EXIT_CODE = 1
BAD_INPUT_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
WORKDIR_LOCKED_EXIT_CODE = 4
WORKDIR_UNUSABLE_EXIT_CODE = 5
DISK_FULL_EXIT_CODE = 6
NO_RESTORABLE_CHECKPOINT_EXIT_CODE = 7
PREEMPTED_EXIT_CODE = 75  # also lmjax.preemption.PREEMPTED_EXIT_CODE


def fail(message: str, status: int = BAD_INPUT_EXIT_CODE) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _one_line(text: str, limit: int = 400) -> str:
  line = " ".join(str(text).replace("\\n", " ").split())
  return line if len(line) <= limit else line[: limit - 3] + "..."


def config_file_error(path: str, arg: str | None) -> str | None:
  """Loads a config file the way ml_collections does and calls get_config; what goes wrong, in one line (the
  file's line number included), or None if it loads."""
  spec = importlib.util.spec_from_file_location("lmjax_config_check", path)
  if spec is None or spec.loader is None:
    return f"--config={path}: not a Python file"
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
    code = f" ({_one_line(e.text, 80)})" if e.text and e.text.strip() else ""
    return f"--config={path}: syntax error at {where}{code}: {e.msg}"
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, (KeyboardInterrupt, SystemExit)):
      raise
    return f"--config={path}: importing it raised {_located(e, path)}"
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    return f"--config={path} defines no get_config(); a config file returns its ConfigDict from get_config()"
  try:
    get_config(arg) if arg is not None else get_config()
  except TypeError as e:
    if arg is not None and "positional argument" in str(e) and _raised_here(e):
      return f"--config={path}:{arg}: get_config() takes no argument; drop ':{arg}'"
    if arg is None and "positional argument" in str(e) and _raised_here(e):
      return f"--config={path}: get_config needs an argument; give it as --config={path}:ARG"
    return f"--config={path}: get_config({arg or ''}) raised {_located(e, path)}"
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, (KeyboardInterrupt, SystemExit)):
      raise
    return f"--config={path}: get_config({arg or ''}) raised {_located(e, path)}"
  return None


def _raised_here(error: BaseException) -> bool:
  """Whether the TypeError came from calling get_config itself (the wrong number of arguments), not its body."""
  frames = traceback.extract_tb(error.__traceback__)
  return len(frames) == 1


def _located(error: BaseException, path: str) -> str:
  here = os.path.abspath(path)
  frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == here]
  where = f" at line {frames[-1].lineno}" if frames else ""
  return f"{type(error).__name__}{where}: {_one_line(error, 300)}"


def _split_config_arg(value: str) -> tuple[str, str | None]:
  path, sep, arg = value.partition(":")
  return path, (arg if sep else None)


def override_error(argv: list[str]) -> str | None:
  """The first --config.a.b=v override that names no field of lmjax's config, in one line with the section's
  fields (and the closest one)."""
  from lmjax.config import base_config  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  for arg in argv[1:]:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    name = arg[len("--config."):].split("=", 1)[0]
    section, parts, prefix = base_config(), name.split("."), "config"
    for i, part in enumerate(parts):
      if not isinstance(section, ml_collections.ConfigDict):
        return f"{arg}: {prefix} is a value, not a section, so it has no field '{part}'"
      if part not in section:
        fields = sorted(section.keys())
        close = difflib.get_close_matches(part, fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{arg}: {prefix} has no field '{part}'{hint}; its fields are {', '.join(fields)}"
      section, prefix = section[part], f"{prefix}.{part}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad config file or --config override (e.g. a misspelt field) is one line, not a
  traceback."""
  config_args = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")]
  config_args += [value for flag, value in zip(argv[1:], argv[2:]) if flag == "--config"]  # --config FILE
  for value in config_args:
    path, _ = _split_config_arg(value)
    if not os.path.isfile(path):
      fail(f"--config={path}: no such config file; see configs/ for the available ones.")
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # Name the real cause: the config file itself, an override of a field that does not exist, or the flag.
    for value in config_args:
      if (message := config_file_error(*_split_config_arg(value))) is not None:
        fail(message)
    if (message := override_error(argv)) is not None:
      fail(message)
    if not isinstance(e, (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)):
      raise
    message = _one_line(e, 600)
    if isinstance(e, KeyError) and len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]  # KeyError's repr quotes
    fail(f"bad flag: {message}")
  raise AssertionError("unreachable")


def describe_command(module_name: str) -> None:
  """Makes absl's --help describe the command being run: call it in a command's run(), after its flags exist.

  Started as a console script (lmjax-train, ...), __main__ is the script's wrapper, whose docstring and flags absl
  would show instead: none. Show the command module's docstring and flags then, and --verbose either way.
  """
  main = sys.modules["__main__"]
  program = sys.argv[0]  # absl files the flags of __main__ under this name
  if module_name != "__main__" and sys.modules.get(module_name) is not main:
    main.__doc__ = main.__doc__ or sys.modules[module_name].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
      flags.FLAGS.register_key_flag_for_module(program, flag)
  flags.FLAGS.register_key_flag_for_module(program, flags.FLAGS[console.VERBOSE.name])
