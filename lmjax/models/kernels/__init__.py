"""Attention implementations, one file each, registered in lmjax.registry.ATTENTION under their
`model.attention_impl` name (base.py says what one is). Every module here is imported, so a new implementation is
one file; lmjax/models/attention.py is the one place that calls them."""

import importlib
import pkgutil

from lmjax.models.kernels.base import Call, Kernel, Needs

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Call", "Kernel", "Needs"]
