"""Bounds of integer index and size expressions over every size >= 1.

One interval arithmetic serves the presence analysis (can a coordinate leave its
tensor's extent? analysis/presence.py) and the index divisors (is `d` in `x // d`
positive? divisors.py). Bounds are sympy expressions in the rank sizes, which are
positive integer symbols (or integers, for fixed sizes).
"""

from __future__ import annotations

from typing import Callable, Optional

import math
from fractions import Fraction

import sympy

from . import expr as ir

Bounds = Optional[tuple[sympy.Expr, sympy.Expr]]


def provably(relation) -> bool:
    """Whether sympy proves a relation between bounds for every size."""
    return relation is sympy.true


# Sizes at which a claim "positive for every size" is tried before sympy is asked to
# prove it: the split index m1*M0 + m0 (highest at M1*M0 - 1 = 64*ceiling(M/64) - 1)
# leaves the extent M at M = 65, say.
_SAMPLE_SIZES = (1, 2, 3, 5, 17, 65, 257)


def provably_positive(value: sympy.Expr) -> bool:
    """Whether `value` > 0 for every size (its free symbols are sizes: integers >= 1).
    Cheap forms first: the expanded polynomial settles the usual `M - (M - 1)` and
    `KH - (H - 1) KH / H`; a size at which the value is not positive settles the
    opposite (a proof cannot exist); only what neither decides goes to
    `sympy.simplify`, which costs tens of milliseconds a call."""
    expanded = sympy.expand(value)
    if provably(expanded > 0):
        return True
    if _not_positive_somewhere(expanded):
        return False
    lower = _rounding_dropped(expanded)
    if lower is not None and provably(sympy.expand(lower) > 0):
        return True
    return provably(sympy.simplify(value) > 0)


def _rounding_dropped(value: sympy.Expr) -> sympy.Expr | None:
    """A lower bound of a sum without its roundings: ceiling(y) >= y where its coefficient
    is positive, floor(y) <= y where it is negative (a chunk count against the steps it
    covers: `ceiling(T/64) - T/64 + 1/64 > 0`); None where a rounding stands otherwise."""
    terms = []
    for term in sympy.Add.make_args(value):
        coefficient, rest = term.as_coeff_Mul()
        if isinstance(rest, (sympy.ceiling, sympy.floor)):
            if (coefficient > 0) != isinstance(rest, sympy.ceiling):
                return None
            rest = rest.args[0]
        elif rest.has(sympy.ceiling, sympy.floor):
            return None
        terms.append(coefficient * rest)
    return sympy.Add(*terms)


def _not_positive_somewhere(value: sympy.Expr) -> bool:
    """Whether `value` is <= 0 with the sizes set to a few sample values: every size the
    same first, then sizes that differ (a split's tile M0 and its rank M: the padding of
    the last tile shows only where M0 does not divide M)."""
    symbols = sorted(value.free_symbols, key=str)
    n = len(_SAMPLE_SIZES)
    strides = range(1 + (len(symbols) > 1) * (n - 1))
    for stride in strides:
        for first in range(n):
            sizes = {symbol: _SAMPLE_SIZES[(first + i * stride) % n]
                     for i, symbol in enumerate(symbols)}
            sample = exact_value(value, sizes)
            if sample is None:       # a form _at does not know: sympy's own substitution
                sample = value.subs(sizes)
                if not (sample.is_number and sample.is_extended_real):
                    continue
            if sample <= 0:
                return True
    return False


def exact_value(value: sympy.Expr, sizes: dict) -> Fraction | None:
    """`value` at integer sizes, in exact rationals, for the forms bounds and buffer
    formulas take (sums, products, integer powers, ceiling, floor, Max, Min); None for
    any other. sympy's own `subs` of a ceiling costs a hundred times more and imports
    half of sympy on first use."""
    if value.is_Symbol:
        return Fraction(sizes[value]) if value in sizes else None
    if value.is_Rational:
        return Fraction(int(value.p), int(value.q))
    args = [exact_value(arg, sizes) for arg in value.args]
    if any(arg is None for arg in args):
        return None
    if value.is_Add:
        return sum(args, Fraction(0))
    if value.is_Mul:
        result = Fraction(1)
        for arg in args:
            result *= arg
        return result
    if value.is_Pow and args[1].denominator == 1 and (args[0] != 0 or args[1] > 0):
        return args[0] ** int(args[1])
    if isinstance(value, sympy.ceiling):
        return Fraction(math.ceil(args[0]))
    if isinstance(value, sympy.floor):
        return Fraction(math.floor(args[0]))
    if isinstance(value, sympy.Max):
        return max(args)
    if isinstance(value, sympy.Min):
        return min(args)
    return None


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
