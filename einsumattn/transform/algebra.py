"""IR expressions <-> sympy, and the proof obligations of the rewrites.

A rewrite states the identity its step relies on as two IR expressions (before and
after); `prove_equal` turns both into sympy, reads of tensors becoming real symbols, and
asks sympy to simplify the difference to zero. Functions sympy knows (exp, log, sqrt,
max, min) are sympy's own, so identities such as exp(a - g)*exp(g - y) = exp(a - y) are
proved rather than assumed; every other operation (sigmoid, where, comparisons, ...) is an
uninterpreted function, equal only to itself.

`from_sympy` turns an expression back into IR, for the rewrites that expand a body into
terms (separable moments).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import sympy

from ..ir import expr as ir

# IR function name -> sympy function, for the ones sympy may reason about.
_KNOWN = {"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt}
_OPAQUE_PREFIX = "op_"


class NotAlgebraic(Exception):
    """An expression sympy cannot carry back into IR."""


# ------------------------------------------------------------------ IR rebuilding
def rebuild(expr: ir.Expr, leaf: Callable[[ir.Expr], ir.Expr | None]) -> ir.Expr:
    """A copy of `expr` with each node for which `leaf(node)` returns an expression
    replaced by it (outermost first); other nodes are rebuilt from their children."""
    found = leaf(expr)
    if found is not None:
        return found
    if isinstance(expr, ir.Read):
        return replace(expr, indices=tuple(rebuild(i, leaf) for i in expr.indices))
    if isinstance(expr, ir.Op):
        return replace(expr, args=tuple(rebuild(a, leaf) for a in expr.args))
    return expr


def substitute(expr: ir.Expr, values: dict[str, ir.Expr]) -> ir.Expr:
    """Index variables replaced by expressions (`m` -> `m1*M0 + m0`), reads included."""
    return rebuild(expr, lambda n: values.get(n.var) if isinstance(n, ir.Index) else None)


def replace_reads(expr: ir.Expr, fn: Callable[[ir.Read], ir.Expr | None]) -> ir.Expr:
    return rebuild(expr, lambda n: fn(n) if isinstance(n, ir.Read) else None)


# ------------------------------------------------------------------ to and from sympy
class Algebra:
    """One symbol table shared by the expressions of one proof, so that the same read
    (same tensor, same coordinates) is the same symbol on both sides."""

    def __init__(self) -> None:
        self.symbols: dict[object, sympy.Symbol] = {}
        self.nodes: dict[sympy.Symbol, ir.Expr] = {}

    def symbol(self, node: ir.Expr, name: str, **assumptions) -> sympy.Symbol:
        key = node if not isinstance(node, ir.Read) else ("read", node)
        if key not in self.symbols:
            symbol = sympy.Symbol(f"{name}_{len(self.symbols)}", **assumptions)
            self.symbols[key] = symbol
            self.nodes[symbol] = node
        return self.symbols[key]

    def fresh(self, name: str) -> sympy.Symbol:
        """A real symbol standing for no node (g, y in an identity)."""
        return sympy.Symbol(f"{name}_{len(self.nodes)}_", real=True)

    def to_sympy(self, expr: ir.Expr) -> sympy.Expr:
        if isinstance(expr, ir.Const):
            value = expr.value
            if isinstance(value, float) and math.isinf(value):
                return sympy.oo if value > 0 else -sympy.oo
            return sympy.Rational(value)  # exact: a float is a binary fraction
        if isinstance(expr, ir.Index):
            return self.symbol(expr, expr.var, integer=True)
        if isinstance(expr, ir.Dim):
            return self.symbol(expr, expr.rank, positive=True, integer=True)
        if isinstance(expr, ir.Param):
            return self.symbol(expr, expr.name, real=True)
        if isinstance(expr, ir.Read):
            return self.read(expr)
        args = [self.to_sympy(a) for a in expr.args]
        op = expr.op
        if op == "+":
            return args[0] + args[1]
        if op == "-":
            return args[0] - args[1]
        if op == "*":
            return args[0] * args[1]
        if op == "/":
            return args[0] / args[1]
        if op == "neg":
            return -args[0]
        if op == "**":
            return args[0] ** args[1]
        return self.function(op, args)

    def read(self, node: ir.Read) -> sympy.Expr:
        """A tensor read: a real symbol, the same for the same tensor and coordinates.
        Subclasses that know a read's value return it instead."""
        return self.symbol(node, node.tensor, real=True)

    def function(self, op: str, args: list) -> sympy.Expr:
        """exp, log, sqrt, max and min as sympy's own; every other operation (sigmoid,
        where, comparisons, ...) as an uninterpreted function, equal only to itself."""
        if op in _KNOWN:
            return _KNOWN[op](*args)
        if op == "max":
            return sympy.Max(*args)
        if op == "min":
            return sympy.Min(*args)
        return sympy.Function(_OPAQUE_PREFIX + op)(*args)

    def to_ir(self, value: sympy.Expr) -> ir.Expr:
        """Back to IR: sums with `-` for negative terms, products as numerator /
        denominator, `sqrt` for a half power."""
        if value.could_extract_minus_sign() and not value.is_Number:
            return ir.Op("neg", (self.to_ir(-value),))
        if isinstance(value, sympy.Symbol):
            if value not in self.nodes:
                raise NotAlgebraic(f"a symbol with no node: {value}")
            return self.nodes[value]
        if value.is_Integer:
            return ir.Const(float(int(value)))
        if value.is_Rational:
            p, q = int(value.p), int(value.q)
            if q & (q - 1) == 0:  # a power of two: exact as a float
                return ir.Const(p / q)
            return ir.Op("/", (ir.Const(float(p)), ir.Const(float(q))))
        if value.is_Float:
            return ir.Const(float(value))
        if value in (sympy.oo, -sympy.oo):
            return ir.Const(math.inf) if value == sympy.oo else ir.Op("neg", (
                ir.Const(math.inf),))
        if isinstance(value, sympy.Add):
            terms = sorted(value.args, key=lambda t: (t.could_extract_minus_sign(),
                                                       sympy.default_sort_key(t)))
            result = self.to_ir(terms[0])
            for term in terms[1:]:
                if term.could_extract_minus_sign():
                    result = ir.Op("-", (result, self.to_ir(-term)))
                else:
                    result = ir.Op("+", (result, self.to_ir(term)))
            return result
        if isinstance(value, sympy.Mul):
            numerator, denominator = sympy.fraction(value)
            if denominator != 1:
                return ir.Op("/", (self.to_ir(numerator), self.to_ir(denominator)))
            factors = sorted(sympy.Mul.make_args(value), key=lambda f: (
                not f.is_Number, sympy.default_sort_key(f)))
            result = self.to_ir(factors[0])
            for factor in factors[1:]:
                result = ir.Op("*", (result, self.to_ir(factor)))
            return result
        if isinstance(value, sympy.Pow):
            base, exponent = value.args
            if exponent == sympy.Rational(1, 2):
                return ir.Op("sqrt", (self.to_ir(base),))
            if exponent.is_Integer and exponent < 0:
                return ir.Op("/", (ir.Const(1.0), self.to_ir(base ** -exponent)))
            if exponent.is_Integer:
                return ir.Op("**", (self.to_ir(base), ir.Const(int(exponent))))
            return ir.Op("**", (self.to_ir(base), self.to_ir(exponent)))
        if isinstance(value, sympy.exp):
            return ir.Op("exp", (self.to_ir(value.args[0]),))
        if isinstance(value, sympy.log):
            return ir.Op("log", (self.to_ir(value.args[0]),))
        if isinstance(value, (sympy.Max, sympy.Min)):
            name = "max" if isinstance(value, sympy.Max) else "min"
            args = [self.to_ir(a) for a in value.args]
            result = args[0]
            for arg in args[1:]:
                result = ir.Op(name, (result, arg))
            return result
        if isinstance(value, sympy.core.function.AppliedUndef) and \
                value.func.__name__.startswith(_OPAQUE_PREFIX):
            return ir.Op(value.func.__name__[len(_OPAQUE_PREFIX):],
                         tuple(self.to_ir(a) for a in value.args))
        raise NotAlgebraic(f"no IR form for {value}")


# Operations that commute with a positive factor: op(c * x) = c**k * op(x) for c > 0.
_POSITIVELY_HOMOGENEOUS = {"abs": 1, "relu": 1, "sign": 0}


def positive_factors_out(value: sympy.Expr, symbol: sympy.Symbol) -> sympy.Expr:
    """`value` with every positive factor that depends on `symbol` alone taken out of
    the operations that commute with one (`abs(exp(-t) * x)` is `exp(-t) * abs(x)`), which
    sympy keeps as uninterpreted functions and so cannot see through."""
    def homogeneous(node) -> bool:
        name = getattr(node.func, "__name__", "")
        return isinstance(node, sympy.Function) and len(node.args) == 1 and \
            name.startswith(_OPAQUE_PREFIX) and \
            name[len(_OPAQUE_PREFIX):] in _POSITIVELY_HOMOGENEOUS

    def pulled(node):
        rest, factor = node.args[0].as_independent(symbol, as_Add=False)
        if factor == 1 or not factor.free_symbols <= {symbol} or not factor.is_positive:
            return node
        degree = _POSITIVELY_HOMOGENEOUS[node.func.__name__[len(_OPAQUE_PREFIX):]]
        return factor ** degree * node.func(rest)

    return value.replace(homogeneous, pulled)


def is_zero(value: sympy.Expr) -> bool:
    """Whether sympy can show `value` is identically zero. Cheap forms first: the
    expanded form (and with powers merged) proves the usual identities; a point where
    the value is clearly not zero refutes one (no proof can exist); only what neither
    decides goes to `sympy.simplify`, which costs 0.2 s the first time (it imports
    sympy.physics) and tens of milliseconds a call after that."""
    if value == 0:
        return True
    try:
        for cheap in (sympy.expand, lambda v: sympy.powsimp(sympy.expand(v), force=True)):
            if cheap(value) == 0:
                return True
        if nonzero_somewhere(value):
            return False
        return sympy.simplify(value) == 0
    except (TypeError, ValueError, RecursionError):  # sympy gives up on some forms
        return False


# Values a symbol takes at the sample points of `nonzero_somewhere`, by what the symbol
# is (Algebra's symbols: sizes are positive integers, indices integers, the rest
# reals). Primes and odd fractions, distinct per symbol, so that a value that is not
# zero is not zero by accident at both points.
_SAMPLE_POSITIVE = (3, 7, 13, 19, 29, 37, 43, 53, 61, 71, 79, 89, 101, 107, 113, 127)
_SAMPLE_POINTS = 2
# Digits the value is evaluated to, and how far from zero it must be, relative to the
# size of its terms: an expression that is zero evaluates to far less (its terms
# cancel to every digit sympy computes).
_SAMPLE_DIGITS = 40
_CLEARLY_NONZERO = sympy.Rational(1, 10 ** 20)


def nonzero_somewhere(value: sympy.Expr) -> bool:
    """Whether `value` is clearly not zero at a point every symbol may take (a positive
    integer for a size, an integer for an index, a real number otherwise). True refutes
    `value == 0` for all values; False decides nothing (a function that is not
    evaluated, a point outside the domain, a zero at both points)."""
    try:
        return _nonzero_at_a_sample(value)
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return False


def _nonzero_at_a_sample(value: sympy.Expr) -> bool:
    symbols = sorted(value.free_symbols, key=lambda s: s.name)
    if len(symbols) > len(_SAMPLE_POSITIVE):
        return False
    for point in range(_SAMPLE_POINTS):
        sample = {}
        for number, symbol in enumerate(symbols):
            base = _SAMPLE_POSITIVE[(number + point * 5) % len(_SAMPLE_POSITIVE)]
            if symbol.is_positive and symbol.is_integer:
                sample[symbol] = sympy.Integer(base)
            elif symbol.is_integer:
                sample[symbol] = sympy.Integer(base if number % 2 else -base)
            elif symbol.is_real:
                sample[symbol] = sympy.Rational(base if number % 2 else -base, 11)
            else:
                return False
        if _clearly_nonzero(value.xreplace(sample)):
            return True
    return False


def _clearly_nonzero(value: sympy.Expr) -> bool:
    terms = sympy.Add.make_args(value)
    numbers = [sympy.N(term, _SAMPLE_DIGITS) for term in terms]
    total = sympy.N(value, _SAMPLE_DIGITS)
    if not all(n.is_number and n.is_finite and n.is_real for n in numbers + [total]):
        return False
    scale = max([abs(n) for n in numbers] + [sympy.Integer(1)])
    return abs(total) > _CLEARLY_NONZERO * scale


def settled(value: sympy.Expr) -> sympy.Expr:
    """`value` in a form that is a number exactly when sympy.simplify's is (and then the
    same number). A polynomial's expansion is canonical: it is a number exactly when
    the polynomial is constant. So `simplify` runs only on what does not expand to a
    polynomial."""
    expanded = sympy.expand(value)
    return expanded if expanded.is_polynomial() else sympy.simplify(value)


def prove_equal(before: ir.Expr, after: ir.Expr) -> bool:
    """The proof obligation of a step: `before - after` simplifies to zero."""
    algebra = Algebra()
    return is_zero(algebra.to_sympy(before) - algebra.to_sympy(after))


_NONNEGATIVE = frozenset({"exp", "sigmoid", "softplus", "relu", "abs", "sqrt"})


def sign(cascade, expr: ir.Expr) -> int | None:
    """-1 where every value of `expr` is provably <= 0, 1 where >= 0, 0 where it is 0
    (or NaN, in each case); None where neither is proved. Structural: exponentials,
    square roots, sizes, indices and constants; sums, differences, products, quotients,
    min, max and where of those; a read of an input may be anything, one of a tensor has
    the sign of what its Einsum computes (elementwise or a sum, not a max or min, whose
    empty identity is -inf or +inf, nor a recurrence). A constant without tensors or
    params goes to sympy's assumptions (sizes and indices >= 0: RetNet's
    `log(1 - 2 ** (-5 - h))` <= 0). The canonical form's `exp(x - log(y))` needs y >= 0,
    rule 4's chunk kernel log-gates <= 0."""
    if isinstance(expr, ir.Const):
        value = expr.value
        return None if value != value else (value > 0) - (value < 0)
    if isinstance(expr, (ir.Index, ir.Dim)):
        return 1
    if isinstance(expr, ir.Read):
        tensor = cascade.tensors[expr.tensor]
        if tensor.is_input or tensor.iterative is not None:
            return None
        producer = cascade.einsum(expr.tensor)
        return sign(cascade, producer.body) if producer.reduce_op in (None, "sum") else None
    if not isinstance(expr, ir.Op):
        return None
    if not ir.reads(expr) and not any(isinstance(n, ir.Param) for n in ir.walk(expr)):
        found = _constant_sign(expr)
        if found is not None:
            return found
    op = expr.op
    if op in _NONNEGATIVE:
        return 1
    if op == "logsigmoid":
        return -1
    if op == "log":        # log x <= 0 where x <= 1: 1 - x >= 0
        return -1 if sign(cascade, ir.Op("-", (ir.Const(1), expr.args[0]))) in (0, 1) \
            else None
    signs = [sign(cascade, arg) for arg in expr.args]
    if op == "neg":
        return None if signs[0] is None else -signs[0]
    if op in ("*", "/"):
        if None in signs or (op == "/" and signs[1] == 0):     # x / 0: inf or NaN
            return None
        return signs[0] * signs[1]
    if op == "-":
        op, signs = "+", [signs[0], None if signs[1] is None else -signs[1]]
    if op == "+":
        if signs[0] == signs[1] or signs[1] == 0:
            return signs[0]
        return signs[1] if signs[0] == 0 else None
    if op in ("min", "max"):
        # min: of values all >= 0 (0 if one is 0), else <= 0 if one is; max mirrored.
        low, high = (-1, 1) if op == "min" else (1, -1)
        if all(found in (0, high) for found in signs):
            return 0 if 0 in signs else high
        return low if any(found in (0, low) for found in signs) else None
    if op == "where":
        return signs[1] if signs[1] == signs[2] else None
    return None


def _constant_sign(expr: ir.Expr) -> int | None:
    """The sign of an expression without tensors or params, from sympy's assumptions."""
    try:
        value = Algebra().to_sympy(expr)
    except NotAlgebraic:
        return None
    value = value.xreplace({v: sympy.Symbol(v.name, nonnegative=True, integer=True)
                            for v in value.free_symbols})
    if value.is_zero:
        return 0
    if value.is_nonpositive:
        return -1
    return 1 if value.is_nonnegative else None
