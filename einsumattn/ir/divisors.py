"""Index divisors: the `d` of `x // d` and `x % d` in a tensor index.

LANGUAGE.md 1.1: a divisor is any positive integer expression of dims (integers, dims,
`+ - * //`, parentheses): `K[b, h // (H // KH), m, e]`. Positivity is proved from the
declarations by interval arithmetic (intervals.py: a dim is at least 1, a fixed dim is
its size):

- proved at least 1 for every size (`G`, `2 * KH`, `H + 1`): accepted;
- at least 1 once each floor quotient inside it is (`H // KH`, at least 1 when H >= KH,
  which is what the spec says by dividing): accepted, and checked when sizes are bound
  (`bind`, and the generated module's binding), where a divisor below 1 is an error
  naming it;
- anything else (`H - KH`, `H - 1`, `0 * H`, `2 - 2`): an error when the spec is loaded.

See docs/language.md, section 3, "Index divisors".
"""

from __future__ import annotations

import sympy

from . import expr as ir
from .cascade import Cascade, Rank
from .intervals import interval, provably

_SIZE_OPS = frozenset({"+", "-", "*", "//", "neg"})


def size_expression_problem(expr: ir.Expr) -> ir.Expr | None:
    """The first node that is not allowed in a divisor (an index variable, a param, a
    read, a non-integer, an operator other than `+ - * //`), or None."""
    for node in ir.walk(expr):
        if isinstance(node, ir.Dim):
            continue
        if isinstance(node, ir.Const) and isinstance(node.value, int):
            continue
        if isinstance(node, ir.Op) and node.op in _SIZE_OPS:
            continue
        return node
    return None


def _bounds(divisor: ir.Expr, ranks: dict[str, Rank], assume_quotients: bool):
    """(low, high) of a size expression (intervals.py), a dim being its symbolic size.
    A quotient a // b is at least floor(a_low / b_high), and with `assume_quotients` at
    least 1 when a is (what the binding then checks)."""

    def leaf(node: ir.Expr):
        if isinstance(node, ir.Const):
            return sympy.Integer(node.value), sympy.Integer(node.value)
        rank = ranks[node.rank]
        if rank.sized and not provably(rank.size >= 1):
            # a dim sized by other dims (G = H // KH) is at least 1: binding checks it
            return sympy.Integer(1), rank.size
        return rank.size, rank.size

    def quotient_low(a_low: sympy.Expr, b_high: sympy.Expr) -> sympy.Expr:
        if assume_quotients and provably(a_low >= 1):
            return sympy.Integer(1)
        return sympy.floor(a_low / b_high)

    return interval(divisor, leaf, quotient_low)


def _at_least_one(divisor: ir.Expr, ranks: dict[str, Rank], assume_quotients: bool) -> bool:
    bounds = _bounds(divisor, ranks, assume_quotients)
    return bounds is not None and provably(bounds[0] >= 1)


def proved_positive(divisor: ir.Expr, ranks: dict[str, Rank]) -> bool:
    """At least 1 for every size: no check is needed when sizes are bound."""
    return _at_least_one(divisor, ranks, assume_quotients=False)


def positive_when_bound(divisor: ir.Expr, ranks: dict[str, Rank]) -> bool:
    """At least 1 once each floor quotient in it is: accepted, and checked at binding."""
    return _at_least_one(divisor, ranks, assume_quotients=True)


def checked_divisors(cascade: Cascade) -> list[tuple[ir.Expr, ir.Read]]:
    """The index divisors that are checked when sizes are bound (not proved positive
    for every size), each once, with the first read that has it."""
    found: dict[ir.Expr, ir.Read] = {}
    for einsum in cascade.einsums:
        for read in einsum.accesses():
            for index in read.indices:
                for node in ir.walk(index):
                    if isinstance(node, ir.Op) and node.op in ("//", "%") and \
                            not proved_positive(node.args[1], cascade.ranks):
                        found.setdefault(node.args[1], read)
    return list(found.items())


def size_value(expr: ir.Expr, sizes: dict[str, int]) -> int:
    """The integer value of a size expression at bound sizes (0 for a division by a
    divisor below 1, which the caller reports)."""
    if isinstance(expr, ir.Const):
        return int(expr.value)
    if isinstance(expr, ir.Dim):
        return sizes[expr.rank]
    args = [size_value(a, sizes) for a in expr.args]
    if expr.op == "neg":
        return -args[0]
    a, b = args
    if expr.op == "//":
        return a // b if b >= 1 else 0
    return {"+": a + b, "-": a - b, "*": a * b}[expr.op]


def divisor_problem(divisor: ir.Expr, read: ir.Read) -> str:
    """The binding error for a divisor below 1, as a `str.format` template: fields
    `value` and one per rank in the divisor (the generated module fills it in too)."""
    ranks = sorted({n.rank for n in ir.walk(divisor) if isinstance(n, ir.Dim)})
    bound = ", ".join(f"{r}={{{r}}}" for r in ranks)
    return (f"the index divisor '{ir.to_text(divisor)}' in {ir.to_text(read)} is "
            f"{{value}} at {bound}; it must be at least 1 (a floor quotient such as "
            f"H // KH needs H >= KH)")
