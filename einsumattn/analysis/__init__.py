"""Analysis: read-only facts about a Cascade, as reports.

    report = einsumattn.analyze("examples/softmax_3pass.attn")
    report.passes            # {'M': 3, 'E': 1}
    print(report.to_text())

passes.py  pass lower bounds per rank (FuseMax section III)
buffers.py what must stay live across pass boundaries, and the on-chip state per pass
cost.py    operation counts, minimum traffic, arithmetic intensity
report.py  the report in text, json, md and dot
"""

from __future__ import annotations

import os

import sympy

from ..diagnostics import BindError
from ..ir import Cascade
from ..ir.memo import per_cascade
from .buffers import analyse_buffers
from .cost import DTYPE_BYTES, analyse_cost
from .passes import analyse_passes
from .report import Report


def analyze(spec: "str | os.PathLike | Cascade", *, sizes: dict[str, int] | None = None,
            dtype: str = "float16") -> Report:
    """Analyse a spec (path, text or Cascade). `sizes` binds rank and tile sizes (e.g.
    {"M": 4096, "P0": 64}) so formulas also show numbers; `dtype` sets bytes/element."""
    from ..loader import load

    cascade = spec if isinstance(spec, Cascade) else load(spec)
    if dtype not in DTYPE_BYTES:
        raise BindError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPE_BYTES)}")
    ranks, buffers, cost = _analyses(cascade, DTYPE_BYTES[dtype])
    tiles = sorted({str(t) for b in buffers.values() for t in b.tile.values()
                    if isinstance(t, sympy.Symbol)})
    return Report(cascade, dtype, dict(ranks), dict(buffers), cost,
                  _bound_sizes(cascade, sizes, tiles))


@per_cascade
def _analyses(cascade: Cascade, bytes_per_element: int):
    """What a report holds besides the sizes: computed once per cascade and element
    size (compiling asks for the report of the same cascade from several stages)."""
    ranks = analyse_passes(cascade)
    buffers = {rank: analyse_buffers(cascade, info, bytes_per_element)
               for rank, info in ranks.items()}
    return ranks, buffers, analyse_cost(cascade, bytes_per_element)


def _bound_sizes(cascade: Cascade, sizes: dict[str, int] | None,
                 tile_names: list[str]) -> dict[str, int] | None:
    """Sizes for every rank (splits derived) plus the tile sizes given (P0, ...)."""
    if sizes is None:
        return None
    from ..ir import bind

    for name in sizes:
        if name not in cascade.ranks and name not in tile_names:
            raise BindError(f"unknown size '{name}': the ranks are "
                            f"{', '.join(cascade.ranks)}; the tile sizes are "
                            f"{', '.join(tile_names) or 'none'}")
    ranks = {k: v for k, v in sizes.items() if k in cascade.ranks}
    tiles = {k: v for k, v in sizes.items() if k not in cascade.ranks}
    binding = bind(cascade, sizes=ranks)
    return {**binding.sizes, **tiles}


__all__ = ["analyze", "Report"]
