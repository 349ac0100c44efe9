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
    value: float | int
    span: Span


@dataclass(frozen=True)
class Inf:
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
    func: str
    args: tuple["Expr", ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # '-' or '+'
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % **
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str  # < <= > >= == !=
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class BoolOp:
    op: str  # 'and' | 'or'
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Not:
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
    name: str
    span: Span


@dataclass(frozen=True)
class DimDecl:
    name: str
    size: int | None
    span: Span


@dataclass(frozen=True)
class DimsStmt:
    dims: tuple[DimDecl, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: str
    indices: tuple[Expr, ...] | None  # None for a scalar input
    span: Span
    name_span: Span


@dataclass(frozen=True)
class InputStmt:
    inputs: tuple[InputDecl, ...]
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    name: str
    default: Expr | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class SplitStmt:
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
    lhs: Lhs
    rhs: Expr
    filter: Expr | None
    span: Span


@dataclass(frozen=True)
class InitStmt:
    lhs: Lhs
    value: Expr
    span: Span


@dataclass(frozen=True)
class OutputStmt:
    names: tuple[tuple[str, Span], ...]
    span: Span


Statement = Union[AttentionStmt, DimsStmt, InputStmt, ParamStmt, SplitStmt, EinsumStmt,
                  InitStmt, OutputStmt]


@dataclass(frozen=True)
class Spec:
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
