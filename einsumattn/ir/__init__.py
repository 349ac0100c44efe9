"""The Cascade IR: checked Einsums over named ranks, in dataflow order.

`build(spec)` turns a syntax tree into a `Cascade`; `bind(...)` gives it concrete sizes.
"""

from .bind import Binding, bind, rank_used
from .build import build
from .cascade import Cascade, Einsum, ParamDecl, Rank, Split, Tensor, at_default_tiles
from . import expr

__all__ = ["build", "bind", "rank_used", "Binding", "Cascade", "Einsum", "ParamDecl", "Rank", "Split",
           "Tensor", "at_default_tiles", "expr"]
