"""Warnings about a checked cascade: Einsums that are valid but probably do not mean what
they say (docs/language.md, "Warnings").

One rule so far, the implicit reduction of a non-linear function. An Einsum without
`sum[...]` sums its whole right-hand side over its right-only variables, so
`B[p, m] = sigmoid(Q[p, e] * K[m, e])` sums sigmoid over e; what is usually meant is
sigmoid of the sum. Precisely, an Einsum warns when

- its reduction is implicit (`explicit_reduction` is False) and `reduced` is not empty,
- and its body, walked from the root through `+`, `-`, `*`, unary minus and the
  numerator of `/` only, reaches any other node (a function call such as sigmoid, exp,
  max or where; a `**`, `//` or `%`; the denominator of a `/`) whose subtree mentions a
  reduced variable (inside a tensor index too).

Reads, constants, index variables, dims and params end the walk: a product or sum of
reads (`Q[p, e] * K[m, e] * scale`) never warns. An Einsum warns at most once, at the
first such node in the text; writing the reduction explicitly (`sum[e] ...`) silences
it. The filter is not looked at: it restricts the iteration space, it is not summed.
"""

from __future__ import annotations

from ..diagnostics import SpecWarning
from .cascade import Cascade, Einsum
from .expr import Expr, Index, Op, Read, is_boolean, to_text, walk

# The nodes an implicit sum distributes over: the walk continues through them.
_LINEAR = frozenset({"+", "-", "*", "neg"})

# Longer right-hand sides are elided in the hint's explicit form.
_SHOWN_BODY = 48


def lint(cascade: Cascade) -> list[SpecWarning]:
    """The warnings about `cascade`, in the order of the text."""
    found = []
    for einsum in cascade.einsums:
        warning = _implicit_reduction_of_function(cascade, einsum)
        if warning is not None:
            found.append(warning)
    return sorted(found, key=lambda w: (w.span.line, w.span.column) if w.span else (0, 0))


def _implicit_reduction_of_function(cascade: Cascade, einsum: Einsum) -> SpecWarning | None:
    if einsum.explicit_reduction or not einsum.reduced:
        return None
    found = _first_nonlinear(einsum.body, set(einsum.reduced))
    if found is None:
        return None
    node, is_denominator = found
    summed = [v for v in einsum.reduced if _mentions(node, {v})]
    over = " and ".join(summed)
    what = _describe(node, is_denominator)
    lhs = _access_text(einsum.tensor, einsum.indices, einsum.iterative)
    body = to_text(einsum.body)
    shown = body if len(body) <= _SHOWN_BODY else "..."
    explicit = f"{lhs} = sum[{', '.join(einsum.reduced)}] {shown}"
    if einsum.filter is not None:
        explicit += " where ..."
    first = _define_first(cascade, einsum, node, is_denominator)
    hint = (f"to sum {what} over {over} as written, say so: {explicit}, which silences this "
            f"warning")
    if first is not None:
        hint = f"{first}; {hint}"
    return SpecWarning(f"{einsum.tensor} sums {what} over {over} (the implicit reduction "
                       f"covers the whole right-hand side)", node.span, hint,
                       cascade.source)


def _first_nonlinear(body: Expr, reduced: set[str]) -> tuple[Expr, bool] | None:
    """The first node, in source order, that the walk through the linear nodes reaches
    and that mentions a reduced variable; and whether it is a denominator."""
    stack: list[tuple[Expr, bool]] = [(body, False)]
    while stack:
        node, is_denominator = stack.pop()
        if isinstance(node, Op) and node.op in _LINEAR and not is_denominator:
            stack.extend((arg, False) for arg in reversed(node.args))
        elif isinstance(node, Op) and node.op == "/" and not is_denominator:
            stack.append((node.args[1], True))
            stack.append((node.args[0], False))
        elif (is_denominator or isinstance(node, Op)) and _mentions(node, reduced):
            return node, is_denominator
    return None


def _mentions(expr: Expr, variables: set[str]) -> bool:
    return any(isinstance(n, Index) and n.var in variables for n in walk(expr))


def _describe(node: Expr, is_denominator: bool) -> str:
    """What is summed, in words: `sigmoid(...)`, `X[p, e] ** 2`, `a quotient by D[m]`."""
    if is_denominator:
        return f"a quotient by {_short(node)}"
    assert isinstance(node, Op)
    if node.op in ("**", "//", "%"):
        return _short(node)
    return f"{node.op}(...)"


def _applied(node: Expr, is_denominator: bool) -> str:
    """The operation taken of the sum in the first way out: `apply sigmoid to`."""
    if is_denominator:
        return "divide by"
    assert isinstance(node, Op)
    if node.op in ("**", "//", "%"):
        return f"apply '{node.op}' to"
    return f"apply {node.op} to"


def _short(node: Expr) -> str:
    text = to_text(node)
    return text if len(text) <= 32 else "(...)"


def _access_text(tensor: str, indices: tuple[str, ...], iterative: int | None = None) -> str:
    if not indices:
        return tensor
    shown = [f"{v}+1" if i == iterative else v for i, v in enumerate(indices)]
    return f"{tensor}[{', '.join(shown)}]"


def _define_first(cascade: Cascade, einsum: Einsum, node: Expr,
                  is_denominator: bool) -> str | None:
    """The first way out: sum the argument first, in an Einsum of its own. None where
    the argument reads no tensor (`m % 2`): there is no sum of data to take first."""
    reduced = set(einsum.reduced)
    if is_denominator:
        arguments = [node]
    else:
        assert isinstance(node, Op)
        arguments = [a for a in node.args if _mentions(a, reduced)]
    if len(arguments) != 1 or is_boolean(arguments[0]):
        return (f"to {_applied(node, is_denominator)} a sum, define the sum as a tensor of "
                f"its own first")
    argument = arguments[0]
    if not any(isinstance(n, Read) for n in walk(argument)):
        return None
    name = cascade.fresh_name("S")
    indices = tuple(v for v in einsum.indices if _mentions(argument, {v}))
    definition = f"{_access_text(name, indices)} = {to_text(argument)}"
    summed = Read(name, tuple(Index(v) for v in indices))
    if is_denominator:
        use = f"divide by {to_text(summed)}"
    else:
        args = tuple(summed if a is argument else a for a in node.args)
        use = f"write {to_text(Op(node.op, args))}"
    return f"to {_applied(node, is_denominator)} the sum, define {definition} first and {use}"
