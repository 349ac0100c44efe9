"""Bounds of integer index and size expressions over every size >= 1.

One interval arithmetic serves the presence analysis (can a coordinate leave its
tensor's extent? analysis/presence.py) and the index divisors (is `d` in `x // d`
positive? divisors.py). Bounds are sympy expressions in the rank sizes, which are
positive integer symbols (or integers, for fixed sizes).
"""

from __future__ import annotations

from typing import Callable, Optional

import sympy

from . import expr as ir

Bounds = Optional[tuple[sympy.Expr, sympy.Expr]]


def provably(relation) -> bool:
    """Whether sympy proves a relation between bounds for every size."""
    return relation is sympy.true


def interval(expr: ir.Expr, leaf: Callable[[ir.Expr], Bounds],
             quotient_low: Callable[[sympy.Expr, sympy.Expr], sympy.Expr] | None = None
             ) -> Bounds:
    """(low, high) of an integer expression, None where no bound is derived: `leaf`
    bounds a constant, index or dim; `+`, `-`, unary minus, products of nonnegative
    factors and floor division by a positive divisor combine them. A quotient a // b
    is at least `quotient_low(a_low, b_high)` (default 0) and at most a_high / b_low."""
    if not isinstance(expr, ir.Op):
        return leaf(expr)
    if expr.op not in ("+", "-", "*", "//", "neg"):
        return None
    parts = [interval(a, leaf, quotient_low) for a in expr.args]
    if any(p is None for p in parts):
        return None
    if expr.op == "neg":
        (low, high), = parts
        return -high, -low
    (a_low, a_high), (b_low, b_high) = parts
    if expr.op == "+":
        return a_low + b_low, a_high + b_high
    if expr.op == "-":
        return a_low - b_high, a_high - b_low
    if not (provably(a_low >= 0) and provably(b_low >= 0)):
        return None
    if expr.op == "*":
        return a_low * b_low, a_high * b_high
    if not provably(b_low > 0):
        return None
    low = quotient_low(a_low, b_high) if quotient_low else sympy.Integer(0)
    return low, a_high / b_low
