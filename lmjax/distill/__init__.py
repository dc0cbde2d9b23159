"""Knowledge distillation: a frozen teacher run's outputs train a student.

  losses.py     the loss terms as pure functions of logits, hidden states and attention maps
  teacher.py    opening a teacher run: checks against the student, its model, its parameters restored sharded
  heads.py      what is distilled for each base objective (which logits, which positions count)
  layers.py     starting a student from a subset of the teacher's layers (DistilBERT's every other layer)
  offline.py    a store of precomputed teacher top-k logits and the train stream that reads it
  precompute.py the CLI that writes that store

The task itself (the trainer's interface) is lmjax/tasks/distill.py.
"""
