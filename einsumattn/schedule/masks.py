"""Masks as sets of conditions (analysis/presence.py's `Condition`), not text: a
condition that holds already where a mask is used is left out, and each appears once."""

from __future__ import annotations

from ..analysis.presence import Condition
from ..ir import expr as ir


def range_comparisons(condition: Condition) -> list[Condition]:
    """A range `0 <= i and i < n` as its two comparisons (so that one the tile's lanes
    or another read already state appears once); any other condition as it is."""
    expr = condition.expr
    if condition.kind != "range" or condition.parts or not (
            isinstance(expr, ir.Op) and expr.op == "and"):
        return [condition]
    return [Condition("range", frozenset(ir.index_vars(part)), part)
            for part in ir.conjuncts(expr)]
