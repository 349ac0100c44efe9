"""Rule 0, the canonical form: one spelling of each Einsum, so fusion does not depend on
how the user wrote it.

Eight steps run to a fixed point, each proved before it is kept (docs/rewrites.md);
they change no pass count, only what the scheduler has to recognise:

1. **Move out of a contraction.** In `T = sum[r] BODY` the additive terms and the
   factors of BODY that do not depend on the summed variables leave the sum: the
   contraction keeps the product of the factors that do (in a normal order, sorted by
   their text) and an elementwise epilogue applies the rest, with the Einsum's filter:

       QK[p, m] = Q[p, e] * K[m, e] / sqrt(E)  where m <= p
       ->  QK_sum[p, m] = sum[e] K[m, e] * Q[p, e];  QK[p, m] = QK_sum[p, m] / sqrt(E)  where m <= p

   Constant factors fold exactly (`2 * 0.5` is 1) and constant powers become roots and
   quotients (`E ** -0.5` is `1 / sqrt(E)`). A term `t` free of the summed variables is
   counted once per term of the sum: it becomes `N * t` (N the product of the summed
   ranks' sizes), folded into the branches of a `where`. Proof obligation: BODY =
   outside * inside + terms, pointwise (sympy). The rule applies only where no
   condition removes terms of the sum (presence analysis: every filter conjunct and
   every possibly absent read is free of the summed variables), so that the sum has
   exactly N terms at every present point: never empty, and `outside * 0` is never
   asked of an infinite factor. Like factor.py, exact for finite values (an infinite
   factor times a sum of mixed signs is not the sum of the infinite terms).

2. **A log out of an exponential.** `exp(x - log(y))` -> `exp(x) / y` (`+ log`: a
   product) for a y proved nonnegative, after inlining the elementwise tensors of the
   exponent, `exp(x)` its own tensor: the log-sum-exp spelling of softmax,
   `exp(QK - LSE)` with `LSE = GM + log(SD)`, becomes `A_exp = exp(QK - GM)`,
   `A = A_exp / SD`. Proof obligation: the two sides (sympy).

3. **-inf mask to a filter.** `S = X + where(c, 0, -inf)` (or `where(c, X, -inf)`, or the
   branches swapped: `where(m > p, -inf, 0)` is the filter `m <= p`) becomes
   `S = X where c`. Absent and -inf are not the same value in every context: a row
   whose every key is masked gives 0 through a filter but NaN through a -inf bias
   (exp(-inf - -inf)). So the step is kept only where sympy shows that every reader of
   the masked points, followed through elementwise readers, gives there the identity of
   the reduction that consumes them (max: -inf; sum: 0) and 0 at an output; once for a
   row with a visible point (reductions of the masked tensor finite and nonzero) and,
   unless every row provably keeps a visible point, once for a fully masked row (those
   reductions their identities, as absence gives them). A row keeps a visible point if a
   witness, 0 or the size - 1 of each reduced variable, satisfies c at every point
   (m = 0 for `m <= p`). A causal bias becomes the causal filter; `m + 2 <= p` (rows 0
   and 1 see no key) stays a bias, reported blocked. Exact for finite inputs (X + -inf
   is -inf only for X < inf).

4. **A masked term to a filter.** Under a reduction, a `where(c, x, b)` whose other
   branch makes the term the reduction's identity (sympy evaluates the body with it:
   `max[m] where(m <= p, QK, -inf)`, `sum[m] where(m <= p, SN, 0) * V`, `sum[m]
   exp(where(m <= p, QK, -inf) - GM)`) masks terms, which is what the filter `c` does:
   `GM = max[m] QK where m <= p`. Exact because the identity changes no reduction (max(a,
   -inf) = a, a + 0 = a) and a row where c removes every term gets the identity through
   the filter too (LANGUAGE.md, absent points), so a fully masked row gives the same
   value both ways. Refused, with the reason, where the filter would decide whole left
   points instead: a conjunct of c that mentions no reduced variable (absent there, not
   the identity), a condition that may be absent, or a kept branch that may be absent
   for a reason free of the reduced variables. Exact for finite values of the rest of
   the body (`0 * v` is 0 only for a finite v).

5. **A scale before the max-shift.** `SN = exp((X - G) * s)` with `G = max[m] X` and s a
   constant (sizes, params, numbers) becomes `X_scaled = X * s`, `G_scaled = max[m]
   X_scaled`, `SN = exp(X_scaled - G_scaled)`: the scores scaled before their max, the
   form the online max-shift streams. Proof obligation: the exponent is s * X - s * G
   (sympy), and G_scaled = s * G. That holds pointwise for an s proved positive (max is
   monotone; on a row of -inf it is -inf both ways). For an s of unknown sign (a param
   may be overridden by a negative value) G_scaled - s * G is one finite constant per
   row (for finite scores), so SN changes by a positive row factor: the step is kept
   only where sympy shows each reader of SN, followed through its readers, unchanged
   by that factor (`SN / SD`) or proportional to it (`SD = sum[m] SN`, the factor
   constant along m), and no output proportional to it. Refused with the reason
   otherwise (an output that is the exponential, a reader that is not homogeneous).

6. **A shared filter to its producer.** A condition that every reader of an elementwise
   tensor applies, in its filter, to the points it reads (`GM = max[m] QK where m <= p`,
   `SN = exp(QK - GM) where m <= p`) becomes that tensor's filter and leaves the
   readers: absence of the read then removes the same terms and points, because the
   read mentions a reduced variable exactly when the condition does (LANGUAGE.md, the
   causes of absence). One place for a mask, where the fuser looks for it.

7. **A filter its reads apply.** A conjunct that a tensor read in the body already
   applies (QK absent where not m <= p, and `GM = max[m] QK where m <= p`) leaves the
   filter, by the same argument: the mask written on every Einsum is written once.

8. **A copy of an input into its readers** (run first). An Einsum whose body is one read of an input,
   `BK[e, m1, m0] = K[e, m1*M0 + m0]` (FuseMax's Cascade 5 names the chunked keys so),
   is a renaming of the input's points: each read of it becomes the input's read at the
   substituted coordinates, `BQK = Q[e, p] * K[e, m1*M0 + m0]`, and the copy goes. The
   value is the same at every point by substitution; absence is too, because the copy is
   absent exactly where its read leaves the input (the last chunk's keys past M), and
   the inlined read leaves it at the same points. Kept as written where a read of the
   copy may leave the copy's own extent (absent there, as the input's read need not
   be), and where the copy is an output or has a filter.

The scheduler no longer depends on the names of intermediates either: they are only
names; the fuser reads roles from the dataflow.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import sympy

from ..analysis.presence import (absent_tensors, einsum_conditions, expression_conditions,
                                 in_range_by_construction)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.intervals import interval, provably
from .algebra import (Algebra, NotAlgebraic, is_zero, prove_equal, rebuild, replace_reads,
                      sign, substitute)
from .edit import assemble, fixed_point, fresh_name, with_body
from .factor import _flatten, inline
from .steps import Blocked, Step

EPILOGUE = "move out of a contraction"
MASK = "-inf mask to a filter"
TERMS = "a masked term to a filter"
SHIFT = "a scale before the max-shift"
FILTER = "a shared filter to its producer"
REDUNDANT = "a filter its reads apply"
COPY = "a copy of an input into its readers"
LOG = "a log out of an exponential"
_IDENTITY = {"sum": sympy.Integer(0), "max": -sympy.oo, "min": sympy.oo}
_IDENTITY_TEXT = {"sum": "0", "max": "-inf", "min": "inf"}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def canonicalize(cascade: Cascade) -> tuple[Cascade, list[Step], list[Blocked]]:
    """The canonical cascade, the steps that made it, and the masks left as written."""
    steps: list[Step] = []
    blocked: list[Blocked] = []
    for rule in (_copy_into_readers, _move_out_of_contraction, _log_out_of_exp,
                 _mask_to_filter, _masked_terms, _scaled_shift, _filter_to_producer,
                 _redundant_filter):
        cascade, more, notes = fixed_point(cascade, rule, 2 * len(cascade.einsums) + 2)
        steps += more
        blocked += notes
    return cascade, steps, blocked


def _replaced(cascade: Cascade, name: str, new: list[Einsum]) -> Cascade:
    """The cascade with the Einsum of `name` replaced by `new` (in that order)."""
    einsums = [n for e in cascade.einsums for n in (new if e.tensor == name else [e])]
    return assemble(cascade, einsums)


# ------------------------------------------------------------------ 8. copies
def _copy_into_readers(cascade: Cascade, einsum: Einsum):
    """A copy of an input's points (`BK[e, m1, m0] = K[e, m1*M0 + m0]`) replaced, in every
    reader, by the input's read at the substituted coordinates; the copy then goes."""
    body = einsum.body
    if not isinstance(body, ir.Read) or not cascade.tensors[body.tensor].is_input or \
            einsum.reduce_op is not None or einsum.iterative is not None or \
            einsum.filter is not None or einsum.tensor in cascade.outputs:
        return None
    readers = [e for e in cascade.einsums if einsum.tensor in e.reads]
    if not readers:
        return None
    reads = [read for reader in readers for read in reader.accesses()
             if read.tensor == einsum.tensor]
    if not all(in_range_by_construction(cascade, einsum.tensor, position, index)
               for read in reads for position, index in enumerate(read.indices)):
        return None     # a read past the copy's extent is absent; the input's need not be

    def inlined(read: ir.Read):
        if read.tensor != einsum.tensor:
            return None
        return substitute(body, dict(zip(einsum.indices, read.indices)))

    def through(expr):
        return None if expr is None else replace_reads(expr, inlined)

    rewritten = {r.tensor: with_body(r, body=through(r.body), filter=through(r.filter),
                                     init=through(r.init)) for r in readers}
    new = assemble(cascade, [rewritten.get(e.tensor, e) for e in cascade.einsums],
                   removable={einsum.tensor})
    names = ", ".join(rewritten)
    summary = (f"{einsum.tensor} = {ir.to_text(body)} is a copy of {body.tensor}: "
               f"{names} read {body.tensor} there")
    identity = (f"{einsum.tensor}[{', '.join(einsum.indices)}] = {ir.to_text(body)} at every "
                f"point, present exactly where the read is (substitution)")
    return new, Step(COPY, summary, tuple(rewritten), identity)


# ------------------------------------------------------------------ 1. contractions
def _terms(expr: ir.Expr, sign: int = 1) -> list[tuple[int, ir.Expr]]:
    """`a - b + c` -> [(1, a), (-1, b), (1, c)]: the additive terms with their signs."""
    if isinstance(expr, ir.Op) and expr.op in ("+", "-"):
        second = sign if expr.op == "+" else -sign
        return _terms(expr.args[0], sign) + _terms(expr.args[1], second)
    if isinstance(expr, ir.Op) and expr.op == "neg":
        return _terms(expr.args[0], -sign)
    return [(sign, expr)]


def _exact_const(value: Fraction) -> list[ir.Expr]:
    """Numerator and denominator constants for an exact rational ([] for 1)."""
    if value == 1:
        return []
    if value.denominator & (value.denominator - 1) == 0 and \
            Fraction(float(value)) == value:   # a power-of-two denominator: one float
        return [ir.Const(float(value))]
    return [ir.Op("/", (ir.Const(float(value.numerator)),
                        ir.Const(float(value.denominator))))]


def _folded(numerator: list[ir.Expr], denominator: list[ir.Expr], sign: int
            ) -> tuple[list[ir.Expr], list[ir.Expr]] | None:
    """The factors with their constants folded into one (exactly) and the rest in a
    normal order; None where a constant is not a finite rational."""
    value = Fraction(sign)
    top, bottom = [], []
    for factors, into, invert in ((numerator, top, False), (denominator, bottom, True)):
        for factor in factors:
            if isinstance(factor, ir.Const):
                if not math.isfinite(factor.value) or factor.value == 0:
                    return None
                value = value / Fraction(factor.value) if invert else \
                    value * Fraction(factor.value)
            else:
                into.append(factor)
    order = lambda f: ir.to_text(f)     # noqa: E731  (a normal order of factors)
    return _exact_const(value) + sorted(top, key=order), sorted(bottom, key=order)


def _exponent(expr: ir.Expr) -> float | None:
    if isinstance(expr, ir.Const):
        return float(expr.value)
    if isinstance(expr, ir.Op) and expr.op == "neg" and isinstance(expr.args[0], ir.Const):
        return -float(expr.args[0].value)
    return None


def _powers(numerator: list[ir.Expr], denominator: list[ir.Expr]
            ) -> tuple[list[ir.Expr], list[ir.Expr]]:
    """Constant powers as roots and quotients (`E ** -0.5` -> `1 / sqrt(E)`, `x ** -1` ->
    `1 / x`): one spelling of a scale, and one every printer has."""
    top, bottom = [], []
    for factors, same, other in ((numerator, top, bottom), (denominator, bottom, top)):
        for factor in factors:
            power = _exponent(factor.args[1]) if isinstance(factor, ir.Op) and \
                factor.op == "**" else None
            if power is None or power == 0 or abs(power) not in (0.5, 1.0, 2.0):
                same.append(factor)
                continue
            base = factor.args[0]
            magnitude = ir.Op("sqrt", (base,)) if abs(power) == 0.5 else base
            into = same if power > 0 else other
            into.extend([magnitude] * (2 if abs(power) == 2.0 else 1))
    return top, bottom


def _ratio(numerator: list[ir.Expr], denominator: list[ir.Expr]) -> ir.Expr:
    top = numerator[0] if numerator else ir.Const(1.0)
    for factor in numerator[1:]:
        top = ir.Op("*", (top, factor))
    for factor in denominator:
        top = ir.Op("/", (top, factor))
    return top


def _counted(term: ir.Expr, count: ir.Expr) -> ir.Expr:
    """count * term, with a where's branches multiplied separately (`N * where(c, 0,
    -inf)` is `where(c, 0, -inf)`: N >= 1), each folded by sympy."""
    if isinstance(term, ir.Op) and term.op == "where":
        cond, *branches = term.args
        return ir.Op("where", (cond, *(_counted(b, count) for b in branches)))
    algebra = Algebra()
    try:
        return algebra.to_ir(algebra.to_sympy(count) * algebra.to_sympy(term))
    except (NotAlgebraic, TypeError, ValueError):   # no IR form: the product as written
        return ir.Op("*", (count, term))


def _move_out_of_contraction(cascade: Cascade, einsum: Einsum):
    if einsum.reduce_op != "sum" or einsum.iterative is not None or not einsum.reduced:
        return None
    reduced = set(einsum.reduced)

    def free(expr: ir.Expr) -> bool:
        return not set(ir.index_vars(expr)) & reduced

    terms = _terms(einsum.body)
    outside_terms = [(s, t) for s, t in terms if free(t)]
    inside_terms = [(s, t) for s, t in terms if not free(t)]
    if len(inside_terms) != 1:
        return None
    sign, inside_term = inside_terms[0]
    numerator, denominator = [], []
    _flatten(inside_term, numerator, denominator)
    outside = _folded(*_powers([f for f in numerator if free(f)],
                               [f for f in denominator if free(f)]), sign)
    inside = _folded([f for f in numerator if not free(f)],
                     [f for f in denominator if not free(f)], 1)
    if outside is None or inside is None:
        return None
    if outside == ([], []) and not outside_terms:
        return None
    absent = absent_tensors(cascade)
    losing = [c for c in einsum_conditions(cascade, einsum, absent) if c.variables & reduced]
    if losing:
        return Blocked(EPILOGUE, einsum.tensor,
                       f"the sum over {', '.join(einsum.reduced)} may lose terms, so a "
                       f"factor or term outside it would change an empty sum")
    inner_body = _ratio(*inside)
    name = fresh_name(cascade, f"{einsum.tensor}_sum")
    kept = set(ir.index_vars(inner_body))
    indices = tuple(v for v in einsum.indices if v in kept)
    inner = Einsum(name, indices, inner_body, "sum", einsum.reduced, None,
                   explicit_reduction=True)
    partial = ir.Read(name, tuple(ir.Index(v) for v in indices))
    top, bottom = outside
    result = _ratio([partial] + top, bottom)
    count = _ratio([ir.Dim(cascade.var_rank(v)) for v in einsum.reduced], [])
    for term_sign, term in outside_terms:
        counted = _counted(term, count)
        result = ir.Op("+" if term_sign > 0 else "-", (result, counted))
    # Proof: BODY = outside * inside + sum of the terms, at every point of the sum; the
    # sum has exactly N = count terms (no condition removes one), so the terms free of
    # the summed variables are N times themselves.
    expected = ir.Op("*", (_ratio(*outside), inner_body))
    for term_sign, term in outside_terms:
        expected = ir.Op("+" if term_sign > 0 else "-", (expected, term))
    if not prove_equal(einsum.body, expected):
        return Blocked(EPILOGUE, einsum.tensor, "sympy could not prove the split equal")
    epilogue = with_body(einsum, body=result, reduce_op=None, reduced=(),
                         explicit_reduction=False)
    new = _replaced(cascade, einsum.tensor, [inner, epilogue])
    moved = [ir.to_text(_ratio(*outside))] if outside != ([], []) else []
    moved += [ir.to_text(t) for _, t in outside_terms]
    summary = (f"{' and '.join(moved)} do{'es' if len(moved) == 1 else ''} not depend on "
               f"{', '.join(einsum.reduced)}: {name} = sum[{', '.join(einsum.reduced)}] "
               f"{ir.to_text(inner_body)}, then {einsum.tensor} = {ir.to_text(result)}")
    identity = f"{ir.to_text(einsum.body)} = {ir.to_text(expected)}"
    if outside_terms:
        identity += f", and the sum has {ir.to_text(count)} terms at every point"
    return new, Step(EPILOGUE, summary, (name, einsum.tensor), identity)


# ------------------------------------------------------------------ 2. log-sum-exp
def _sum_of(terms: list[tuple[int, ir.Expr]]) -> ir.Expr:
    result = None
    for sign, term in terms:
        if result is None:
            result = term if sign > 0 else ir.Op("neg", (term,))
        else:
            result = ir.Op("+" if sign > 0 else "-", (result, term))
    return ir.Const(0.0) if result is None else result


def _log_out_of_exp(cascade: Cascade, einsum: Einsum):
    """`exp(x - log(y))` -> `exp(x) / y` and `exp(x + log(y))` -> `exp(x) * y`, after
    inlining the elementwise tensors of the exponent (the log-sum-exp spelling of
    softmax, `A = exp(QK - LSE)` with `LSE = GM + log(SD)`, becomes
    `exp(QK - GM) / SD`, the form the other rules factor). Only for a y proved
    nonnegative: log(y) is NaN below 0, where y is not."""
    if einsum.iterative is not None:
        return None
    for node in ir.walk(einsum.body):
        if not (isinstance(node, ir.Op) and node.op == "exp"):
            continue
        for depth in range(3):
            exponent = inline(cascade, node.args[0], depth)
            terms = _terms(exponent)
            logs = [(s, t) for s, t in terms if isinstance(t, ir.Op) and t.op == "log"]
            if logs:
                break
        else:
            continue
        for _, term in logs:
            if sign(cascade, term.args[0]) not in (0, 1):
                return Blocked(LOG, einsum.tensor, f"{ir.to_text(term.args[0])} is not "
                               f"proved nonnegative: exp(x - log(y)) is NaN where y < 0, "
                               f"exp(x) / y is not")
        rest = _sum_of([(s, t) for s, t in terms if (s, t) not in logs])
        scales = ([t.args[0] for s, t in logs if s > 0], [t.args[0] for s, t in logs if s < 0])
        before = ir.Op("exp", (exponent,))
        if not prove_equal(before, _ratio([ir.Op("exp", (rest,))] + scales[0], scales[1])):
            return Blocked(LOG, einsum.tensor, "sympy could not prove the quotient equal")
        # The exponential is its own tensor (as SN = exp(QK - GM) in the textbook form),
        # so that the divisor is a factor the later rules can move out of a sum.
        name = fresh_name(cascade, f"{einsum.tensor}_exp")
        indices = tuple(v for v in einsum.variables if v in ir.index_vars(rest))
        power = Einsum(name, indices, ir.Op("exp", (rest,)))
        read = ir.Read(name, tuple(ir.Index(v) for v in indices))
        body = _with_node(einsum.body, node, _ratio([read] + scales[0], scales[1]))
        stopped = set(ir.tensors_read(exponent)) | set(ir.tensors_read(node.args[0]))
        einsums = [n for e in cascade.einsums for n in (
            [power, with_body(e, body=body)] if e.tensor == einsum.tensor else [e])]
        new = assemble(cascade, einsums, removable=stopped)
        summary = (f"the log leaves the exponential: {name} = exp({ir.to_text(rest)}), "
                   f"then {einsum.tensor} = {ir.to_text(body)}")
        return new, Step(LOG, summary, (name, einsum.tensor),
                         f"{ir.to_text(before)} = exp({ir.to_text(rest)})"
                         + "".join(f" * {ir.to_text(y)}" for y in scales[0])
                         + "".join(f" / {ir.to_text(y)}" for y in scales[1]))
    return None


# ------------------------------------------------------------------ 3. -inf masks
def _negated(condition: ir.Expr) -> ir.Expr:
    """not c; a comparison of indices and sizes flipped (no NaN among integers)."""
    if isinstance(condition, ir.Op) and condition.op in _NEGATED and not ir.reads(condition):
        return ir.Op(_NEGATED[condition.op], condition.args)
    if isinstance(condition, ir.Op) and condition.op == "not":
        return condition.args[0]
    return ir.Op("not", (condition,))


def _without_zero(expr: ir.Expr) -> ir.Expr:
    """`x + 0`, `0 + x`, `x - 0` -> x (what is left of an additive mask's kept branch)."""
    zero = lambda e: isinstance(e, ir.Const) and e.value == 0   # noqa: E731
    if isinstance(expr, ir.Op) and expr.op in ("+", "-"):
        left, right = (_without_zero(a) for a in expr.args)
        if zero(right):
            return left
        if zero(left) and expr.op == "+":
            return right
        return ir.Op(expr.op, (left, right))
    return expr


def _with_node(expr: ir.Expr, node: ir.Expr, value: ir.Expr) -> ir.Expr:
    return rebuild(expr, lambda n: value if n is node else None)


class _Masked(Algebra):
    """Values at the masked points: a masked tensor's read is its constant value there
    (-inf, then what readers make of it); a row value (a reduction of a masked tensor)
    is its value on a fully masked row where `empty` says so (the reduction's identity),
    else a finite nonzero real symbol; other reads are finite real symbols."""

    def __init__(self, values: dict[str, sympy.Expr], rows: dict[str, sympy.Expr] = {}):
        super().__init__()
        self.values, self.rows = values, rows

    def read(self, node: ir.Read) -> sympy.Expr:
        if node.tensor in self.values:
            return self.values[node.tensor]
        if node.tensor in self.rows:
            empty = self.rows[node.tensor]
            if empty is not None:
                return empty
            return self.symbol(node, node.tensor, real=True, nonzero=True)
        return super().read(node)


def _visible_somewhere(cascade: Cascade, condition: ir.Expr, reduced: set[str]) -> bool:
    """Whether every point keeps a visible term: some choice of 0 or size - 1 for each
    reduced variable of the condition satisfies it at every point of the others."""
    variables = [v for v in ir.index_vars(condition) if v in reduced]
    ends = [(ir.Const(0), ir.Op("-", (ir.Dim(cascade.var_rank(v)), ir.Const(1))))
            for v in variables]
    return any(_always(cascade, substitute(condition, dict(zip(variables, choice))))
               for choice in itertools.product(*ends))


def _always(cascade: Cascade, condition: ir.Expr) -> bool:
    """Whether interval bounds prove an index condition at every point, for every size."""
    if isinstance(condition, ir.Op) and condition.op in ("and", "or"):
        proved = [_always(cascade, a) for a in condition.args]
        return all(proved) if condition.op == "and" else any(proved)
    if not (isinstance(condition, ir.Op) and condition.op in ("<", "<=", ">", ">=")):
        return False
    low, high = condition.args if condition.op in ("<", "<=") else condition.args[::-1]
    gap = ir.Op("-", (high, low))                      # low <= high: gap >= 0
    bounds = interval(gap, lambda node: _size_bounds(cascade, node))
    least = 1 if condition.op in ("<", ">") else 0
    return bounds is not None and provably(bounds[0] >= least)


def _size_bounds(cascade: Cascade, node: ir.Expr):
    """Bounds of a leaf of an index expression, for every size >= 1: an integer, an
    index variable (0 .. its rank's size - 1), a size."""
    if isinstance(node, ir.Const) and float(node.value).is_integer():
        return sympy.Integer(int(node.value)), sympy.Integer(int(node.value))
    if isinstance(node, ir.Index):
        return sympy.Integer(0), cascade.ranks[cascade.var_rank(node.var)].size - 1
    if isinstance(node, ir.Dim):
        return cascade.ranks[node.rank].size, cascade.ranks[node.rank].size
    return None


def _readers_agree(cascade: Cascade, name: str, condition: ir.Expr
                   ) -> tuple[str | None, bool]:
    """(None, whether a row may be fully masked) if making the -inf points of `name`
    absent changes no value the cascade computes (module docstring), else (the reason,
    ...). Two cases are checked: a row with a visible point (row values finite), and,
    where one may exist, a fully masked row (row values their reductions' identities, as
    absence gives them; values computed from them follow)."""
    if name in cascade.outputs:
        return f"{name} is an output: -inf there, 0 where absent", False
    masks = {name: condition}           # the masked points, in each tensor's variables
    visible = {name: -sympy.oo}          # the masked points' values, on a visible row
    empty = {name: -sympy.oo}            # ... and on a fully masked row
    # Row values (reductions of masked tensors, and what is computed from them) -> their
    # value on a fully masked row; None where every row keeps a visible point.
    rows: dict[str, sympy.Expr | None] = {}
    for einsum in cascade.einsums:
        masked = [r for r in einsum.accesses() if r.tensor in masks]
        may_be_empty = any(v is not None for v in rows.values())
        if einsum.tensor == name or not masked:
            if set(einsum.reads) & set(rows) and einsum.tensor != name:
                rows[einsum.tensor] = _row_on_empty(einsum, rows) if may_be_empty else None
            continue
        if any(r.tensor in masks for r in ir.reads(einsum.filter)
               if einsum.filter is not None) or einsum.init is not None:
            return f"{einsum.tensor} reads the masked values in a filter or an init", False
        if not all(isinstance(i, ir.Index) for r in masked for i in r.indices):
            return f"{einsum.tensor} reads the masked values at other points", False
        found = {substitute(masks[r.tensor], dict(zip(cascade.einsum(r.tensor).indices,
                                                      r.indices))) for r in masked}
        if len(found) > 1:
            return f"{einsum.tensor} reads masked values at different points", False
        (mask,) = found
        on_visible = _Masked(visible, {r: None for r in rows}).to_sympy(einsum.body)
        on_empty = _Masked(empty, rows).to_sympy(einsum.body) if may_be_empty else on_visible
        if einsum.reduce_op is not None:
            reduced = set(einsum.reduced)
            if not set(ir.index_vars(mask)) & reduced:
                return f"the mask decides whole points of {einsum.tensor}, not its terms", \
                    False
            identity = _IDENTITY[einsum.reduce_op]
            row_empty = not _visible_somewhere(cascade, mask, reduced)
            for value, where in ((on_visible, ""), (on_empty, " on a fully masked row")):
                if value != identity and (where == "" or row_empty or may_be_empty):
                    return (f"{einsum.tensor} = {einsum.reduce_op}[...] would take "
                            f"{value} at the masked points{where}, not its identity: there "
                            f"-inf and absence differ"), False
            rows[einsum.tensor] = identity if row_empty or may_be_empty else None
            continue
        for value, where in ((on_visible, ""), (on_empty, " on a fully masked row")):
            if not isinstance(value, sympy.Number) or value is sympy.nan:
                return (f"{einsum.tensor} is {value} at the masked points{where}, not a "
                        f"constant"), False
            if einsum.tensor in cascade.outputs and value != 0:
                return (f"the output {einsum.tensor} would be {value} at the masked points"
                        f"{where}, not 0"), False
        visible[einsum.tensor], empty[einsum.tensor] = on_visible, on_empty
        masks[einsum.tensor] = mask
    return None, any(v is not None for v in rows.values())


def _row_on_empty(einsum: Einsum, rows: dict) -> sympy.Expr:
    """The value on a fully masked row of a tensor computed from row values (NaN,
    poisoning what reads it, where it is not one the reduction keeps)."""
    value = _Masked({}, rows).to_sympy(einsum.body)
    if einsum.reduce_op is None or einsum.reduce_op in ("max", "min") or \
            value in (sympy.Integer(0), sympy.oo, -sympy.oo):
        return value
    return sympy.nan


def _masking_wheres(body: ir.Expr):
    """Each `where(c, a, b)` of `body` read both ways: (the node, the branch kept, the
    condition that keeps it, the body's value where the other branch is picked, with
    every read a finite real symbol)."""
    for node in ir.walk(body):
        if not (isinstance(node, ir.Op) and node.op == "where"):
            continue
        condition, when_true, when_false = node.args
        for kept, dropped, visible in ((when_true, when_false, condition),
                                       (when_false, when_true, _negated(condition))):
            yield node, kept, visible, _Masked({}, {}).to_sympy(_with_node(body, node,
                                                                           dropped))


def _mask_to_filter(cascade: Cascade, einsum: Einsum):
    if einsum.reduce_op is not None or einsum.iterative is not None:
        return None
    for node, kept, visible, masked_value in _masking_wheres(einsum.body):
        if masked_value != -sympy.oo:
            continue
        if expression_conditions(cascade, node.args[0], absent_tensors(cascade)):
            return Blocked(MASK, einsum.tensor, "the mask's condition may be absent")
        reason, empty_rows = _readers_agree(cascade, einsum.tensor, visible)
        if reason is not None:
            return Blocked(MASK, einsum.tensor, reason)
        new, body = _where_to_filter(cascade, einsum, node, kept, visible)
        identity = (f"{ir.to_text(einsum.body)} = {ir.to_text(body)} where "
                    f"{ir.to_text(visible)}, and -inf elsewhere: each reader gives its "
                    f"reduction's identity there, "
                    + ("on a fully masked row too" if empty_rows else
                       "and every row keeps a visible point"))
        summary = (f"{einsum.tensor}'s -inf points become absent: {einsum.tensor} = "
                   f"{ir.to_text(body)} where {ir.to_text(visible)}")
        return new, Step(MASK, summary, (einsum.tensor,), identity)
    return None


def _where_to_filter(cascade: Cascade, einsum: Einsum, node: ir.Expr, kept: ir.Expr,
                     visible: ir.Expr) -> tuple[Cascade, ir.Expr]:
    """The cascade with the where `node` of `einsum` replaced by the branch it `kept`,
    and the condition `visible` of that branch added to the Einsum's filter; the new
    body."""
    body = _without_zero(_with_node(einsum.body, node, kept))
    both = visible if einsum.filter is None else ir.Op("and", (einsum.filter, visible))
    return _replaced(cascade, einsum.tensor, [with_body(einsum, body=body, filter=both)]), \
        body


# ------------------------------------------------------------------ 4. masked terms
def _masked_terms(cascade: Cascade, einsum: Einsum):
    """`R = max[m] where(c, x, -inf)` -> `R = max[m] x where c` (and `sum[m] where(c, x,
    0) * v`, `sum[m] exp(where(c, x, -inf) - g)`, `min` with +inf): a where whose other
    branch makes the term the reduction's identity masks terms, which is what the
    filter c does (module docstring, step 4)."""
    if einsum.reduce_op not in _IDENTITY or einsum.iterative is not None:
        return None
    identity = _IDENTITY_TEXT[einsum.reduce_op]
    for node, kept, visible, masked_value in _masking_wheres(einsum.body):
        if masked_value != _IDENTITY[einsum.reduce_op]:
            continue
        reason = _terms_only(cascade, einsum, node, kept, visible)
        if reason is not None:
            return Blocked(TERMS, einsum.tensor, reason)
        new, body = _where_to_filter(cascade, einsum, node, kept, visible)
        said = f"{einsum.reduce_op}[{', '.join(einsum.reduced)}]"
        summary = (f"{einsum.tensor}'s terms where not {ir.to_text(visible)} are "
                   f"{identity}, the identity of {einsum.reduce_op}: {einsum.tensor} = "
                   f"{said} {ir.to_text(body)} where {ir.to_text(visible)}")
        proof = (f"{ir.to_text(einsum.body)} is {identity} where not "
                 f"{ir.to_text(visible)} and {ir.to_text(body)} elsewhere; the filter "
                 f"removes the same terms (each conjunct mentions "
                 f"{', '.join(einsum.reduced)}), and a row with none left gives "
                 f"{identity} either way")
        return new, Step(TERMS, summary, (einsum.tensor,), proof)
    return None


def _terms_only(cascade: Cascade, einsum: Einsum, node: ir.Expr, kept: ir.Expr,
                visible: ir.Expr) -> str | None:
    """Why the filter `visible` would not do what the where does (None: it would). The
    where decides terms: it mentions a reduced variable, and its absence (c absent, or
    the branch it picks absent) removes a term. The filter must too: each conjunct must
    mention a reduced variable (one that mentions none decides the whole left point,
    absent rather than the identity), the condition must be present, and what the kept
    branch reads must be absent only term by term."""
    reduced = set(einsum.reduced)
    for conjunct in ir.conjuncts(visible):
        if not set(ir.index_vars(conjunct)) & reduced:
            return (f"{ir.to_text(conjunct)} mentions no reduced variable: as a filter it "
                    f"would make the point absent, where the where gives the identity")
    absent = absent_tensors(cascade)
    if expression_conditions(cascade, node.args[0], absent):
        return "the mask's condition may be absent"
    for condition in expression_conditions(cascade, kept, absent):
        if not condition.variables & reduced:
            return (f"{ir.to_text(kept)} may be absent at a whole point, not a term, "
                    f"where the where would give the identity")
    return None


# ------------------------------------------------------------------ 5. scaled shifts
def _scaled_shift(cascade: Cascade, einsum: Einsum):
    """`exp((X - G) * s)` with `G = max[m] X` and s free of every tensor and index ->
    `exp(Xs - Gs)` with `Xs = X * s` and `Gs = max[m] Xs`: the scale before the max, as
    in `QK = Q*K*scale; GM = max[m] QK; SN = exp(QK - GM)`, the form the online max-shift
    streams (module docstring, step 5)."""
    if einsum.iterative is not None:
        return None
    for node in ir.walk(einsum.body):
        if not (isinstance(node, ir.Op) and node.op == "exp"):
            continue
        found = _shift_times_scale(cascade, node.args[0])
        if found is None:
            continue
        shift, scores, scale, positive = found
        g_einsum = cascade.einsum(shift.tensor)
        top, bottom = scale
        factor = ir.to_text(_ratio(top or [ir.Const(1.0)], bottom))
        if not positive:
            reason = _row_factor_cancels(cascade, einsum, node, shift.indices)
            if reason is not None:
                return Blocked(SHIFT, einsum.tensor, f"{factor} may be negative (max[...] "
                               f"{factor} * X is then not {factor} * max[...] X) and "
                               f"{reason}")
        tensor = cascade.tensors[scores.tensor]
        variables = tuple(cascade.ranks[r].var for r in tensor.ranks)
        scaled_name = fresh_name(cascade, f"{scores.tensor}_scaled")
        scaled = Einsum(scaled_name, variables,
                        _ratio([ir.Read(scores.tensor, tuple(map(ir.Index, variables)))]
                               + top, bottom))
        shift_name = fresh_name(cascade, f"{shift.tensor}_scaled", {scaled_name})
        max_of_scaled = with_body(g_einsum, tensor=shift_name, body=rebuild(
            g_einsum.body, lambda n: ir.Read(scaled_name, n.indices)
            if isinstance(n, ir.Read) and n.tensor == scores.tensor else None))
        exponent = ir.Op("-", (ir.Read(scaled_name, scores.indices),
                               ir.Read(shift_name, shift.indices)))
        body = _with_node(einsum.body, node, ir.Op("exp", (exponent,)))
        einsums = [n for e in cascade.einsums for n in (
            [scaled, max_of_scaled, with_body(e, body=body)] if e.tensor == einsum.tensor
            else [e])]
        new = assemble(cascade, einsums, removable={shift.tensor})
        reduction = f"{g_einsum.reduce_op}[{', '.join(g_einsum.reduced)}]"
        summary = (f"{factor} moves before the max: {scaled_name} = "
                   f"{ir.to_text(scaled.body)}, {shift_name} = {reduction} {scaled_name}, "
                   f"then {einsum.tensor} = {ir.to_text(body)}")
        proof = (f"{ir.to_text(node.args[0])} = {factor} * {ir.to_text(scores)} - {factor} "
                 f"* {ir.to_text(shift)}; "
                 + (f"{factor} > 0, so {reduction} {factor} * {scores.tensor} = {factor} * "
                    f"{shift.tensor}" if positive else
                    f"{shift_name} - {factor} * {shift.tensor} is one constant per row, and "
                    f"each reader of {einsum.tensor} is proportional to it or unchanged by "
                    f"it: no output changes"))
        return new, Step(SHIFT, summary, (scaled_name, shift_name, einsum.tensor), proof)
    return None


def _shift_times_scale(cascade: Cascade, exponent: ir.Expr):
    """(the read of G, the read of X, the scale as folded numerator and denominator
    factors, whether it is proved positive) if `exponent` is s * (X - G) with G =
    max[m] X read at the same point and s a constant other than 1 (sizes, params,
    numbers); else None."""
    for shift in ir.reads(exponent):
        tensor = cascade.tensors[shift.tensor]
        if tensor.is_input or tensor.iterative is not None:
            continue
        g_einsum = cascade.einsum(shift.tensor)
        if g_einsum.reduce_op != "max" or not isinstance(g_einsum.body, ir.Read) or \
                g_einsum.init is not None:
            continue
        mapping = dict(zip(g_einsum.indices, shift.indices))
        scores = substitute(g_einsum.body, mapping)
        if scores not in ir.reads(exponent) or \
                cascade.tensors[scores.tensor].iterative is not None:
            continue
        algebra = Algebra()
        value = algebra.to_sympy(exponent)
        x, g = algebra.to_sympy(scores), algebra.to_sympy(shift)
        scale = sympy.diff(value, x)
        if scale == 1 or scale == 0 or not all(
                isinstance(algebra.nodes.get(s), (ir.Param, ir.Dim))
                for s in scale.free_symbols) or not is_zero(value - scale * (x - g)):
            continue
        try:
            numerator, denominator = [], []
            _flatten(algebra.to_ir(scale), numerator, denominator)
        except NotAlgebraic:
            continue
        folded = _folded(*_powers(numerator, denominator), 1)
        if folded is not None:
            return shift, scores, folded, bool(scale.is_positive)
    return None


def _row_factor_cancels(cascade: Cascade, einsum: Einsum, node: ir.Expr,
                        row: tuple[ir.Expr, ...]) -> str | None:
    """None if multiplying the exponential `node` of `einsum` by a positive factor r that
    depends only on the point `row` (in the einsum's variables) changes no output, else
    why not. Each reader of a scaled tensor must be, by sympy, unchanged (r cancels, as
    in SN / SD) or scaled by r itself (SD = sum[m] SN, r not varying along m)."""
    if set(ir.index_vars(ir.Read("", row))) & set(einsum.reduced):
        return f"the shift varies along {einsum.tensor}'s reduction"
    stand_in = ir.Read(fresh_name(cascade, "shifted"), ())
    scaled: dict[str, tuple[ir.Expr, ...]] = {}
    for current in cascade.einsums:
        if current.tensor == einsum.tensor:
            seen = [(stand_in, row)]
            body = _with_node(einsum.body, node, stand_in)
        else:
            seen = [(r, tuple(substitute(c, dict(zip(cascade.einsum(r.tensor).indices,
                                                       r.indices)))
                              for c in scaled[r.tensor]))
                    for r in current.accesses() if r.tensor in scaled]
            body = current.body
            if not seen:
                continue
            if any(r.tensor in scaled for e in (current.filter, current.init)
                   if e is not None for r in ir.reads(e)) or current.iterative is not None:
                return f"{current.tensor} reads {seen[0][0].tensor} in a filter, an init or " \
                       f"a recurrence"
        rows = {at for _, at in seen}
        if len(rows) > 1:
            return f"{current.tensor} reads the scaled values at different points"
        (at,) = rows
        algebra = Algebra()
        r = sympy.Symbol("r_", positive=True)
        before = algebra.to_sympy(body)
        after = before.xreplace({algebra.to_sympy(read): algebra.to_sympy(read) * r
                                 for read, _ in seen})
        if is_zero(after - before):
            continue
        if not is_zero(after - r * before):
            return f"{current.tensor} is not proportional to the exponential"
        if current.tensor in cascade.outputs:
            return f"the output {current.tensor} is proportional to the exponential"
        if set(ir.index_vars(ir.Read("", at))) & set(current.reduced):
            return f"the shift varies along {current.tensor}'s reduction"
        scaled[current.tensor] = at
    return None


# ------------------------------------------------------------------ 6, 7. filters
def _shared_filter(cascade: Cascade, einsum: Einsum):
    """The conjuncts every reader's filter applies to the points it reads of `einsum`'s
    tensor, in its variables, each with where it stands in each reader; None if a reader
    reads it otherwise."""
    name = einsum.tensor
    readers = [e for e in cascade.einsums if name in e.reads and e.tensor != name]
    if not readers:
        return None
    shared: dict[ir.Expr, list[tuple[str, ir.Expr]]] | None = None
    for reader in readers:
        found = [r for r in reader.accesses() if r.tensor == name]
        needed = [r for r in _needed_reads(reader.body) if r.tensor == name]
        if reader.init is not None or len(needed) != len(found):
            return None      # read in a filter, an init or a where's branch
        if len({r.indices for r in found}) != 1 or not all(
                isinstance(i, ir.Index) for i in found[0].indices):
            return None
        to_mine = {i.var: ir.Index(v) for i, v in zip(found[0].indices, einsum.indices)}
        term = bool(set(ir.index_vars(found[0])) & set(reader.reduced))
        here: dict[ir.Expr, list[tuple[str, ir.Expr]]] = {}
        for conjunct in ir.conjuncts(reader.filter):
            variables = set(ir.index_vars(conjunct))
            # Absence of the read removes a term exactly when the conjunct would.
            if ir.reads(conjunct) or not variables <= set(to_mine) or \
                    bool(variables & set(reader.reduced)) != term:
                continue
            here[substitute(conjunct, to_mine)] = [(reader.tensor, conjunct)]
        shared = here if shared is None else {
            c: shared[c] + here[c] for c in shared if c in here}
    return shared


def _filter_to_producer(cascade: Cascade, einsum: Einsum):
    """A condition every reader of an elementwise tensor filters the points it reads by
    (the mask on the max and on the weights) becomes the tensor's own filter: absence
    then drops the same points and terms. One place for a mask, as the fuser expects."""
    if einsum.reduce_op is not None or einsum.iterative is not None or \
            einsum.tensor in cascade.outputs:
        return None
    shared = _shared_filter(cascade, einsum)
    own = set(ir.conjuncts(einsum.filter))
    moving = {c: where for c, where in (shared or {}).items() if c not in own}
    if not moving:
        return None
    dropped: dict[str, set[ir.Expr]] = {}
    for where in moving.values():
        for reader, conjunct in where:
            dropped.setdefault(reader, set()).add(conjunct)
    new = []
    for existing in cascade.einsums:
        if existing.tensor == einsum.tensor:
            existing = with_body(existing, filter=ir.conjunction(
                list(ir.conjuncts(einsum.filter)) + list(moving)))
        elif existing.tensor in dropped:
            existing = with_body(existing, filter=ir.conjunction(
                [c for c in ir.conjuncts(existing.filter)
                 if c not in dropped[existing.tensor]]))
        new.append(existing)
    conditions = " and ".join(ir.to_text(c) for c in moving)
    readers = ", ".join(sorted(dropped))
    summary = f"every reader ({readers}) filters {einsum.tensor} by {conditions}: " \
              f"{einsum.tensor} = {ir.to_text(einsum.body)} where {conditions}"
    identity = (f"absence of {einsum.tensor} where not ({conditions}) removes in "
                f"{readers} the same terms and points as their filters (a read mentions "
                f"a reduced variable exactly when the condition does)")
    return assemble(cascade, new), Step(FILTER, summary, (einsum.tensor, *sorted(dropped)),
                                        identity)


def _implied(cascade: Cascade, name: str, memo: dict) -> set[ir.Expr]:
    """Conditions, in the variables of `name`'s left side, outside which its points are
    absent: its filter's conjuncts that decide points, and those of the tensors it reads
    at plain indices free of its reduced variables (their absence is its own). None for
    inputs and recurrences (position 0 is the init, which no filter removes)."""
    if name not in memo:
        memo[name] = set()
        einsum = None if cascade.tensors[name].is_input else cascade.einsum(name)
        if einsum is not None and einsum.iterative is None:
            reduced = set(einsum.reduced)
            found = {c for c in ir.conjuncts(einsum.filter)
                     if not set(ir.index_vars(c)) & reduced and not ir.reads(c)}
            for read in _needed_reads(einsum.body):
                if _plain(read) and not set(ir.index_vars(read)) & reduced and \
                        not cascade.tensors[read.tensor].is_input:
                    mapping = dict(zip(cascade.einsum(read.tensor).indices, read.indices))
                    found |= {substitute(c, mapping)
                              for c in _implied(cascade, read.tensor, memo)}
            memo[name] = found
    return memo[name]


def _plain(read: ir.Read) -> bool:
    return all(isinstance(i, ir.Index) for i in read.indices)


def _needed_reads(expr: ir.Expr) -> list[ir.Read]:
    """The reads whose absence always makes `expr` absent: all but those inside a
    `where(...)`, which needs only the branch it picks."""
    if isinstance(expr, ir.Read):
        return [expr]
    if isinstance(expr, ir.Op) and expr.op != "where":
        return [r for arg in expr.args for r in _needed_reads(arg)]
    return []


def _redundant_filter(cascade: Cascade, einsum: Einsum):
    """A conjunct of a filter that a tensor read in the body already applies (QK is
    absent where not m <= p, so `GM = max[m] QK where m <= p` says it twice) leaves the
    filter: the read's absence removes the same terms or points, as the read mentions a
    reduced variable exactly when the conjunct does."""
    if einsum.iterative is not None or einsum.filter is None:
        return None
    reduced, memo = set(einsum.reduced), {}
    redundant = []
    for conjunct in ir.conjuncts(einsum.filter):
        term = bool(set(ir.index_vars(conjunct)) & reduced)
        for read in _needed_reads(einsum.body):
            if read.tensor == einsum.tensor or cascade.tensors[read.tensor].is_input or \
                    not _plain(read) or bool(set(ir.index_vars(read)) & reduced) != term:
                continue
            mapping = dict(zip(cascade.einsum(read.tensor).indices, read.indices))
            if conjunct in {substitute(c, mapping)
                            for c in _implied(cascade, read.tensor, memo)}:
                redundant.append((conjunct, read.tensor))
                break
    if not redundant:
        return None
    dropped = [c for c, _ in redundant]
    kept = ir.conjunction([c for c in ir.conjuncts(einsum.filter) if c not in dropped])
    new = _replaced(cascade, einsum.tensor, [with_body(einsum, filter=kept)])
    said = "; ".join(f"{ir.to_text(c)} by {t}" for c, t in redundant)
    summary = f"{einsum.tensor}'s filter repeats what its reads apply ({said}): dropped"
    identity = (f"where the condition fails, the read is absent, which removes the same "
                f"terms (a condition on a reduced variable) or points of {einsum.tensor}")
    return new, Step(REDUNDANT, summary, (einsum.tensor,), identity)


__all__ = ["canonicalize", "COPY", "EPILOGUE", "LOG", "MASK", "TERMS", "SHIFT", "FILTER",
           "REDUNDANT"]
