"""IR expressions -> Python source, one printer class per target (in the spirit of
sympy's CodePrinter): Python scalars (param defaults) and torch tensors (the reference
backend); Triton's is in triton_backend.py, the spec's own spelling in ir/expr.py. The
base class, `ir.expr.Printer`, owns precedence and parentheses; a target overrides how
leaves, functions and conditionals are spelled.
"""

from __future__ import annotations


from ..ir import expr as ir
from ..ir.expr import Printer

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
