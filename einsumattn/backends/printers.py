"""IR expressions -> Python source, one printer class per target (in the spirit of
sympy's CodePrinter): Python scalars (param defaults) and torch tensors (the reference
backend); Triton's is in triton_backend.py, the spec's own spelling in ir/expr.py. The
base class, `ir.expr.Printer`, owns precedence and parentheses; a target overrides how
leaves, functions and conditionals are spelled.
"""

from __future__ import annotations

import re

from ..ir import expr as ir
from ..ir.expr import Printer


def is_atom(text: str) -> bool:
    """Whether `text` is one operand whatever stands next to it: a name or number, or
    one followed by bracket groups that close at the very end (`X[...]`, `f(...)`)."""
    match = re.match(r"[\w.]+", text)
    if not match:
        return False
    depth = 0
    for char in text[match.end():]:
        if depth == 0 and char not in "([":
            return False
        depth += char in "([{"
        depth -= char in ")]}"
    return depth == 0


def _operand(text: str) -> str:
    """Text printed for no context, made safe to stand next to an operator."""
    return text if is_atom(text) else f"({text})"


def _never_nan(expr: ir.Expr) -> bool:
    return isinstance(expr, (ir.Const, ir.Dim))


class PythonScalarPrinter(Printer):
    """Plain Python floats with `math`: param defaults computed from sizes, and the parts
    of a torch body that vary over no index. NaN in gives NaN out, as in the oracle
    (`ir/semantics.py`): Python's `max(1, nan)` is 1, so max, min and sign are spelled to
    pass a NaN through."""

    _MATH = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh",
             "abs": "abs", "log1p": "math.log1p", "expm1": "math.expm1", "erf": "math.erf"}

    def print(self, expr: ir.Expr, context: int) -> str:
        if isinstance(expr, ir.Op) and expr.op == "**" and not is_integer(expr.args[1]):
            # Python's (-8) ** 0.5 is a complex number; math.pow raises instead.
            return f"math.pow({self.print(expr.args[0], 0)}, {self.print(expr.args[1], 0)})"
        if isinstance(expr, ir.Op) and expr.op in ("max", "min") and \
                not _never_nan(expr.args[1]):
            # max(a, b) keeps a NaN `a` (it never compares greater) but not a NaN `b`.
            a, b = (self.print(arg, 0) for arg in expr.args)
            return f"({_operand(b)} if {_operand(b)} != {_operand(b)} else " \
                   f"{expr.op}({a}, {b}))"
        return super().print(expr, context)

    def function(self, op: str, args: list[str]) -> str:
        if op in self._MATH:
            return f"{self._MATH[op]}({args[0]})"
        # An argument that stands next to an operator below is parenthesised: it was
        # printed for no context.
        x = _operand(args[0])
        if op in ("max", "min"):
            return f"{op}({args[0]}, {args[1]})"
        if op == "sigmoid":
            # exp of a negative argument only: no OverflowError for large |x|.
            return f"(1 / (1 + math.exp(-{x})) if {x} >= 0 else " \
                   f"math.exp({x}) / (1 + math.exp({x})))"
        if op == "relu":
            return f"max({args[0]}, 0.0)"
        if op == "elu":
            return f"({x} if {x} > 0 else math.expm1({x}))"
        if op == "softplus":
            # max(x, 0) + log1p(exp(-|x|)), as the oracle's logaddexp(0, x): no overflow.
            # A NaN `x` stays (max keeps a NaN first operand).
            return f"(max({args[0]}, 0.0) + math.log1p(math.exp(-abs({args[0]}))))"
        if op == "logsigmoid":
            # -softplus(-x), as the oracle: at x = +inf that is -0.0, which a division by
            # it keeps (min(x, 0) - log1p(...) gave +0.0: `I / logsigmoid(c)` with c = inf
            # was +inf, found by the thorough hypothesis profile).
            return f"(-(max(-{x}, 0.0) + math.log1p(math.exp(-abs({args[0]})))))"
        if op == "silu":
            return f"({x} * {self.function('sigmoid', args)})"
        if op == "sign":
            return f"({x} if {x} == 0 or {x} != {x} else math.copysign(1.0, {x}))"
        if op == "where":
            return f"({args[1]} if {args[0]} else {args[2]})"
        raise NotImplementedError(op)


# Operations whose result is an integer when every operand is (torch and Python alike).
_INTEGER_PRESERVING = frozenset({"+", "-", "*", "//", "%", "neg", "max", "min", "abs",
                                 "sign", "relu"})


def is_integer(expr: ir.Expr, divisions: bool = True) -> bool:
    """Whether a value is surely an integer: sizes, indices, integer constants and what
    integer-preserving operations make of them (params may be floats). `divisions`:
    whether `//` and `%` may appear (an integer division by zero raises)."""
    if isinstance(expr, ir.Const):
        return isinstance(expr.value, int)
    if isinstance(expr, (ir.Index, ir.Dim)):
        return True
    if isinstance(expr, (ir.Param, ir.Read)):
        return False
    allowed = _INTEGER_PRESERVING if divisions else _INTEGER_PRESERVING - {"//", "%"}
    return expr.op in allowed and all(is_integer(a, divisions) for a in expr.args)


def integer_comparison(expr: ir.Expr) -> bool:
    """A comparison of integers that a printer of values prints as one of integers
    (`m <= p`): exact, and as readable as the spec. Not with `//` or `%`, which divide
    by zero as floats (inf) but raise as integers."""
    return isinstance(expr, ir.Op) and expr.op in ir.COMPARISONS and \
        all(is_integer(a, divisions=False) for a in expr.args)


class TorchPrinter(PythonScalarPrinter):
    """torch tensors in the broadcast layout of one Einsum's iteration space; parts that
    are not tensors stay Python numbers (spelled by PythonScalarPrinter). `read` prints a
    tensor read (the backend decides between a view and a gather); `fixed` names index
    variables that are Python ints (a recurrence's step); `integer`: index arithmetic
    (integers stay integers), else values. The printed text runs where `torch`, `math`
    and `device` are defined, as in the generated `reference`.

    Values follow the oracle's float semantics: an index, a size or a constant used as a
    value is a float (`i ** -1` is 1/i, not an integer-power error; `-(p - m)` is -0.0
    where p = m, so `1 / -(p - m)` is -inf), and NaN passes through every function
    (`torch.sign(nan)` is 0, so sign is spelled). A comparison of integers stays one of
    integers (exact)."""

    _TORCH = {"exp": "torch.exp", "log": "torch.log", "sqrt": "torch.sqrt",
              "tanh": "torch.tanh", "sigmoid": "torch.sigmoid", "relu": "torch.relu",
              "elu": "torch.nn.functional.elu", "abs": "torch.abs",
              # version 1.1; softplus as the oracle's log(1 + exp(x)) at every x (torch's
              # softplus returns x itself above its threshold, 20: 2e-9 relative)
              "softplus": "torch.nn.functional.softplus",
              "log1p": "torch.log1p",
              "expm1": "torch.expm1", "silu": "torch.nn.functional.silu", "erf": "torch.erf"}

    def __init__(self, read, fixed=(), integer: bool = False):
        super().__init__()
        self._read = read
        self.fixed = frozenset(fixed)
        self.integer = integer

    def read(self, node: ir.Read) -> str:
        return self._read(node)

    def index(self, node: ir.Index) -> str:
        name = super().index(node)
        if self.integer:
            return name
        return f"float({name})" if node.var in self.fixed else f"{name}.float()"

    def dim(self, node: ir.Dim) -> str:
        name = super().dim(node)
        return name if self.integer else f"float({name})"

    def const(self, value) -> str:
        # A value is a float: where(c, 1, 0) must not make an int64 tensor, which
        # divides by zero with an error and has no elu.
        return super().const(value if self.integer else float(value))

    def tensor(self, expr: ir.Expr) -> bool:
        """Whether `expr` is a tensor when the printed code runs: it reads a tensor or
        uses an index grid (not an index held fixed as a Python int)."""
        return any(isinstance(n, ir.Read) or isinstance(n, ir.Op) and n.op == "_tensor" or
                   isinstance(n, ir.Index) and n.var not in self.fixed for n in ir.walk(expr))

    def boolean(self, op: str, expr: ir.Op) -> str:
        if not self.tensor(expr):
            return op
        return {"and": "&", "or": "|", "not": "~"}[op]

    def print(self, expr: ir.Expr, context: int) -> str:
        if not self.integer and integer_comparison(expr):
            return TorchPrinter(self._read, self.fixed, integer=True).print(expr, context)
        if not isinstance(expr, ir.Op) or not self.tensor(expr):
            return super().print(expr, context)
        op, args = expr.op, expr.args
        if op == "logsigmoid":
            # -softplus(-x), as the oracle and the Triton printer: logsigmoid(+inf) is
            # -0.0 (the limit from below), which a division by it keeps; torch's
            # logsigmoid gives +0.0 there (the thorough hypothesis profile found
            # `I / logsigmoid(inf)`: -inf, not inf).
            negated = args[0].args[0] if isinstance(args[0], ir.Op) and \
                args[0].op == "neg" else ir.Op("neg", args)     # -(-x) is x exactly
            return self.print(ir.Op("neg", (ir.Op("softplus", (negated,)),)), context)
        if op in self._TORCH:
            return f"{self._TORCH[op]}({self.print(args[0], 0)})"
        if op == "/" and not self.tensor(args[0]):
            # torch divides a number by a tensor as number * (1 / tensor): 0 / 1e-44 is
            # then 0 * inf = NaN. A tensor numerator divides.
            return self.print(ir.Op("/", (ir.Op("_tensor", (args[0],)), args[1])), context)
        if op == "**" and not self.tensor(args[1]) and not is_integer(args[1]):
            # torch takes a tensor ** -0.5 as rsqrt: -inf at -0.0, where the oracle's
            # power (numpy's, C99's pow) gives +inf; 1 / sqrt(x + 0.0) is +inf there
            # (-0.0 + 0.0 is +0.0) and x ** -0.5 elsewhere, to an ulp.
            x, y = (_operand(self.print(a, 0)) for a in args)
            rsqrt = f"1 / torch.sqrt({x} + 0.0)"
            if isinstance(args[1], ir.Const):
                return f"({rsqrt})" if float(args[1].value) == -0.5 else \
                    Printer.print(self, expr, context)
            return f"({rsqrt} if {y} == -0.5 else {x} ** {y})"
        if op == "sign":
            x = self.print(args[0], 0)
            return f"torch.where(torch.isnan({x}), {x}, torch.sign({x}))"
        if op == "where":
            cond, if_true, if_false = (self.print(a, 0) for a in args)
            if not self.tensor(args[0]):
                # A branch is a tensor: so is the result, whichever the condition picks.
                cond = f"torch.tensor({cond}, device=device)"
            return f"torch.where({cond}, {if_true}, {if_false})"
        if op in ("max", "min"):
            texts = [self.print(a, 0) for a in args]
            if all(self.tensor(a) for a in args):
                name = "maximum" if op == "max" else "minimum"
                return f"torch.{name}({texts[0]}, {texts[1]})"
            tensor, number = texts if self.tensor(args[0]) else reversed(texts)
            bound = "min" if op == "max" else "max"
            return f"torch.clamp({tensor}, {bound}={number})"
        # Operators: precedence and parentheses (not PythonScalarPrinter's spellings of
        # Python numbers).
        return Printer.print(self, expr, context)

    def function(self, op: str, args: list[str]) -> str:
        if op == "_tensor":    # a conversion the printer inserts (not an IR operation)
            return f"torch.tensor({args[0]}, device=device)"
        return super().function(op, args)
