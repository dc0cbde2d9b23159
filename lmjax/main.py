r"""Train and evaluate a model.

  python -m lmjax.main --config=configs/default.py --workdir=runs/default
  python -m lmjax.main --config=configs/nanogpt_cpu.py --workdir=runs/x --config.model.num_layers=6

Rerunning the same command in the same workdir resumes from the latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import train, writers
from lmjax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and plots.")
flags.mark_flags_as_required(["config", "workdir"])


BAD_INPUT_EXIT_CODE = 2  # distinct from crashes (1), so launch scripts do not retry a run that cannot succeed


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  writers.quiet_library_logs()
  config = _CONFIG.value
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    # Bad input is reported in one line, not as a traceback.
    logging.error("%s", e)
    fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
