"""What every lmjax command line shares: one-line errors for bad input and the exit statuses scripts rely on."""

import os
import sys

from absl import flags

from lmjax import console

# Exit statuses, distinct from a crash (1), so launch scripts know what to do: retry after preemption (75), not
# after bad input (2) or divergence (3), which would only fail again.
BAD_INPUT_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(BAD_INPUT_EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad --config override (e.g. a misspelt field) is one line, not a traceback."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path):
        fail(f"--config={path}: no such config file; see configs/ for the available ones.")
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    fail(f"bad flag: {message.strip(chr(39))}")


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
