"""The cheap forms the rewrites' proofs try before `sympy.simplify` (transform/algebra.py):
a sample point refutes only what is not an identity, a proof is still a proof, and
`settled` tells a number exactly when simplify does."""

from __future__ import annotations

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from einsumattn.transform.algebra import is_zero, nonzero_somewhere, settled

SIZES = sympy.symbols("E M", positive=True, integer=True)
INDEX = sympy.Symbol("p", integer=True)
REALS = sympy.symbols("a g y", real=True)
LEAVES = [*SIZES, INDEX, *REALS, sympy.Integer(2), sympy.Rational(1, 3), sympy.Integer(-1)]


@st.composite
def expressions(draw, depth: int = 3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(LEAVES))
    op = draw(st.sampled_from(["+", "-", "*", "/", "exp", "sqrt", "max", "log"]))
    a = draw(expressions(depth - 1))
    if op == "exp":
        return sympy.exp(a)
    if op == "sqrt":
        return sympy.sqrt(a)
    if op == "log":
        return sympy.log(a)
    b = draw(expressions(depth - 1))
    if op == "max":
        try:
            return sympy.Max(a, b)
        except ValueError:          # a complex argument (sqrt of a negative number)
            return a
    if op == "/":
        return a / b if b != 0 else a
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _variants(value: sympy.Expr) -> list[sympy.Expr]:
    """Equal forms of `value`, as sympy rewrites it."""
    found = []
    # powsimp without force=True: forcing ignores the symbols' assumptions and is not an
    # equal form (I*sqrt(p) -> sqrt(-p) is wrong for a negative index p: -2 against 2 at
    # p = -4, which the randomized profile found).
    for rewrite in (sympy.expand, sympy.together, sympy.factor_terms, sympy.powsimp,
                    sympy.expand_log):
        try:
            found.append(rewrite(value))
        except (TypeError, ValueError, RecursionError):
            pass
    return found


# Identities of the kind the rewrites prove (online softmax, moments, scales).
a, g, y = REALS
E, M = SIZES
IDENTITIES = [
    sympy.exp(a - g) * sympy.exp(g - y) - sympy.exp(a - y),
    sympy.exp(a - g) / sympy.exp(y - g) - sympy.exp(a - y),
    (a * g + a * y) / sympy.sqrt(E) - a * (g + y) / sympy.sqrt(E),
    1 / (1 + sympy.exp(-a)) - sympy.exp(a) / (1 + sympy.exp(a)),
    sympy.sin(a) ** 2 + sympy.cos(a) ** 2 - 1,
    sympy.log(sympy.exp(a) * sympy.exp(g)) - a - g,
    sympy.Max(a, g) - sympy.Max(g, a),
    (M - 1) * (M + 1) - M ** 2 + 1,
    sympy.sqrt(E) ** 2 - E,
    sympy.exp(a) * sympy.exp(-sympy.Max(a, g)) - sympy.exp(a - sympy.Max(a, g)),
]


@pytest.mark.parametrize("identity", IDENTITIES, ids=str)
def test_no_identity_is_refuted(identity):
    assert not nonzero_somewhere(identity)


def test_the_identities_are_proved():
    assert all(is_zero(identity) for identity in IDENTITIES)


def test_a_forced_power_rewrite_is_refuted_where_it_is_wrong():
    """Regression: the randomized profile's I*sqrt(p) against sympy's forced
    powsimp, sqrt(-p), differ at p = -4; a sample point says so."""
    p = INDEX
    assert sympy.powsimp(sympy.I * sympy.sqrt(p), force=True) == sympy.sqrt(-p)
    assert nonzero_somewhere(sympy.I * sympy.sqrt(p) - sympy.sqrt(-p))
    assert all(not nonzero_somewhere(sympy.I * sympy.sqrt(p) - variant)
               for variant in _variants(sympy.I * sympy.sqrt(p)))


@settings(max_examples=examples(60))
@given(expressions())
def test_no_rewriting_of_an_expression_is_refuted(value):
    for variant in _variants(value):
        assert not nonzero_somewhere(value - variant), (value, variant)


@settings(max_examples=examples(60))
@given(expressions(), expressions())
def test_a_refutation_agrees_with_sympy(left, right):
    """Where a sample point says two expressions differ, simplify never proves them
    equal, and is_zero says they are not."""
    difference = left - right
    if nonzero_somewhere(difference):
        assert sympy.simplify(difference) != 0
        assert not is_zero(difference)


@settings(max_examples=examples(60))
@given(expressions())
def test_is_zero_holds_only_where_a_proof_holds(value):
    """is_zero says zero only where expanding or simplifying gives 0 (a proof); a
    difference from a rewriting plus a small constant is never zero."""
    for variant in _variants(value):
        shifted = value - variant + sympy.Rational(1, 10 ** 6)
        assert not is_zero(shifted)
        if is_zero(value - variant):
            assert any(form == 0 for form in (sympy.expand(value - variant),
                                                sympy.powsimp(sympy.expand(value - variant),
                                                              force=True),
                                                sympy.simplify(value - variant)))


def test_a_refuted_value_costs_no_simplify(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sympy.simplify called")

    monkeypatch.setattr(sympy, "simplify", refuse)
    G, CS, PD = sympy.symbols("G CS PD", real=True)
    assert not is_zero(-G / CS + 1 / CS)       # GPSA's gate: not zero, by sample
    assert not is_zero(G / PD)


@st.composite
def affine(draw):
    symbols = [*SIZES, INDEX, *sympy.symbols("W S")]
    terms = [draw(st.integers(-3, 3)) * s for s in symbols]
    return sum(terms, sympy.Integer(draw(st.integers(-5, 5)))) / draw(st.integers(1, 3))


@settings(max_examples=examples(60))
@given(affine(), affine())
def test_settled_tells_a_number_as_simplify_does(high, low):
    ours, theirs = settled(high - low), sympy.simplify(high - low)
    assert ours.is_number == theirs.is_number
    if ours.is_number:
        assert ours == theirs


def test_settled_leaves_what_is_not_a_polynomial_to_simplify():
    x = sympy.Symbol("x", real=True)
    assert settled(sympy.sin(x) ** 2 + sympy.cos(x) ** 2) == 1


# ------------------------------------------------------- bounds: ir/intervals.py
BOUND_SIZES = sympy.symbols("M M0 P", positive=True, integer=True)


@st.composite
def bounds(draw, depth: int = 3):
    """Bound-shaped expressions in sizes: sums, products, ceiling and floor quotients,
    Max and Min, small integers and a rational."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([*BOUND_SIZES, sympy.Integer(1), sympy.Integer(-2),
                                     sympy.Rational(1, 3)]))
    op = draw(st.sampled_from(["+", "-", "*", "ceil", "floor", "max", "min"]))
    a, b = draw(bounds(depth - 1)), draw(bounds(depth - 1))
    return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
            "ceil": lambda: sympy.ceiling(a / draw(st.sampled_from(BOUND_SIZES))),
            "floor": lambda: sympy.floor(a / draw(st.sampled_from(BOUND_SIZES))),
            "max": lambda: sympy.Max(a, b), "min": lambda: sympy.Min(a, b)}[op]()


@settings(max_examples=150, deadline=None)
@given(bounds(), st.tuples(*(st.integers(1, 300) for _ in BOUND_SIZES)))
def test_the_cheap_evaluation_of_a_bound_is_sympys(value, sizes):
    from einsumattn.ir.intervals import exact_value
    at = dict(zip(BOUND_SIZES, sizes))
    got = exact_value(value, at)
    assert got is not None
    assert got == sympy.Rational(value.subs(at))


def test_a_split_index_leaves_its_rank_where_the_tile_does_not_divide_it():
    """The highest split index M0 * ceiling(M / M0) - 1 passes M - 1 wherever M0 does not
    divide M: sampled with every size equal, it never would."""
    from einsumattn.ir.intervals import _not_positive_somewhere, provably_positive
    M, M0 = BOUND_SIZES[:2]
    beyond = M - (M0 * sympy.ceiling(M / M0) - 1)
    # Refuted by a sample, before sympy.simplify (which took 0.3 s of a compile here).
    assert _not_positive_somewhere(sympy.expand(beyond))
    assert not provably_positive(beyond)
    assert provably_positive(M - (M - 1))


T = sympy.Symbol("T", integer=True, positive=True)


@pytest.mark.parametrize("value, positive", [
    (sympy.ceiling(T / 64) - T / 64 + sympy.Rational(1, 64), True),    # a chunk count
    (2 * sympy.ceiling(T / 16) - 2 * T / 16 + 1, True),
    (T - 64 * sympy.ceiling(T / 64) + 1, False),      # the last chunk passes T
    (sympy.floor(T / 64) - T / 64 + sympy.Rational(1, 64), False),
    (T / 64 - sympy.floor(T / 64) + sympy.Rational(1, 64), True),
], ids=str)
def test_a_rounded_chunk_count_is_proved_without_simplify(monkeypatch, value, positive):
    """ceiling(y) >= y and floor(y) <= y settle rule 4's chunk counts against their
    steps (compiling examples/gla.attn asked sympy.simplify for them); the samples still
    refute what is false, and the answer is sympy's."""
    from einsumattn.ir.intervals import provably_positive

    monkeypatch.setattr(sympy, "simplify", lambda value, *a, **k: pytest.fail(
        f"simplify({value})") if positive else value)
    assert provably_positive(value) is positive
