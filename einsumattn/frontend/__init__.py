"""Frontend: `.attn` text -> syntax tree (`ast`), with positions on every node."""

from .parser import CALLABLE, FUNCTIONS, KEYWORDS, RESERVED, parse

__all__ = ["parse", "KEYWORDS", "FUNCTIONS", "CALLABLE", "RESERVED"]
