"""Position encodings, one class per file, each registered under its `model.position` name.

Every module in this package is imported here, so a new encoding is one file: a `PositionEncoding` subclass
decorated with `@POSITIONS.register("name")` (see base.py for the interface and lmjax/docs/extending.md).
"""

import importlib
import pkgutil

from lmjax.models.positions.base import PositionEncoding, PositionSettings, Rotation, rotate

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PositionEncoding", "PositionSettings", "Rotation", "rotate"]
