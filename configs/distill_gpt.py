"""Distil the demo GPT (configs/default.py: 4 layers, width 128) into a 2-layer, width-64 student.

  python -m lmjax.main --config=configs/default.py --workdir=runs/default           # the teacher, once
  python -m lmjax.main --config=configs/distill_gpt.py --workdir=runs/distill_gpt

The teacher runs frozen inside each train step; the loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) *
cross-entropy on the next token. Other teachers: --config.distill.teacher_workdir=DIR (any causal-LM run with the
same tokenizer). From precomputed top-k logits instead (the teacher then runs once, before training):

  python -m lmjax.distill.precompute --config=configs/distill_gpt.py --workdir=runs/distill_gpt_offline \
      --config.distill.offline_logits_dir=runs/default_top32
  python -m lmjax.main --config=configs/distill_gpt.py --workdir=runs/distill_gpt_offline \
      --config.distill.offline_logits_dir=runs/default_top32

A student of the teacher's width can start from half its layers: --config.model.d_model=128
--config.model.mlp_dim=512 --config.distill.init_student_layers=every_other. Hidden-state and attention matching:
--config.distill.hidden_weight=1 --config.distill.attention_weight=1 --config.distill.layer_pairs=1:0,3:1.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.task = "distill_lm"
  c.model.update(num_layers=2, num_heads=4, d_model=64, mlp_dim=256)
  c.distill.teacher_workdir = "runs/default"
  c.distill.alpha = 0.5
  c.distill.temperature = 2.0
  c.train.num_steps = 1500
  return c
