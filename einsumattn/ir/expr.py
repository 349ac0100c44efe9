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
                         "sign",
                         # version 1.1 (LANGUAGE.md)
                         "softplus", "logsigmoid", "log1p", "expm1", "silu", "erf"})
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


def conjunction(conditions: list[Expr]) -> Expr | None:
    """`a and b and c` from [a, b, c] (the inverse of `conjuncts`); None for none."""
    result = None
    for condition in conditions:
        result = condition if result is None else Op("and", (result, condition))
    return result


def product_factors(expr: Expr) -> list[Expr]:
    """`a * b * c` -> [a, b, c]: the factors of a product (an expression is its own
    single factor)."""
    if isinstance(expr, Op) and expr.op == "*":
        return product_factors(expr.args[0]) + product_factors(expr.args[1])
    return [expr]


def product(factors: list[Expr]) -> Expr:
    """[a, b, c] -> `a * b * c` (the inverse of `product_factors`); 1.0 for none."""
    result = factors[0] if factors else Const(1.0)
    for factor in factors[1:]:
        result = Op("*", (result, factor))
    return result


def total(terms: list[Expr]) -> Expr:
    """[a, b, c] -> `a + b + c` (at least one term)."""
    result = terms[0]
    for term in terms[1:]:
        result = Op("+", (result, term))
    return result


def reads(expr: Expr) -> list[Read]:
    return [node for node in walk(expr) if isinstance(node, Read)]


def tensors_read(expr: Expr) -> list[str]:
    seen: dict[str, None] = {}
    for node in reads(expr):
        seen.setdefault(node.tensor, None)
    return list(seen)


def to_text(expr: Expr) -> str:
    """Spec-language text of an expression (parenthesised where precedence needs it).
    Used in reports, diagnostics and printing rewritten cascades."""
    return SpecPrinter()(expr)


# Python's binding strengths; higher binds tighter.
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4,
               "!=": 4, "|": 5, "&": 6, "+": 7, "-": 7, "*": 8, "/": 8, "//": 8, "%": 8,
               "neg": 9, "~": 9, "**": 10}


class Printer:
    """Prints an expression; subclasses name leaves and functions for their target."""

    def __init__(self, names: dict[str, str] | None = None):
        # Names for index variables, dims, params and tensor reads in the target code.
        self.names = names or {}

    def __call__(self, expr: Expr) -> str:
        return self.print(expr, 0)

    def operand(self, expr: Expr, op: str) -> str:
        """`expr` printed to stand on either side of the binary operator `op`. Code that
        puts printed text next to an operator asks for it here: pasting the text
        printed for no context (`call + " * " + printer(x)`) drops parentheses that
        `x = S + 1` needs."""
        return self.print(expr, _PRECEDENCE[op] + 1)

    # -- hooks -----------------------------------------------------------------
    def const(self, value) -> str:
        if value == math.inf:
            return "math.inf"
        if value == -math.inf:
            return "-math.inf"
        return repr(value)

    def index(self, node: Index) -> str:
        return self.names.get(node.var, node.var)

    def dim(self, node: Dim) -> str:
        return self.names.get(node.rank, node.rank)

    def param(self, node: Param) -> str:
        return self.names.get(node.name, node.name)

    def read(self, node: Read) -> str:
        raise NotImplementedError(f"{type(self).__name__} cannot read tensors")

    def function(self, op: str, args: list[str]) -> str:
        raise NotImplementedError(op)

    def boolean(self, op: str, expr: Op) -> str:
        """How `and`/`or`/`not` are spelled at `expr` (words for Python, & | ~ for
        tensors)."""
        return op

    # -- structure ---------------------------------------------------------------
    def print(self, expr: Expr, context: int) -> str:
        if isinstance(expr, Const):
            text = self.const(expr.value)
            return f"({text})" if text.startswith("-") and context > _PRECEDENCE["+"] else text
        if isinstance(expr, Index):
            return self.index(expr)
        if isinstance(expr, Dim):
            return self.dim(expr)
        if isinstance(expr, Param):
            return self.param(expr)
        if isinstance(expr, Read):
            return self.read(expr)
        assert isinstance(expr, Op)
        op, args = expr.op, expr.args
        if op in ("and", "or", "not"):
            op = self.boolean(op, expr)
        if op == "neg" or op in ("not", "~"):
            strength = _PRECEDENCE[op]
            sign = {"neg": "-", "not": "not ", "~": "~"}[op]
            return self._wrap(f"{sign}{self.print(args[0], strength)}", strength, context)
        if op in _PRECEDENCE:
            strength = _PRECEDENCE[op]
            if op == "**":
                text = f"{self.print(args[0], strength + 1)} ** {self.print(args[1], strength)}"
            else:
                # Comparisons chain in Python: parenthesise a comparison operand.
                right = strength + 1
                left = strength + 1 if strength == _PRECEDENCE["<"] else strength
                text = f"{self.print(args[0], left)} {op} {self.print(args[1], right)}"
            return self._wrap(text, strength, context)
        return self.function(op, [self.print(a, 0) for a in args])

    @staticmethod
    def _wrap(text: str, strength: int, context: int) -> str:
        return f"({text})" if strength < context else text


class SpecPrinter(Printer):
    """The `.attn` spelling: `inf`, words for `and`/`or`/`not`, the spec's function names,
    reads as `T[i, j]`. Its output parses back to the same expression."""

    def const(self, value) -> str:
        if value == math.inf:
            return "inf"
        if value == -math.inf:
            return "-inf"
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return f"{value:.1f}"
        return repr(value)

    def read(self, node: Read) -> str:
        if not node.indices:
            return node.tensor
        return f"{node.tensor}[{', '.join(self(i) for i in node.indices)}]"

    def function(self, op: str, args: list[str]) -> str:
        return f"{op}({', '.join(args)})"
