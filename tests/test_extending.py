"""docs/extending.md's three examples (a position encoding, an architecture, a task), each one file, work as the page
says: copied into a scratch module, imported by a config, they validate, train and refuse bad values in one line.

They run in a subprocess, so the entries they register stay out of the other tests' registries.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

from conftest import REPO, single_device_env

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    import lmjax
    import kerple, gru, smoothed_lm
    from lmjax import train, writers
    from lmjax.config import ConfigError, base_config
    from lmjax.config_validation import validate
    from lmjax.models import model_config
    from lmjax.registry import MODELS, POSITIONS, TASKS

    def tiny(name, **sections):
      c = base_config()
      c.data.seq_len = 16
      c.tokenizer.kind = "char"
      c.model.update(num_layers=1, num_heads=2, d_model=16, mlp_dim=32, max_len=16)
      c.optim.update(learning_rate=3e-3, warmup_steps=2)
      c.train.update(batch_size=8, num_steps=24, log_every=4, eval_every=24, checkpoint_every=24, eval_batches=2,
                     sample_length=8, num_samples=1, async_checkpoints=False, plot=False, tensorboard=False)
      for section, fields in sections.items():
        c[section].update(fields)
      return c

    def trained(c, name):
      train.train_and_evaluate(c, sys.argv[1] + "/" + name)
      rows = [r["loss"] for r in writers.read_metrics(sys.argv[1] + "/" + name) if r["split"] == "train"]
      return [rows[0], rows[-1]]

    def error(c):
      try:
        validate(c)
      except ConfigError as e:
        return str(e)
      return ""

    out = {"registered": ["kerple" in POSITIONS, "gru" in MODELS, "smoothed_lm" in TASKS]}
    c = tiny("kerple", model=dict(position="kerple"))
    out["kerple_fields"] = "kerple_init" in c.model
    out["kerple_loss"] = trained(c, "kerple")
    out["kerple_bad"] = error(tiny("x", model=dict(position="kerple", kerple_init=0.0)))
    cfg = model_config(name="gpt", vocab_size=20, num_layers=1, num_heads=2, d_model=16, mlp_dim=32, max_len=16,
                       position="kerple")
    model = cfg.build()
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 6), np.int32))["params"]
    out["kerple_params"] = sorted(params)
    out["gru_loss"] = trained(tiny("gru", model=dict(name="gru")), "gru")
    c = tiny("x", model=dict(name="gru"))
    c.task = "mlm"
    out["gru_mlm"] = error(c)
    c = tiny("smooth")
    c.task, c.smoothing.epsilon = "smoothed_lm", 0.2
    out["smoothed_loss"] = trained(c, "smooth")
    c.smoothing.epsilon = 1.5
    out["smoothed_bad"] = error(c)
    print("RESULT " + json.dumps(out))
""")


def _examples() -> dict[str, str]:
  """The page's python blocks, by the module name their first line gives (# lmjax/.../<name>.py)."""
  text = (REPO / "docs" / "extending.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  return {re.match(r"# lmjax/\S*?(\w+)\.py\n", b).group(1): b for b in blocks}


def test_the_extending_examples_register_train_and_validate(tmp_path):
  examples = _examples()
  assert set(examples) == {"kerple", "gru", "smoothed_lm"}
  for name, code in examples.items():
    (tmp_path / f"{name}.py").write_text(code)
  (tmp_path / "check.py").write_text(SCRIPT)
  env = single_device_env(PYTHONPATH=f"{tmp_path}:{REPO}")
  proc = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path)], capture_output=True, text=True,
                        env=env, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["registered"] == [True, True, True]
  assert out["kerple_fields"] and "kerple_bias" in out["kerple_params"]
  for key in ("kerple_loss", "gru_loss", "smoothed_loss"):  # [first, last] train loss: each one learned
    first, last = out[key]
    assert last < first - 0.3, (key, out[key])
  assert "config.model.kerple_init=0.0" in out["kerple_bad"] and "\n" not in out["kerple_bad"]
  assert "config.model.name='gru'" in out["gru_mlm"] and "bert" in out["gru_mlm"]
  assert "config.smoothing.epsilon=1.5" in out["smoothed_bad"]
