"""The syntax tree of a `.attn` spec, exactly as written, with a source span on every node.

Nothing here is resolved or checked: names are strings, and whether `m` is an index
variable or `E` a dim is decided when the IR is built (`einsumattn.ir.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..diagnostics import Source, Span


# ----------------------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Number:
    """A numeric literal: `2`, `0.5`, `1e-6`."""
    value: float | int
    span: Span


@dataclass(frozen=True)
class Inf:
    """`inf`, the float infinity (`-inf` is a Unary minus of it)."""
    span: Span


@dataclass(frozen=True)
class Name:
    """A bare name used as a value: an index variable, dim, param or scalar tensor."""
    id: str
    span: Span


@dataclass(frozen=True)
class Access:
    """`T[i, j, ...]`: a read of tensor T at the given coordinates."""
    tensor: str
    indices: tuple["Expr", ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Call:
    """`f(a, ...)`: a call of a built-in function (`exp`, `max`, `where`, ...)."""
    func: str
    args: tuple["Expr", ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Unary:
    """`-x` or `+x`."""
    op: str  # '-' or '+'
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Binary:
    """`a op b` for an arithmetic operator."""
    op: str  # + - * / // % **
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Compare:
    """`a op b` for a comparison, as in a filter `where m <= p`."""
    op: str  # < <= > >= == !=
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class BoolOp:
    """`a and b`, `a or b`."""
    op: str  # 'and' | 'or'
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Not:
    """`not a`."""
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Reduce:
    """`sum[m, e] body`: an explicit reduction. Legal only as the whole right-hand side."""
    op: str  # 'sum' | 'max' | 'min'
    variables: tuple[Name, ...]
    body: "Expr"
    span: Span


Expr = Union[Number, Inf, Name, Access, Call, Unary, Binary, Compare, BoolOp, Not, Reduce]


# ----------------------------------------------------------------------------- statements

@dataclass(frozen=True)
class Lhs:
    """The left side of an Einsum or init: a tensor name and its index expressions."""
    tensor: str
    indices: tuple[Expr, ...] | None  # None for a scalar written without brackets
    span: Span
    name_span: Span


@dataclass(frozen=True)
class AttentionStmt:
    """`attention NAME`: the cascade's name."""
    name: str
    span: Span


@dataclass(frozen=True)
class DimDecl:
    """One dim of a `dims` statement: `E`, `E = 64` (`size`, a fixed size written as an
    integer literal) or `P = M`, `G = H // KH` (`expr`, a size computed from other dims:
    integers, names, `+ - * // / %` and unary signs as written; the IR builder checks
    it). At most one of `size` and `expr` is set."""
    name: str
    size: int | None
    span: Span
    expr: "Expr | None" = None


@dataclass(frozen=True)
class DimsStmt:
    """`dims P, M, E = 64, ...`."""
    dims: tuple[DimDecl, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    """One tensor of an `input` statement, with its index variables."""
    name: str
    indices: tuple[Expr, ...] | None  # None for a scalar input
    span: Span
    name_span: Span


@dataclass(frozen=True)
class InputStmt:
    """`input Q[p, e], K[m, e], ...`."""
    inputs: tuple[InputDecl, ...]
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    """`param NAME` or `param NAME = default`."""
    name: str
    default: Expr | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class SplitStmt:
    """`split PARENT -> OUTER, INNER by FACTOR`, with a span for each part."""
    parent: str
    outer: str
    inner: str
    factor: int | str  # an integer, or the name of a dim or param
    span: Span
    parent_span: Span
    outer_span: Span
    inner_span: Span
    factor_span: Span


@dataclass(frozen=True)
class EinsumStmt:
    """`LHS = RHS` or `LHS = RHS where FILTER`: one Einsum."""
    lhs: Lhs
    rhs: Expr
    filter: Expr | None
    span: Span


@dataclass(frozen=True)
class InitStmt:
    """`init LHS = VALUE`: the starting value of an iterative tensor."""
    lhs: Lhs
    value: Expr
    span: Span


@dataclass(frozen=True)
class OutputStmt:
    """`output A, B`: the tensors the cascade returns."""
    names: tuple[tuple[str, Span], ...]
    span: Span


Statement = Union[AttentionStmt, DimsStmt, InputStmt, ParamStmt, SplitStmt, EinsumStmt,
                  InitStmt, OutputStmt]


@dataclass(frozen=True)
class Spec:
    """A whole spec: its statements in order, and the source they were parsed from."""
    statements: tuple[Statement, ...]
    source: Source = field(compare=False)


def children(node: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of an expression node."""
    if isinstance(node, (Access,)):
        return node.indices
    if isinstance(node, Call):
        return node.args
    if isinstance(node, (Unary, Not)):
        return (node.operand,)
    if isinstance(node, (Binary, Compare, BoolOp)):
        return (node.left, node.right)
    if isinstance(node, Reduce):
        return (node.body,)
    return ()
