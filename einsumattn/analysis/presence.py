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

from dataclasses import dataclass

import sympy

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.intervals import interval, provably


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
    bounds = _interval(cascade, index)
    if bounds is None:
        return False
    low, high = bounds
    extent = cascade.extent(tensor, position)
    # The coordinate is an integer <= high, so high < extent keeps it below the extent.
    return provably(low >= 0) and provably(sympy.simplify(extent - high) > 0)


def _interval(cascade: Cascade, expr: ir.Expr):
    """(low, high): sympy bounds of an integer index expression over every point of its
    variables' ranks, for sizes >= 1; None where no such bound is derived (anything but
    +, -, products of nonnegative factors, and floor division by a positive size)."""

    def leaf(node: ir.Expr):
        if isinstance(node, ir.Const):
            if isinstance(node.value, float) and not node.value.is_integer():
                return None
            return sympy.Integer(int(node.value)), sympy.Integer(int(node.value))
        if isinstance(node, ir.Index):
            size = cascade.ranks[cascade.var_rank(node.var)].size
            return sympy.Integer(0), size - 1
        if isinstance(node, ir.Dim):
            size = cascade.ranks[node.rank].size
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
    return found


def point_conditions(einsum: Einsum, conditions: list[Condition]) -> list[Condition]:
    """Those that decide whether the left-side point exists (no reduced variable)."""
    return [c for c in conditions if not c.variables & set(einsum.reduced)]


def absent_tensors(cascade: Cascade) -> set[str]:
    """Tensors that may hold absent points (inputs never do)."""
    absent: set[str] = set()
    for einsum in cascade.einsums:
        conditions = einsum_conditions(cascade, einsum, absent)
        if point_conditions(einsum, conditions):
            absent.add(einsum.tensor)
        elif einsum.init is not None and expression_conditions(cascade, einsum.init, absent):
            absent.add(einsum.tensor)
    return absent
