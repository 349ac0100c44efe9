"""Rules 1 and 2: move what does not depend on the summed rank out of a sum.

Rule 1, factor out of a sum (FuseMax's deferred division):

    A[p, m] = SN[p, m] / SD[p];  AV[p, f] = sum[m] A[p, m] * V[m, f]
    ->  SNV[p, f] = sum[m] SN[p, m] * V[m, f];  AV[p, f] = SNV[p, f] / SD[p]

Rule 2, separable moments: when the body expands into terms that are each (a factor
free of m) * (a factor free of the completed reductions), each distinct m-factor gets
its own sum in the same pass and the sum is recombined after it:

    O[p, f] = sum[m] (S[p, m] - MU[p]) / SIG[p] * V[m, f]
    ->  SV = sum[m] S*V;  VS = sum[m] V;  O = SV / SIG - MU * VS / SIG

Both apply only where a factor that leaves the sum reads a *late* tensor (one that exists
only after a full traversal of the summed rank): that is the read-read dependency they
remove. Elementwise tensors between the reduction and the sum are inlined into the sum
first (A above). The step's identity, body = sum_j outside_j * inside_j, is proved by
sympy before the rewrite is returned.

Absent points. Moving a factor out of a sum changes what an empty sum (every term
absent, a fully masked row) gives: 0 before, outside * 0 after, which is NaN when the
outside factor is infinite (1/SD with SD = 0). Where the sum can lose terms the result
is written `where(N == 0, 0, outside * N)`: equal whenever the outside factor is finite,
and the identity 0 for an empty sum; a factor that may itself be absent (it decides
the point, empty or not) then stays inside the sum. Separable moments need every term to carry the
same absent points; where a term would lose them (a count term `sum[m] 1` under a mask)
the rule reports itself blocked instead.
"""

from __future__ import annotations

import sympy

from ..analysis.passes import fully_reduces, rank_variables
from ..analysis.presence import (absent_tensors, einsum_conditions, expression_conditions,
                                 in_range_by_construction, point_conditions)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from .algebra import Algebra, NotAlgebraic, is_zero, prove_equal, substitute, replace_reads
from .edit import assemble, fixed_point, fresh_name, late_tensors, with_body
from .steps import Blocked, Step

FACTOR = "factor out of a sum"
MOMENTS = "separable moments"


def factor_sums(cascade: Cascade) -> tuple[Cascade, list[Step], list[Blocked]]:
    """Apply rules 1 and 2 wherever they remove a read-read dependency, to a fixed point."""
    return fixed_point(cascade, _rewrite_sum, 4 * len(cascade.einsums) + 4)


def _late_for(cascade: Cascade, einsum: Einsum) -> set[str]:
    """Late tensors with respect to the ranks this sum fully reduces."""
    late: set[str] = set()
    for rank in cascade.ranks:
        if cascade.ranks[rank].split_of is None and \
                fully_reduces(einsum, rank_variables(cascade, rank)):
            late |= late_tensors(cascade, rank)
    return late


def _inlinable(cascade: Cascade, name: str) -> bool:
    """An elementwise intermediate (no reduction, recurrence or filter)."""
    tensor = cascade.tensors[name]
    if tensor.is_input:
        return False
    einsum = cascade.einsum(name)
    if einsum.reduce_op is not None or einsum.iterative is not None or \
            einsum.filter is not None:
        return False
    # A where's absence rule names its own variables: keep it whole.
    return not any(isinstance(n, ir.Op) and n.op == "where" for n in ir.walk(einsum.body))


def inline(cascade: Cascade, expr: ir.Expr, depth: int) -> ir.Expr:
    """Reads of elementwise intermediates replaced by their bodies, `depth` levels deep."""
    def expand(read: ir.Read):
        if depth == 0 or not _inlinable(cascade, read.tensor):
            return None
        # A read that may leave its tensor (T2[b + 1] at b = B - 1) is absent there, and
        # its producer's body is not: inlining would drop that absence, so it stays a read.
        if not all(in_range_by_construction(cascade, read.tensor, position, index)
                   for position, index in enumerate(read.indices)):
            return None
        producer = cascade.einsum(read.tensor)
        body = substitute(producer.body, dict(zip(producer.indices, read.indices)))
        return inline(cascade, body, depth - 1)
    return replace_reads(expr, expand)


def _flatten(expr: ir.Expr, numerator: list, denominator: list, inverted=False) -> None:
    """`a * b / c` -> numerator [a, b], denominator [c]."""
    if isinstance(expr, ir.Op) and expr.op == "*":
        for arg in expr.args:
            _flatten(arg, numerator, denominator, inverted)
    elif isinstance(expr, ir.Op) and expr.op == "/":
        _flatten(expr.args[0], numerator, denominator, inverted)
        _flatten(expr.args[1], numerator, denominator, not inverted)
    else:
        (denominator if inverted else numerator).append(expr)


def _ratio(numerator: list[ir.Expr], denominator: list[ir.Expr]) -> ir.Expr:
    top = ir.product(numerator)
    return ir.Op("/", (top, ir.product(denominator))) if denominator else top


def _rewrite_sum(cascade: Cascade, einsum: Einsum):
    if einsum.reduce_op != "sum" or einsum.iterative is not None:
        return None
    late = _late_for(cascade, einsum)
    if not late:
        return None
    reduced = set(einsum.reduced)

    def moves(expr: ir.Expr) -> bool:     # free of the summed variables
        return not set(ir.index_vars(expr)) & reduced

    def movable(expr: ir.Expr) -> set[str]:
        """Late tensors read at points free of the summed variables: what must leave."""
        return {r.tensor for r in ir.reads(expr) if r.tensor in late and moves(r)}

    # Inline as few levels as expose a late factor (A = SN / SD: one level; SN itself
    # stays a tensor, read inside the new sum).
    for depth in range(4):
        body = inline(cascade, einsum.body, depth)
        if movable(body):
            break
    else:
        return None
    rule = FACTOR
    absent = absent_tensors(cascade)
    numerator, denominator = [], []
    _flatten(body, numerator, denominator)
    outside_num = [f for f in numerator if moves(f)]
    outside_den = [f for f in denominator if moves(f)]
    inside_num = [f for f in numerator if not moves(f)]
    inside_den = [f for f in denominator if not moves(f)]
    inside = _ratio(inside_num, inside_den)
    if not movable(inside):
        outside = _ratio(outside_num, outside_den)
        groups = [(outside, inside)]
    else:
        rule = MOMENTS
        groups = _separate(einsum, body, late, reduced)
        if isinstance(groups, Blocked):
            return groups
    # Algebra may cancel a read (T1 - T1 is 0): where that read may be absent, its
    # absence removed every term it was in, and the rewritten sum would have them.
    kept = {r for outside, inner in groups for r in ir.reads(outside) + ir.reads(inner)}
    lost = sorted({ir.to_text(r) for r in ir.reads(body)
                   if r not in kept and expression_conditions(cascade, r, absent)})
    if lost:
        return Blocked(rule, einsum.tensor,
                       f"{', '.join(lost)} may be absent and cancels in the algebra: the "
                       f"terms its absence removes would come back")
    for outside, _ in groups:
        for read in ir.reads(outside):
            if read.tensor in absent:
                return Blocked(rule, einsum.tensor,
                               f"{ir.to_text(read)} may be absent, so it cannot leave "
                               f"the sum (its absence removes terms, not the result)")
    conditions = einsum_conditions(cascade, einsum, absent)
    may_be_empty = any(c.variables & reduced for c in conditions if c.kind != "split")
    if may_be_empty:
        # The guard below makes an empty sum a present 0; the spec's point is absent
        # where a factor that moves out is (T2[p - P // 2] out of range at p = 0 decides
        # the left point, whether or not any term is left).
        for outside, _ in groups:
            if expression_conditions(cascade, outside, absent):
                return Blocked(rule, einsum.tensor,
                               f"{ir.to_text(outside)} may be absent where every term "
                               f"is, and moving it out of the sum would make that "
                               f"point present")
    if len(groups) > 1 and may_be_empty:
        carried = [r for r in ir.reads(body) if expression_conditions(cascade, r, absent)
                   and set(ir.index_vars(r)) & reduced]
        points = {r: _carried_points(cascade, r, absent) for r in carried}
        everywhere = frozenset().union(*(p for p in points.values() if p is not None))
        for _, inner in groups:
            mine = [points.get(r) for r in ir.reads(inner) if r in points]
            # A term keeps the body's terms if it reads every masked tensor, or if the
            # conditions its reads carry are the body's (S1 and S2 under one mask).
            same = None not in points.values() and \
                frozenset().union(*mine) == everywhere
            if not (set(carried) <= set(ir.reads(inner)) or same):
                return Blocked(MOMENTS, einsum.tensor,
                               f"the term sum[{', '.join(einsum.reduced)}] "
                               f"{ir.to_text(inner)} would not carry the absent points of "
                               f"{', '.join(sorted({r.tensor for r in carried}))}")

    # The new sums, one per distinct inside factor, and the recombination.
    taken: set[str] = set()
    new_einsums: list[Einsum] = []
    combined: ir.Expr | None = None
    for outside, inner in groups:
        name = _sum_name(cascade, einsum, inner, taken)
        taken.add(name)
        kept = set(ir.index_vars(inner)) | set(
            ir.index_vars(einsum.filter) if einsum.filter is not None else ())
        indices = tuple(v for v in einsum.indices if v in kept)
        new_einsums.append(Einsum(name, indices, inner, "sum", einsum.reduced,
                                  einsum.filter, explicit_reduction=True))
        partial = ir.Read(name, tuple(ir.Index(v) for v in indices))
        term = partial if outside == ir.Const(1.0) else _scale(outside, partial)
        if may_be_empty:
            term = ir.Op("where", (ir.Op("==", (partial, ir.Const(0.0))), ir.Const(0.0),
                                   term))
        combined = term if combined is None else ir.Op("+", (combined, term))
    assert combined is not None
    expected = None
    for outside, inner in groups:
        piece = ir.Op("*", (outside, inner))
        expected = piece if expected is None else ir.Op("+", (expected, piece))
    if not prove_equal(body, expected):
        return Blocked(rule, einsum.tensor, "sympy could not prove the factored form equal")
    result = with_body(einsum, body=combined, reduce_op=None, reduced=(), filter=None,
                       explicit_reduction=False)
    einsums = []
    for existing in cascade.einsums:
        if existing.tensor == einsum.tensor:
            einsums.extend(new_einsums)
            einsums.append(result)
        else:
            einsums.append(existing)
    stopped = {name for level in range(depth + 1)
               for name in ir.tensors_read(inline(cascade, einsum.body, level))}
    new = assemble(cascade, einsums, removable=stopped)
    moved = sorted({r.tensor for o, _ in groups for r in ir.reads(o) if r.tensor in late})
    written = ", ".join(e.tensor for e in new_einsums)
    summary = (f"{', '.join(moved)} does not depend on "
               f"{', '.join(einsum.reduced)}: {written} sum{'s' if len(groups) > 1 else ''}"
               f" in the same pass, then {einsum.tensor} = {ir.to_text(combined)}")
    identity = f"{ir.to_text(body)} = {ir.to_text(expected)}"
    return new, Step(rule, summary, (*[e.tensor for e in new_einsums], einsum.tensor),
                     identity)


def _carried_points(cascade: Cascade, read: ir.Read, absent: set[str]):
    """The conditions, in the reader's coordinates, under which `read` is present: its
    own coordinates' ranges, and the point conditions (filters, ranges, splits) of the
    tensor it reads, followed through the reads that make that tensor absent, with each
    producer's variables replaced by the indices it is read at. None where a condition
    is of another kind (a where, a filter on values that may be absent): then no
    comparison is made."""
    found = set()
    for condition in expression_conditions(cascade, read, absent):
        if condition.kind == "range":
            found.add(condition.expr)
            continue
        if condition.kind != "absent":
            return None
        producer = cascade.einsum(condition.read.tensor)
        mapping = dict(zip(producer.indices, condition.read.indices))
        for point in point_conditions(producer, einsum_conditions(cascade, producer,
                                                                  absent)):
            if point.kind == "absent":
                inner = _carried_points(cascade, substitute(point.read, mapping), absent)
                if inner is None:
                    return None
                found |= inner
            elif point.kind in ("filter", "range", "split") and point.expr is not None \
                    and not any(point.parts):
                found.add(substitute(point.expr, mapping))
            else:
                return None
    return frozenset(found)


def _scale(outside: ir.Expr, partial: ir.Read) -> ir.Expr:
    """outside * partial, written as a division when outside is 1/x or a/x."""
    if isinstance(outside, ir.Op) and outside.op == "/":
        top, bottom = outside.args
        top = partial if top == ir.Const(1.0) else ir.Op("*", (top, partial))
        return ir.Op("/", (top, bottom))
    return ir.Op("*", (outside, partial))


def _separate(einsum: Einsum, body: ir.Expr, late: set[str], reduced: set[str]):
    """Expand the body into terms outside_j * inside_j (rule 2), grouped by inside."""
    algebra = Algebra()
    try:
        # Distribute products only: exp(a - g) must stay whole (splitting it into
        # exp(a) * exp(-g) would drop the max-shift that keeps exp in range).
        expanded = sympy.expand(algebra.to_sympy(body), power_exp=False, power_base=False,
                                log=False)
    except (TypeError, ValueError):
        return Blocked(MOMENTS, einsum.tensor, "the body does not expand")
    groups: dict[sympy.Expr, sympy.Expr] = {}
    for term in sympy.Add.make_args(expanded):
        outside, inside = sympy.Integer(1), sympy.Integer(1)
        for factor in sympy.Mul.make_args(term):
            nodes = [algebra.nodes[s] for s in factor.free_symbols if s in algebra.nodes]
            dependent = any(set(ir.index_vars(n)) & reduced for n in nodes)
            is_late = any(isinstance(n, ir.Read) and n.tensor in late and
                          not set(ir.index_vars(n)) & reduced for n in nodes)
            if dependent and is_late:
                return Blocked(MOMENTS, einsum.tensor,
                               f"{_text(algebra, factor)} mixes the summed rank with a completed reduction: "
                               f"it is not a product of a factor of each")
            if dependent:
                inside *= factor
            else:
                outside *= factor
        groups[inside] = groups.get(inside, sympy.Integer(0)) + outside
    try:
        separated = [(algebra.to_ir(sympy.factor_terms(outside)), algebra.to_ir(inside))
                     for inside, outside in groups.items() if not is_zero(outside)]
    except NotAlgebraic as reason:
        return Blocked(MOMENTS, einsum.tensor, str(reason))
    if not separated:
        # T3[b, f] - T3[b, f]: zero for finite values, but NaN where T3 is infinite, so
        # the sum is left as written rather than replaced by 0.
        return Blocked(MOMENTS, einsum.tensor, f"its terms cancel when {ir.to_text(body)} "
                       f"is expanded: nothing to separate")
    return separated


def _text(algebra: Algebra, value: sympy.Expr) -> str:
    try:
        return ir.to_text(algebra.to_ir(value))
    except NotAlgebraic:
        return str(value)


def _sum_name(cascade: Cascade, einsum: Einsum, inner: ir.Expr, taken: set[str]) -> str:
    """Named after what it sums (SN * V -> SNV), else after the sum it came from."""
    parts = list(dict.fromkeys(ir.tensors_read(inner)))
    base = "".join(parts)
    if base in cascade.tensors:
        base = f"S{base}"   # the sum of one tensor: SV = sum[m] V
    if not parts or len(base) > 10:
        base = f"{einsum.tensor}{'C' if not parts else 'S'}"
    return fresh_name(cascade, base, taken)
