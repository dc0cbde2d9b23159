r"""Prepare a run's token caches with Apache Beam, for corpora too big for one host (pip install 'lmjax[beam]').

  python -m lmjax.prepare_beam --config=configs/x.py --workdir=runs/x \
      --beam_options='--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing'

Builds the run's tokenizer (as training would, in workdir/tokenizer) and then every train and eval cache of its
sources (each data.mixture entry, or the one source) under the run's data dir; training the same config afterwards
finds them and tokenizes nothing. --shards_dir is where the workers write their shards (a path every worker can
write: gs://... on Dataflow); --beam_options are the pipeline options of any runner (docs/data.md).
"""

import shlex
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from lmjax import console
from lmjax.cli import describe_command, fail, parse_flags
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.data import beam
from lmjax.prepare import data_dir_of, prepare_tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir: its tokenizer and (by default) its data dir.")
_SHARDS = flags.DEFINE_string("shards_dir", "", "Where workers write shards; default: <data dir>/beam_shards.")
_OPTIONS = flags.DEFINE_string("beam_options", "--runner=DirectRunner", "Beam pipeline options, as one string.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  config = _CONFIG.value
  try:
    validate(config)
    workdir = Path(_WORKDIR.value)
    data_dir = data_dir_of(config, workdir)
    tokenizer = prepare_tokenizer(config, workdir)
    shards_dir = _SHARDS.value or str(data_dir / "beam_shards")
    for directory in beam.prepare(config.data, tokenizer, data_dir, shards_dir, shlex.split(_OPTIONS.value)):
      print(f"prepared {directory}")
  except (ConfigError, FileNotFoundError, ValueError) as e:
    fail(str(e))


def run() -> None:
  """The `lmjax-prepare-beam` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
