"""Tidying the size formulas the analyses report.

`sympy.simplify` tries many rewritings and keeps the shortest. Its time grows fast with
the number of symbols: with one rank per symbol, a 40-rank spec took seconds per
formula and a chain of 40 Einsums ran for minutes in one polynomial gcd (the report's
arithmetic intensity). The formulas here are sums of products of sizes (with `ceiling`
for split parts and `Max` for alternatives), and two cheap steps give the form simplify
gave them: expand, then pull out the common factor of the terms
(`2*M*P0 + 4*P0` -> `2*P0*(M + 2)`).
"""

from __future__ import annotations

import random

import sympy

from ..ir.intervals import exact_value

# A ratio of formulas in at most this many sizes is cancelled in full (a common factor
# such as M + P goes): every attention spec has fewer (B, H, P, M, E, F, a tile, a
# split). Past it, a polynomial gcd costs time exponential in the number of sizes, and
# only the common product of sizes is cancelled.
FULL_CANCEL_SIZES = 10


def tidy(expr: sympy.Expr) -> sympy.Expr:
    """A sum of products of sizes, expanded with its common factor pulled out; a `Max`
    argument by argument."""
    expr = sympy.sympify(expr)
    if isinstance(expr, sympy.Max):
        return sympy.Max(*(tidy(arg) for arg in expr.args))
    expanded = sympy.expand(expr)
    if not expanded.is_Add:
        return expanded
    return _pull_common_factor(expanded)


def _pull_common_factor(total: sympy.Add) -> sympy.Expr:
    """`4*M*P0 + 8*P0` -> `4*P0*(M + 2)`, by counting powers (what `factor_terms` does,
    without its general machinery, whose cost grows with the square of the symbols).
    A factor is pulled out only when it holds a size: `2*E + 4` stays as it is, as sympy
    writes a number times a sum."""
    coefficients, powers = [], []
    for term in total.args:
        coefficient, rest = term.as_coeff_Mul()
        coefficients.append(coefficient)
        powers.append(rest.as_powers_dict())
    common = {}
    for base in set(powers[0]).intersection(*powers[1:]):
        exponent = min(p[base] for p in powers)
        if exponent.is_positive:
            common[base] = exponent
    if not common:
        return total
    number = sympy.Integer(1)
    if all(c.is_Integer for c in coefficients):
        number = sympy.Integer(sympy.igcd(*(int(c) for c in coefficients)))
    rest = [sympy.Mul(c / number, *(b ** (e - common.get(b, 0)) for b, e in p.items()))
            for c, p in zip(coefficients, powers)]
    return sympy.Mul(number, *(b ** e for b, e in common.items()), sympy.Add(*rest))


def ratio(numerator: sympy.Expr, denominator: sympy.Expr) -> sympy.Expr:
    """numerator / denominator, common factors cancelled: all of them while there are
    few sizes, else the common product of sizes (which sympy cancels when the two tidied
    formulas are divided)."""
    quotient = numerator / denominator
    if len(quotient.free_symbols) <= FULL_CANCEL_SIZES:
        return sympy.simplify(quotient)
    return tidy(numerator) / tidy(denominator)


# Assignments of sizes, drawn once (the same in every process), at which `maximum`
# looks for a sign change of the difference of two formulas: small sizes often (a
# term such as E*(F - 4) changes sign at F < 4), large ones too.
_SAMPLES = random.Random(20261130)
_SAMPLE_SIZES = [[_SAMPLES.choice((1, 2, 3, 5, 16, 64, 257)) for _ in range(32)]
                 for _ in range(24)]


def maximum(*args: sympy.Expr) -> sympy.Expr:
    """`sympy.Max(*args)`, without the proof attempts that must fail.

    Max keeps the arguments no other is proved to exceed: it walks them in sympy's
    order, comparing each with those kept so far (`Max._is_connected`: equal, or a
    relation sympy can decide), and a failed attempt costs tens of milliseconds. The
    formulas of an analysis are mostly incomparable (`E*P0 + ...` against `F*P0 + ...`).
    Where sizes are found at which the first of two is the larger and sizes at which
    the second is, no proof exists and sympy's comparison would answer "not connected":
    that answer is taken without asking. Every other pair is compared by sympy, in the
    same walk, so the result is Max's own. Arguments that Max would first rewrite
    (numbers, nested Max or Min, anything not real) go to sympy.Max whole."""
    args = list(dict.fromkeys(sympy.sympify(a) for a in args))
    compare = getattr(sympy.Max, "_is_connected", None)
    if len(args) < 2 or compare is None or any(
            a.is_number or a.has(sympy.Max, sympy.Min) or not a.is_extended_real
            for a in args):
        return sympy.Max(*args)
    kept: set = set()
    for value in sympy.ordered(args):
        new = True
        for other in list(kept):
            connected = False if _incomparable(value, other) else compare(value, other)
            if connected:
                new = False
                if connected is True or connected == sympy.Max:   # value is the larger
                    kept.remove(other)
                    kept.add(value)
        if new:
            kept.add(value)
    return sympy.Max(*kept, evaluate=False)


def _incomparable(x: sympy.Expr, y: sympy.Expr) -> bool:
    """Whether x - y is positive at some sample sizes and negative at others (its free
    symbols are sizes: positive integers)."""
    difference = x - y
    symbols = sorted(difference.free_symbols, key=str)
    if len(symbols) > len(_SAMPLE_SIZES[0]):
        return False
    signs = set()
    for sizes in _SAMPLE_SIZES:
        value = exact_value(difference, dict(zip(symbols, sizes)))
        if value is None:
            return False
        signs.add((value > 0) - (value < 0))
        if {1, -1} <= signs:
            return True
    return False
