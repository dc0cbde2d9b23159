"""Distillation study on the embedded corpus: a 4-layer, width-192 character-level GPT teacher and a 2-layer,
width-128 student trained with and without the teacher for the same steps (README.md has the commands).

  config.py:teacher     the teacher (1.8M parameters)
  config.py:student     the student alone, on the labels
  config.py:kd          the same student distilled: alpha * T^2 * KL + (1 - alpha) * CE, teacher at runs/distill/teacher
  config.py:wide        a student of the teacher's width (2 x 192) alone
  config.py:kd_init     that student distilled, starting from teacher layers 0 and 2 (DistilBERT-style)

Fields can be overridden as usual, e.g. --config.distill.alpha=0.9.
"""

from lmjax.config import base_config

TEACHER_WORKDIR = "runs/distill/teacher"


def get_config(arg: str = "kd"):
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.max_len = 128
  c.model.update(num_layers=2, num_heads=4, d_model=128, mlp_dim=512)
  c.optim.update(learning_rate=2e-3, min_learning_rate=2e-4, warmup_steps=100)
  c.train.update(batch_size=16, num_steps=1500, steps_per_call=10, log_every=100, eval_every=500,
                 checkpoint_every=500, eval_batches=40, sample_length=200, num_samples=1)
  if arg == "teacher":
    c.model.update(num_layers=4, d_model=192, mlp_dim=768)
    c.train.num_steps = 2500
  elif arg in ("kd", "kd_init"):
    c.task = "distill_lm"
    c.distill.update(teacher_workdir=TEACHER_WORKDIR, alpha=0.5, temperature=2.0)
  elif arg not in ("student", "wide"):
    raise ValueError(f"unknown variant {arg!r}: teacher, student, kd, wide or kd_init")
  if arg in ("wide", "kd_init"):
    c.model.update(d_model=192, mlp_dim=768)
  if arg == "kd_init":
    c.distill.init_student_layers = "0,2"
  return c
