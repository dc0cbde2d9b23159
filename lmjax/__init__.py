"""lmjax: a JAX/Flax research framework for language models.

Importing the package registers the built-in architectures, position encodings, tasks and tokenizer kinds
(lmjax/registry.py), so every config name resolves wherever lmjax is used.
"""

__version__ = "0.1.0"

from lmjax import models as _models  # noqa: E402,F401  (registers architectures and position encodings)
from lmjax import tasks as _tasks  # noqa: E402,F401  (registers tasks and their config sections)
from lmjax.hf import tokenizers as _hf_tokenizers  # noqa: E402,F401  (registers the imported tokenizer kinds)
from lmjax.data import hf_datasets as _hf_datasets  # noqa: E402,F401  (registers data.source='hf')
