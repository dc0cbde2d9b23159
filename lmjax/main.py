r"""Train and evaluate a model.

  python -m lmjax.main --config=configs/default.py --workdir=runs/default
  python -m lmjax.main --config=configs/nanogpt_cpu.py --workdir=runs/x --config.model.num_layers=6

Rerunning the same command in the same workdir resumes from the latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import train, writers
from lmjax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  writers.quiet_library_logs()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    # Bad input is reported in one line, not as a traceback.
    logging.error("%s", e)
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
