"""IR expressions -> source text, one printer class per target (in the spirit of sympy's
CodePrinter): Python scalars (param defaults), torch tensors (the reference backend),
and later Triton blocks. The base class owns precedence and parentheses; a target
overrides how leaves, functions and conditionals are spelled.
"""

from __future__ import annotations

import math

from ..ir import expr as ir

# Python's binding strengths; higher binds tighter.
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4,
               "!=": 4, "|": 5, "&": 6, "+": 7, "-": 7, "*": 8, "/": 8, "//": 8, "%": 8,
               "neg": 9, "~": 9, "**": 10}
_ATOM = 11


class Printer:
    """Prints an expression; subclasses name leaves and functions for their target."""

    def __init__(self, names: dict[str, str] | None = None):
        # Names for index variables, dims, params and tensor reads in the target code.
        self.names = names or {}

    def __call__(self, expr: ir.Expr) -> str:
        return self.print(expr, 0)

    # -- hooks -----------------------------------------------------------------
    def const(self, value) -> str:
        if value == math.inf:
            return "math.inf"
        if value == -math.inf:
            return "-math.inf"
        return repr(value)

    def index(self, node: ir.Index) -> str:
        return self.names.get(node.var, node.var)

    def dim(self, node: ir.Dim) -> str:
        return self.names.get(node.rank, node.rank)

    def param(self, node: ir.Param) -> str:
        return self.names.get(node.name, node.name)

    def read(self, node: ir.Read) -> str:
        raise NotImplementedError(f"{type(self).__name__} cannot read tensors")

    def function(self, op: str, args: list[str]) -> str:
        raise NotImplementedError(op)

    def boolean(self, op: str) -> str:
        """How `and`/`or`/`not` are spelled (words for Python, & | ~ for tensors)."""
        return op

    # -- structure ---------------------------------------------------------------
    def print(self, expr: ir.Expr, context: int) -> str:
        if isinstance(expr, ir.Const):
            text = self.const(expr.value)
            return f"({text})" if text.startswith("-") and context > _PRECEDENCE["+"] else text
        if isinstance(expr, ir.Index):
            return self.index(expr)
        if isinstance(expr, ir.Dim):
            return self.dim(expr)
        if isinstance(expr, ir.Param):
            return self.param(expr)
        if isinstance(expr, ir.Read):
            return self.read(expr)
        assert isinstance(expr, ir.Op)
        op, args = expr.op, expr.args
        if op in ("and", "or", "not"):
            op = self.boolean(op)
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


class PythonScalarPrinter(Printer):
    """Plain Python floats with `math`: param defaults computed from sizes."""

    _MATH = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh",
             "abs": "abs"}

    def function(self, op: str, args: list[str]) -> str:
        if op in self._MATH:
            return f"{self._MATH[op]}({args[0]})"
        if op in ("max", "min"):
            return f"{op}({args[0]}, {args[1]})"
        if op == "sigmoid":
            return f"(1 / (1 + math.exp(-({args[0]}))))"
        if op == "relu":
            return f"max({args[0]}, 0.0)"
        if op == "elu":
            return f"({args[0]} if {args[0]} > 0 else math.expm1({args[0]}))"
        if op == "sign":
            return f"(math.copysign(1.0, {args[0]}) if {args[0]} != 0 else 0.0)"
        if op == "where":
            return f"({args[1]} if {args[0]} else {args[2]})"
        raise NotImplementedError(op)


def varies(expr: ir.Expr) -> bool:
    """Whether an expression varies over an iteration space (else a Python number)."""
    return any(isinstance(n, (ir.Index, ir.Read)) for n in ir.walk(expr))


class TorchPrinter(PythonScalarPrinter):
    """torch tensors in the broadcast layout of one Einsum's iteration space; parts that
    do not vary stay Python numbers (spelled by PythonScalarPrinter). `read` prints a
    tensor read (the backend decides between a view and a gather)."""

    _TORCH = {"exp": "torch.exp", "log": "torch.log", "sqrt": "torch.sqrt",
              "tanh": "torch.tanh", "sigmoid": "torch.sigmoid", "relu": "torch.relu",
              "elu": "torch.nn.functional.elu", "abs": "torch.abs", "sign": "torch.sign"}

    def __init__(self, read):
        super().__init__()
        self._read = read

    def read(self, node: ir.Read) -> str:
        return self._read(node)

    def boolean(self, op: str) -> str:
        return {"and": "&", "or": "|", "not": "~"}[op]

    def print(self, expr: ir.Expr, context: int) -> str:
        if isinstance(expr, ir.Op) and expr.op in self._TORCH and varies(expr):
            return f"{self._TORCH[expr.op]}({self.print(expr.args[0], 0)})"
        if isinstance(expr, ir.Op) and expr.op in ("max", "min", "where") and varies(expr):
            args = [self.print(a, 0) for a in expr.args]
            tensors = [varies(a) for a in expr.args]
            if expr.op == "where":
                if not tensors[0]:
                    return f"({args[1]} if {args[0]} else {args[2]})"
                return f"torch.where({', '.join(args)})"
            if all(tensors):
                name = "maximum" if expr.op == "max" else "minimum"
                return f"torch.{name}({args[0]}, {args[1]})"
            tensor, number = (args[0], args[1]) if tensors[0] else (args[1], args[0])
            bound = "min" if expr.op == "max" else "max"
            return f"torch.clamp({tensor}, {bound}={number})"
        return super().print(expr, context)
