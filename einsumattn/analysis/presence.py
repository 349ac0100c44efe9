"""Where values can be absent: the static form of docs/language.md section 2.8.

For each Einsum, the conditions under which a point of its iteration space is present,
each with the index variables it depends on; and the set of tensors that may hold
absent points at all. Code generators emit masks from these conditions: a condition that
involves no reduced variable decides whether the left-side point exists, one that
involves a reduced variable only removes that term from the reduction.

The oracle (`evaluate.py`) computes the same thing dynamically and independently; the
equivalence tests hold the two together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.intervals import interval, provably, provably_positive
from ..ir.memo import per_cascade


@dataclass(frozen=True)
class Condition:
    """One condition for a point to be present.

    kind 'filter': `expr` (a conjunct of the filter) must hold.
    kind 'range':  `expr` is `0 <= index < extent` for one coordinate of a read.
    kind 'split':  `expr` is `m1*M0 + m0 < M` for a split with both parts in the space.
    kind 'absent': the tensor read by `read` must be present at the point it reads.
    kind 'where':  `where(c, a, b)` (`expr`) needs c and the branch it picks; `parts`
                   holds the conditions of c, a and b.
    """

    kind: str
    variables: frozenset
    expr: ir.Expr | None = None
    read: ir.Read | None = None
    parts: tuple[tuple["Condition", ...], ...] = ()


def in_range_by_construction(cascade: Cascade, tensor: str, position: int,
                              index: ir.Expr) -> bool:
    """A coordinate that cannot leave the extent: the plain variable of the position's
    rank; for a recurrence's iterative position also x+1 and the final position X; and
    any coordinate whose range over its variables' ranks provably lies inside the extent,
    as GQA's kv head `h * KH // H` (0 <= h < H gives 0 <= h * KH // H <= (H-1) KH / H < KH,
    for every size)."""
    t = cascade.tensors[tensor]
    rank = t.ranks[position]
    if isinstance(index, ir.Index) and cascade.var_rank(index.var) == rank:
        return True
    if t.iterative == position:
        var = cascade.ranks[rank].var
        if index == ir.Op("+", (ir.Index(var), ir.Const(1))) or index == ir.Dim(rank) \
                or index == ir.Const(0):
            return True
    return _provably_inside(index, _leaf_sizes(cascade, index),
                            cascade.extent(tensor, position))


def _leaf_sizes(cascade: Cascade, index: ir.Expr) -> tuple:
    """The sizes the bounds of `index` depend on: (('var', v), size of v's rank) and
    (('dim', R), size of R) for each index variable and dim it holds. With the index and
    the extent, they decide the proof, so they key its cache."""
    found = {}
    for node in ir.walk(index):
        if isinstance(node, ir.Index):
            found[("var", node.var)] = cascade.ranks[cascade.var_rank(node.var)].size
        elif isinstance(node, ir.Dim):
            found[("dim", node.rank)] = cascade.ranks[node.rank].size
    return tuple(found.items())


# The same coordinate is asked about for every sub-cascade the fused schedule tries (a
# few thousand times for a spec from a paper), and a proof costs a sympy simplify; the
# answer depends on the index, the sizes and the extent alone.
@functools.lru_cache(maxsize=4096)
def _provably_inside(index: ir.Expr, sizes: tuple, extent: sympy.Expr) -> bool:
    """Whether `0 <= index < extent` for every point and every size >= 1."""
    bounds = _interval(dict(sizes), index)
    if bounds is None:
        return False
    low, high = bounds
    # The coordinate is an integer <= high, so high < extent keeps it below the extent.
    return provably(low >= 0) and provably_positive(extent - high)


def _interval(sizes: dict, expr: ir.Expr):
    """(low, high): sympy bounds of an integer index expression over every point of its
    variables' ranks, for sizes >= 1; None where no such bound is derived (anything but
    +, -, products of nonnegative factors, and floor division by a positive size).
    `sizes` maps ('var', v) and ('dim', R) to sizes (`_leaf_sizes`)."""

    def leaf(node: ir.Expr):
        if isinstance(node, ir.Const):
            if isinstance(node.value, float) and not node.value.is_integer():
                return None
            return sympy.Integer(int(node.value)), sympy.Integer(int(node.value))
        if isinstance(node, ir.Index):
            return sympy.Integer(0), sizes[("var", node.var)] - 1
        if isinstance(node, ir.Dim):
            size = sizes[("dim", node.rank)]
            return size, size
        return None

    return interval(expr, leaf)


def extent_expr(cascade: Cascade, tensor: str, position: int) -> ir.Expr:
    t = cascade.tensors[tensor]
    size = ir.Dim(t.ranks[position])
    return ir.Op("+", (size, ir.Const(1))) if t.iterative == position else size


def expression_conditions(cascade: Cascade, expr: ir.Expr,
                          absent: set[str]) -> list[Condition]:
    """The conditions for an expression's value to be present."""
    if isinstance(expr, ir.Read):
        found = []
        for position, index in enumerate(expr.indices):
            if in_range_by_construction(cascade, expr.tensor, position, index):
                continue
            bound = ir.Op("and", (ir.Op("<=", (ir.Const(0), index)),
                                  ir.Op("<", (index, extent_expr(cascade, expr.tensor,
                                                                 position)))))
            found.append(Condition("range", frozenset(ir.index_vars(index)), bound))
        if expr.tensor in absent:
            found.append(Condition("absent", frozenset(ir.index_vars(expr)), read=expr))
        return found
    if isinstance(expr, ir.Op) and expr.op == "where":
        parts = tuple(tuple(expression_conditions(cascade, a, absent)) for a in expr.args)
        if not any(parts[1:]) and not parts[0]:
            return []
        # Every index variable written in the where(...), as the oracle does.
        return [Condition("where", frozenset(ir.index_vars(expr)), expr, parts=parts)]
    if isinstance(expr, ir.Op):
        return [c for arg in expr.args for c in expression_conditions(cascade, arg, absent)]
    return []


def einsum_conditions(cascade: Cascade, einsum: Einsum, absent: set[str],
                      variables: tuple[str, ...] | None = None) -> list[Condition]:
    """Every condition for a point of the Einsum's iteration space to be present."""
    variables = None if variables is None else tuple(variables)
    return list(_einsum_conditions(cascade, einsum, frozenset(absent), variables))


@per_cascade
def _einsum_conditions(cascade: Cascade, einsum: Einsum, absent: frozenset[str],
                       variables: tuple[str, ...] | None) -> tuple[Condition, ...]:
    space = set(einsum.variables if variables is None else variables)
    found = expression_conditions(cascade, einsum.body, absent)
    for conjunct in ir.conjuncts(einsum.filter):
        inner = expression_conditions(cascade, conjunct, absent)
        found.append(Condition("filter", frozenset(ir.index_vars(conjunct)).union(
            *(c.variables for c in inner)), conjunct, parts=(tuple(inner),)))
    for split in cascade.splits:
        outer, inner = cascade.ranks[split.outer].var, cascade.ranks[split.inner].var
        if outer in space and inner in space:
            position = ir.Op("+", (ir.Op("*", (ir.Index(outer), ir.Dim(split.inner))),
                                   ir.Index(inner)))
            found.append(Condition("split", frozenset({outer, inner}),
                                   ir.Op("<", (position, ir.Dim(split.parent)))))
    return tuple(found)


def point_conditions(einsum: Einsum, conditions: list[Condition]) -> list[Condition]:
    """Those that decide whether the left-side point exists (no reduced variable)."""
    return [c for c in conditions if not c.variables & set(einsum.reduced)]


def absent_tensors(cascade: Cascade) -> set[str]:
    """Tensors that may hold absent points (inputs never do)."""
    return set(_absent_tensors(cascade))


@per_cascade
def _absent_tensors(cascade: Cascade) -> frozenset[str]:
    absent: set[str] = set()
    for einsum in cascade.einsums:
        conditions = einsum_conditions(cascade, einsum, absent)
        if point_conditions(einsum, conditions):
            absent.add(einsum.tensor)
        elif einsum.init is not None and expression_conditions(cascade, einsum.init, absent):
            absent.add(einsum.tensor)
    return frozenset(absent)


@per_cascade
def presence_key(cascade: Cascade, tensor: str) -> frozenset | None:
    """Where `tensor`'s points are present, in a canonical form: the conditions of its
    Einsum that decide a point, with each read of a tensor that may be absent replaced
    by that tensor's own key. An index variable names one rank in a cascade, so two
    tensors over the same ranks with equal keys are present at the same points (a sum of
    the two may be written with `+`, which is absent where either term is). Empty:
    present everywhere. None where this does not say: a `where` whose branches may be
    absent, a read of an absent tensor at other coordinates than its own variables, a
    recurrence."""
    absent = _absent_tensors(cascade)
    if tensor not in absent:
        return frozenset()
    einsum = cascade.einsum(tensor)
    if einsum.init is not None:
        return None
    return _conditions_key(cascade, point_conditions(
        einsum, einsum_conditions(cascade, einsum, set(absent))))


def _conditions_key(cascade: Cascade, conditions) -> frozenset | None:
    key: set = set()
    for condition in conditions:
        if condition.kind == "absent":
            read = condition.read
            ranks = cascade.tensors[read.tensor].ranks
            if not all(isinstance(index, ir.Index) and cascade.var_rank(index.var) == rank
                       for index, rank in zip(read.indices, ranks)):
                return None
            inner = presence_key(cascade, read.tensor)
        elif condition.kind == "where":
            # Branches that are always present: the condition's own presence decides.
            inner = None if any(condition.parts[1:]) else \
                _conditions_key(cascade, condition.parts[0])
        elif condition.kind == "filter":
            inner = _conditions_key(cascade, condition.parts[0])
            inner = None if inner is None else inner | {("filter", condition.expr)}
        else:
            inner = frozenset({(condition.kind, condition.expr)})
        if inner is None:
            return None
        key |= inner
    return frozenset(key)
