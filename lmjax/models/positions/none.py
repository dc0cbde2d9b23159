"""model.position='none' (NoPE): no position information at all; a causal mask alone still orders the tokens."""

from lmjax.models.positions.base import PositionEncoding
from lmjax.registry import POSITIONS


@POSITIONS.register("none")
class NoPositions(PositionEncoding):
  """Every hook keeps its neutral default."""
