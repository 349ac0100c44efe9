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

import itertools
import random

import sympy

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


# Sizes drawn once, the same in every process: assignments of sizes at which `maximum`
# looks for a sign change of the difference of two formulas.
_SAMPLES = random.Random(20261130)
_SAMPLE_SIZES = [[_SAMPLES.randint(1, 64) for _ in range(32)] for _ in range(16)]


def maximum(*args: sympy.Expr) -> sympy.Expr:
    """`sympy.Max(*args)`. Max drops an argument it proves no larger than another, and
    its proof attempts cost tens of milliseconds a pair when they fail; the formulas of
    an analysis are mostly incomparable (`E*P0 + ...` against `F*P0 + ...`). Where, for
    every pair, sizes are found at which the first is the larger and sizes at which the
    second is, no proof exists, so Max would keep them all: they are kept without
    asking. Anything else (a pair not shown incomparable, a nested Max or Min, a
    number) goes to sympy.Max as before: the result is the same either way."""
    args = list(dict.fromkeys(sympy.sympify(a) for a in args))
    if len(args) > 1 and not any(a.is_number or a.has(sympy.Max, sympy.Min) for a in args) \
            and all(_incomparable(x, y) for x, y in itertools.combinations(args, 2)):
        return sympy.Max(*args, evaluate=False)
    return sympy.Max(*args)


def _incomparable(x: sympy.Expr, y: sympy.Expr) -> bool:
    """Whether x - y is positive at some sample sizes and negative at others (its free
    symbols are sizes: positive integers)."""
    difference = x - y
    symbols = sorted(difference.free_symbols, key=str)
    if len(symbols) > len(_SAMPLE_SIZES[0]):
        return False
    signs = set()
    for sizes in _SAMPLE_SIZES:
        value = difference.xreplace({s: sympy.Integer(v) for s, v in zip(symbols, sizes)})
        if not value.is_number or not value.is_extended_real:
            return False
        signs.add((value > 0, value < 0))
        if (True, False) in signs and (False, True) in signs:
            return True
    return False
