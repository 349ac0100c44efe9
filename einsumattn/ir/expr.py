"""Expressions of the Cascade IR: resolved, typed, immutable data.

Every name is resolved: an index variable is `Index`, the size of a rank used as a value
is `Dim`, a scalar parameter is `Param`, a tensor read is `Read`. Operators and functions
are one node type, `Op`, whose `op` names the operation. Nodes compare structurally (spans
are ignored), so rewrites can match and rebuild them freely.

Expressions are never turned into Python source and `eval`'d: every stage walks this data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Union

from ..diagnostics import Span

# Operation names, grouped by what they take and give.
ARITHMETIC = frozenset({"+", "-", "*", "/", "//", "%", "**", "neg"})
FUNCTIONS_1 = frozenset({"exp", "log", "sqrt", "tanh", "sigmoid", "relu", "elu", "abs",
                         "sign"})
FUNCTIONS_2 = frozenset({"max", "min"})
COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
BOOLEAN = frozenset({"and", "or", "not"})
# `where(cond, a, b)` is the one conditional.
CONDITIONAL = frozenset({"where"})

# Identity of each reduction: the value of a reduction over no present point.
REDUCTION_IDENTITY = {"sum": 0.0, "max": -math.inf, "min": math.inf}


@dataclass(frozen=True)
class Const:
    value: float | int
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Index:
    """The value of an index variable at the current point (`p - m`)."""
    var: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Dim:
    """The size of a rank used as a value (`1 / sqrt(E)`, the final position `M1`)."""
    rank: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Param:
    name: str
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Read:
    """`T[i0, i1, ...]`: tensor T at integer coordinates given by affine index expressions.
    A coordinate outside T's extent makes the read absent."""
    tensor: str
    indices: tuple["Expr", ...]
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Op:
    op: str
    args: tuple["Expr", ...]
    span: Span | None = field(default=None, compare=False, repr=False)


Expr = Union[Const, Index, Dim, Param, Read, Op]


def is_boolean(expr: Expr) -> bool:
    """Whether an expression is a condition (comparison or boolean operation)."""
    return isinstance(expr, Op) and (expr.op in COMPARISONS or expr.op in BOOLEAN)


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Read):
        return expr.indices
    if isinstance(expr, Op):
        return expr.args
    return ()


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of an expression, parents before children (iterative, no recursion)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def index_vars(expr: Expr) -> list[str]:
    """Index variables of an expression, in order of first appearance."""
    seen: dict[str, None] = {}
    for node in walk(expr):
        if isinstance(node, Index):
            seen.setdefault(node.var, None)
    return list(seen)


def conjuncts(expr: Expr | None) -> list[Expr]:
    """`a and b and c` -> [a, b, c] (a filter's separate conditions); None -> []."""
    if expr is None:
        return []
    if isinstance(expr, Op) and expr.op == "and":
        return conjuncts(expr.args[0]) + conjuncts(expr.args[1])
    return [expr]


def reads(expr: Expr) -> list[Read]:
    return [node for node in walk(expr) if isinstance(node, Read)]


def tensors_read(expr: Expr) -> list[str]:
    seen: dict[str, None] = {}
    for node in reads(expr):
        seen.setdefault(node.tensor, None)
    return list(seen)


def to_text(expr: Expr) -> str:
    """Spec-language text of an expression (fully parenthesised where precedence needs it).
    Used in reports and in printing rewritten cascades."""
    return _text(expr, 0)


# Binding strength, as in Python: higher binds tighter.
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4,
               "!=": 4, "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "neg": 7, "**": 8}


def _text(expr: Expr, context: int) -> str:
    if isinstance(expr, Const):
        value = expr.value
        if value == math.inf:
            text = "inf"
        elif value == -math.inf:
            text = "-inf"
        elif isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            text = f"{value:.1f}"
        else:
            text = repr(value)
        return f"({text})" if text.startswith("-") and context > 5 else text
    if isinstance(expr, Index):
        return expr.var
    if isinstance(expr, Dim):
        return expr.rank
    if isinstance(expr, Param):
        return expr.name
    if isinstance(expr, Read):
        if not expr.indices:
            return expr.tensor
        return f"{expr.tensor}[{', '.join(_text(i, 0) for i in expr.indices)}]"
    assert isinstance(expr, Op)
    op, args = expr.op, expr.args
    if op in _PRECEDENCE:
        mine = _PRECEDENCE[op]
        if op == "neg":
            text = f"-{_text(args[0], mine)}"
        elif op == "not":
            text = f"not {_text(args[0], mine)}"
        elif op == "**":
            # Right-associative: the left operand needs parentheses at equal strength.
            text = f"{_text(args[0], mine + 1)} ** {_text(args[1], mine)}"
        else:
            text = f"{_text(args[0], mine)} {op} {_text(args[1], mine + 1)}"
        return f"({text})" if mine < context or (mine == context and op == "**") else text
    return f"{op}({', '.join(_text(a, 0) for a in args)})"
