"""Constant subexpressions (numbers and operators only), checked when a spec is loaded.

Generated code computes the parts of an expression that do not vary as plain Python
numbers, where integers are unbounded and float overflow raises, while the language
computes in floating point (LANGUAGE.md, "Numbers and types"). A constant such as
`2 ** 100`, `exp(1000)` or `1 / 0` would therefore compile and then fail on every call
(OverflowError, ZeroDivisionError). Each is a located error instead
(docs/language.md, section 3, "Numbers"):

- an integer step of integers (`+ - * // %`, unary minus, `**` with an exponent >= 0)
  must stay within +-2**53, where integers are exact in float64 too;
- any other step, computed in float64 as the oracle does, must not turn finite operands
  into inf or NaN.
"""

from __future__ import annotations

import math

from ..diagnostics import SpecError
from ..frontend.parser import MAX_EXACT_INTEGER
from . import expr as ir
from .semantics import apply


_INTEGER_OPS = frozenset({"+", "-", "*", "//", "%", "neg", "**"})


def check_constants(expr: ir.Expr) -> None:
    """Raise SpecError at the first constant step (innermost first) that leaves the
    exact integers or overflows float64."""
    values: dict[int, object] = {}
    for node in reversed(list(ir.walk(expr))):     # children before their parents
        if isinstance(node, ir.Const):
            values[id(node)] = node.value
        elif isinstance(node, ir.Op) and all(id(a) in values for a in node.args):
            values[id(node)] = _step(node, [values[id(a)] for a in node.args])


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _step(node: ir.Op, args: list):
    if node.op in _INTEGER_OPS and all(_is_integer(a) for a in args) and \
            not (node.op == "**" and args[1] < 0):
        return _integer_step(node, args)
    import numpy as np      # here only: most specs fold no float constant

    result = apply(node.op, [np.float64(a) if _is_integer(a) else a for a in args])
    # (Truth values count as the finite numbers 0 and 1.)
    if not np.isfinite(result) and all(np.isfinite(np.float64(a)) for a in args):
        raise _not_finite(node, args, float(result))
    return result


def _integer_step(node: ir.Op, args: list[int]) -> int:
    op = node.op
    if op in ("//", "%") and args[1] == 0:
        raise SpecError(f"the constant '{ir.to_text(node)}' divides by zero", node.span,
                        "write inf or -inf where infinity is meant")
    if op == "**" and abs(args[0]) > 1 and \
            args[1] * math.log2(abs(args[0])) > math.log2(MAX_EXACT_INTEGER) + 1:
        raise _too_large(node)   # decided before computing: 10 ** 10 ** 10 is huge
    result = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
              "//": lambda a, b: a // b, "%": lambda a, b: a % b,
              "**": lambda a, b: a ** b, "neg": lambda a: -a}[op](*args)
    if abs(result) > MAX_EXACT_INTEGER:
        raise _too_large(node)
    return result


def _too_large(node: ir.Op) -> SpecError:
    return SpecError(f"the integer constant '{ir.to_text(node)}' is larger than 2**53 "
                     f"({MAX_EXACT_INTEGER}), the largest integer kept exact",
                     node.span, f"write a number in it as a decimal to compute it in "
                                f"floating point: {_FirstAsDecimal()(node)}")


class _FirstAsDecimal(ir.SpecPrinter):
    """The expression with its first integer literal written as a decimal."""

    def __init__(self):
        super().__init__()
        self.done = False

    def const(self, value) -> str:
        if _is_integer(value) and not self.done:
            self.done = True
            return f"{value}.0"
        return super().const(value)


def _not_finite(node: ir.Op, args: list, result: float) -> SpecError:
    text = ir.to_text(node)
    if node.op in ("/", "//", "%") and float(args[1]) == 0:
        return SpecError(f"the constant '{text}' divides by zero", node.span,
                         "write inf or -inf where infinity is meant")
    if math.isnan(result):
        return SpecError(f"the constant '{text}' has no real value (it is NaN)", node.span,
                         "check the argument's sign and the function's domain")
    return SpecError(f"the constant '{text}' is {'' if result > 0 else '-'}inf in "
                     f"float64 (it overflows)", node.span,
                     "write inf or -inf where infinity is meant")
