"""First-order roundoff bounds, as a cascade: how far rounding some Einsums' operands can
move every tensor downstream.

A Triton kernel with float16/bfloat16 inputs feeds tl.dot operands in that precision
(tensor cores). An operand that is an input read is exact; a computed one (the
probabilities P of P V) is rounded, each element by a relative amount of at most u, the
unit roundoff of the dtype. For `N = sum P * V` that moves N by at most
`k * u * sum |P * V|`, k being the number of rounded operands (the standard bound for a
dot product of perturbed factors, to first order).

How that moves the outputs is a property of the cascade, so it is computed from the
cascade: `roundoff_cascade` returns the cascade extended with one bound tensor E_X per
tensor X that the roundings can reach. Each E_X is an Einsum over X's own iteration
space, filter and recurrence, built by the first-order rules of running error analysis
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.3):

    E(a + b) = E(a) + E(b)              E(a * b) = |a| E(b) + |b| E(a)
    E(a / b) = (E(a) + |a / b| E(b)) / |b|
    E(f(a))  = |f'(a)| E(a)             (exp, log, sqrt, tanh, sigmoid, powers;
                                         relu, elu, abs: |f'| <= 1)
    E(max(a, b)) <= max(E(a), E(b))     E(where(c, a, b)) = where(c, E(a), E(b))
    E(sum over a rank) = sum of E       E(max/min over a rank) <= sum of E

The oracle evaluates the extended cascade in float64 on the case's inputs, so the bound
is exact arithmetic on exact values: no estimate of the kernel's own computation enters
it. It is first order (terms in u**2 are dropped: below 2**-16 relative for bfloat16) and
treats comparisons as fixed (a rounding that flips `a > 0` is not followed); both are
the usual assumptions of such bounds, and the tests show they hold on every example.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Cascade, Einsum, Tensor
from ..ir import expr as ir


def roundoff_cascade(cascade: Cascade, rounded: dict[str, float]) -> tuple[Cascade,
                                                                          dict[str, str]]:
    """`cascade` plus bound tensors; `rounded` maps an Einsum's tensor to k * u (k rounded
    operands of unit roundoff u). Returns the extended cascade and, for each output, the
    name of its bound tensor (outputs the roundings cannot reach are left out)."""
    unknown = sorted(set(rounded) - {e.tensor for e in cascade.einsums})
    if unknown:
        raise ValueError(f"no Einsum defines {', '.join(unknown)}")
    bounds: dict[str, str] = {}
    taken: set[str] = set()
    tensors = dict(cascade.tensors)
    einsums: list[Einsum] = []     # each bound right after its tensor: dataflow order
    for einsum in cascade.einsums:
        einsums.append(einsum)
        name = cascade.fresh_name(f"E_{einsum.tensor}", taken)
        if einsum.iterative is not None:
            # A recurrence reads its own previous value: assume it has a bound, and keep
            # it only if something else feeds one in.
            bounds[einsum.tensor] = name
        rules = _Rules(bounds)
        body = rules.of(einsum.body)
        if einsum.tensor in rounded:
            body = _add(body, _mul(ir.Const(float(rounded[einsum.tensor])),
                                   _abs(einsum.body)))
        init = rules.of(einsum.init) if einsum.init is not None else None
        if einsum.iterative is not None and init is None and \
                einsum.tensor not in rounded and not _feeds(body, name, bounds):
            del bounds[einsum.tensor]
            continue
        if body is None:
            continue
        bounds[einsum.tensor] = name
        taken.add(name)
        tensors[name] = replace(cascade.tensors[einsum.tensor], name=name, span=None)
        reduce_op = "sum" if einsum.reduce_op is not None else None
        einsums.append(replace(einsum, tensor=name, body=body, reduce_op=reduce_op,
                               init=(init or ir.Const(0.0)) if einsum.iterative is not None
                               else None, span=None))
    outputs = {o: bounds[o] for o in cascade.outputs if o in bounds}
    extended = Cascade(cascade.name, dict(cascade.ranks), cascade.splits,
                       dict(cascade.params), tensors, tuple(einsums),
                       cascade.outputs + tuple(outputs.values()), cascade.source)
    return extended, outputs


def _feeds(body: ir.Expr | None, own: str, bounds: dict[str, str]) -> bool:
    """Whether a recurrence's bound body reads a bound besides its own previous one (a
    body like `|c| * E_own` starts at 0 and stays there)."""
    others = set(bounds.values()) - {own}
    return body is not None and any(isinstance(n, ir.Read) and n.tensor in others
                                    for n in ir.walk(body))


# ------------------------------------------------------------------ the rules
def _add(a: ir.Expr | None, b: ir.Expr | None) -> ir.Expr | None:
    if a is None:
        return b
    if b is None:
        return a
    return ir.Op("+", (a, b))


def _mul(a: ir.Expr, b: ir.Expr | None) -> ir.Expr | None:
    return None if b is None else ir.Op("*", (a, b))


def _abs(a: ir.Expr) -> ir.Expr:
    return ir.Op("abs", (a,))


def _guarded(error: ir.Expr | None, factor: ir.Expr) -> ir.Expr | None:
    """error * factor, 0 where the error is 0 (a factor that is infinite where its
    argument is 0, as 1/sqrt(0), contributes nothing when nothing moved)."""
    if error is None:
        return None
    return ir.Op("where", (ir.Op("==", (error, ir.Const(0.0))), ir.Const(0.0),
                           ir.Op("*", (error, factor))))


class _Rules:
    def __init__(self, bounds: dict[str, str]):
        self.bounds = bounds

    def of(self, expr: ir.Expr) -> ir.Expr | None:
        """The first-order bound of `expr`'s error; None when it is exactly 0."""
        if isinstance(expr, ir.Read):
            bound = self.bounds.get(expr.tensor)
            return ir.Read(bound, expr.indices) if bound is not None else None
        if not isinstance(expr, ir.Op):
            return None          # constants, indices, sizes, params: exact
        op, args = expr.op, expr.args
        if op in ir.COMPARISONS or op in ir.BOOLEAN or op in ("//", "sign"):
            return None          # conditions are taken as fixed; // and sign are steps
        errors = [self.of(a) for a in args]
        if all(e is None for e in errors):
            return None
        if op in ("+", "-"):
            return _add(*errors)
        if op in ("neg", "abs", "relu", "elu", "softplus", "logsigmoid"):
            return errors[0]     # |f'| <= 1 (softplus' = sigmoid(x), logsigmoid' = sigmoid(-x))
        if op in ("silu", "erf"):
            # |silu'| <= 1.1 (its largest slope, 1.0998 near x = 2.4); |erf'| <= 2/sqrt(pi)
            return _mul(ir.Const(1.1 if op == "silu" else 1.1284), errors[0])
        if op == "log1p":
            return _guarded(errors[0], ir.Op("/", (ir.Const(1.0), _abs(ir.Op(
                "+", (ir.Const(1.0), args[0]))))))
        if op == "expm1":        # expm1' = exp(x) = expm1(x) + 1
            return _mul(_abs(ir.Op("+", (expr, ir.Const(1.0)))), errors[0])
        if op == "*":
            a, b = args
            return _add(_mul(_abs(a), errors[1]), _mul(_abs(b), errors[0]))
        if op == "/":
            a, b = args
            top = _add(errors[0], _mul(_abs(ir.Op("/", (a, b))), errors[1]))
            return _guarded(top, ir.Op("/", (ir.Const(1.0), _abs(b))))
        if op == "%":            # a % b = a - b * floor(a / b)
            a, b = args
            return _add(errors[0], _mul(_abs(ir.Op("//", (a, b))), errors[1]))
        if op == "**":
            a, b = args
            power = _guarded(errors[0], _abs(ir.Op("*", (b, ir.Op("**", (
                a, ir.Op("-", (b, ir.Const(1.0)))))))))
            log = _guarded(errors[1], _abs(ir.Op("*", (expr, ir.Op("log", (_abs(a),))))))
            return _add(power, log)
        if op == "exp":
            return _mul(expr, errors[0])
        if op == "log":
            return _guarded(errors[0], ir.Op("/", (ir.Const(1.0), _abs(args[0]))))
        if op == "sqrt":
            return _guarded(errors[0], ir.Op("/", (ir.Const(0.5), expr)))
        if op == "tanh":
            return _mul(ir.Op("-", (ir.Const(1.0), ir.Op("*", (expr, expr)))), errors[0])
        if op == "sigmoid":
            return _mul(ir.Op("*", (expr, ir.Op("-", (ir.Const(1.0), expr)))), errors[0])
        if op in ("max", "min"):
            zero = ir.Const(0.0)
            return ir.Op("max", tuple(e if e is not None else zero for e in errors))
        if op == "where":
            zero = ir.Const(0.0)
            return ir.Op("where", (args[0], errors[1] or zero, errors[2] or zero))
        raise ValueError(f"no roundoff rule for {op!r}")
