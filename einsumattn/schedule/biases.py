"""A score's term linear in the key tile's column, added by the matrix unit.

ALiBi's score is `SC = QK + a * (m - p)`: with `QK = QK_sum * s` and the split key
`m = m1 * M0 + m0`, evaluating it costs two or three float operations per score and key
tile beyond softmax's (the bias, its product, the sum), about 1.45x the issue slots of
Triton's tutorial on an H100 (benchmarks/results/sm90-static-*.md). Split the term at the
tile's column m0:

    a * (m1 * M0 + m0 - p) = a * m0 + B,    B = a * (m1 * M0 - p)  (the term at m0 = 0)

`a * m0` is the same on every step, and `QK_sum + (a / s) * m0` is one more product the
matrix unit adds into the dot's accumulator: a k = 16 dot of two tiles made once before
the loop (`CoefficientRows`: the rows hold `a / s` as three bfloat16 parts, hi + mid + lo,
24 bits in all, float32's; `KeyColumns`: three rows of m0 = 0 .. M0 - 1, integers a
bfloat16 holds exactly up to 256). Each part times m0 is exact in float32, so the dot
adds `(a / s) * m0` with float32 sums, as the QK dot adds its own products. Then

    SC = (QK_sum + (a / s) * m0) * s + B

is a scaled tile plus a value per row, which the readers the online softmax gives it
take without work per score (schedule/scales.py): `max[m0] SC = s * max[m0] (...) + B`,
and the exponent `SC * log2(e) - G * log2(e)` is one FFMA, `(...) * (s * log2(e))` plus
the row's `B * log2(e) - G * log2(e)`. The term's rounding moves from `a * (m - p)` (one
product of an exact integer) to `a * (m1 * M0 - p)` and `(a / s) * m0 * s`: each a few
float32 ulps of the same magnitudes, as the scale's own fold (scales.py) is.

When it holds. `a` must be one value per program (sizes, params, constants, batch
indices: a head's slope), bounded by `_magnitude` to 2**32 for every size and every param
within 2**16, so `a / s` times m0 stays far from overflow for `2**-64 <= s <= 2**64`.
The host checks s, the params of `a`, the key tile (at most 256) and the GPU (bfloat16
dots: Ampere or later, or the interpreter) per call and passes one compile-time flag
(`BiasDots`); where it fails the kernel computes
the term per score, as the spec writes it (kernel_ir.Specialized holds both). The split
stream's step only: its column m0 is the same block on every step (an unsplit pass's key
`start + arange` is left as it is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import expr as ir
from . import kernel_ir as k

# `a` is folded where |a| <= 2**32 for every size; the host's flag takes 2**-64 <= s <=
# 2**64: |a / s| * m0 <= 2**(32 + 64 + 8), far below float32's 2**128.
_MAGNITUDE = 2.0 ** 32
SCALE_EXPONENT = 64     # the host's flag takes 2**-64 <= s <= 2**64
PARAM_EXPONENT = 16     # a param in the coefficient (a slope): the host checks |x| <= 2**16
PARAM_BOUND = 2.0 ** PARAM_EXPONENT
MAX_KEY_BLOCK = 256     # m0 < 256 is exact in bfloat16 (8 significant bits)
_ZERO = ir.Const(0)


@dataclass(frozen=True)
class BiasDots:
    """The host's compile-time flag `name`: the GPU has bfloat16 dots (or it is the
    interpreter), the key tile `block` is at most 256, the scale `param` (None: no
    scale) within 2**-64 .. 2**64, and each param of the coefficient (`bounded`) is at
    most PARAM_BOUND in absolute value."""
    name: str
    block: str
    param: str | None
    bounded: tuple[str, ...] = ()


def added_biases(statements: tuple, column: str, batch: tuple[str, ...], rows: str,
                 block: str, hoisted) -> tuple[tuple, tuple[BiasDots, ...]]:
    """`statements` (a split step) with each score `Let` of the form `QK + E`, E linear in
    the key column `column` (an IndexBlock name) with a per-program coefficient, rewritten
    to take `a * column` through the QK dot (the module docstring), under the host's flag;
    `hoisted(value, name)` puts a loop-invariant value before the loop and gives its name.
    Also the flags the host must compute."""
    lets = {s.name: s.value for s in statements if isinstance(s, k.Let)}
    flags: dict[str, BiasDots] = {}
    out = []
    for statement in statements:
        found = _score(statement, lets, column, batch) if isinstance(statement, k.Let) \
            else None
        if found is None:
            out.append(statement)
            continue
        dot_name, scale, alpha, offset = found
        name = statement.name
        flag = BiasDots(f"{name}_BIAS_DOTS", block,
                        scale.name if isinstance(scale, ir.Param) else None,
                        tuple(dict.fromkeys(n.name for n in k.nodes(alpha)
                                            if isinstance(n, ir.Param))))
        flags[flag.name] = flag
        rate = hoisted(alpha, f"{name}_rate")           # a: the term's change per key
        coef = rate if scale is None else hoisted(ir.Op("/", (rate, scale)), f"{name}_coef")
        left = hoisted(k.CoefficientRows(coef, rows), f"{name}_coef_rows")
        right = hoisted(k.KeyColumns(block), f"{name}_key_columns")
        out.append(k.Let(f"{name}_dot", k.Dot(left, right, converted=(True, True),
                                              acc=k.Var(dot_name)),
                         note=f"+ {coef.name} * {column}, by the matrix unit"))
        # B: the term at column 0, one value per row
        row = k.replaced(offset, lambda n: rate if n == alpha else None)
        out.append(k.Let(f"{name}_row", per_row(row), note=f"the term at {column} = 0"))
        biased = k.Var(f"{name}_dot")
        scaled = biased if scale is None else ir.Op("*", (biased, scale))
        out.append(k.Let(name, k.Specialized(flag.name, ir.Op("+", (
            scaled, k.Expand(k.Var(f"{name}_row"), (True, False)))),
            k.replaced(statement.value, lambda n: rate if n == alpha else None))))
    return tuple(out), tuple(flags.values())


def _score(statement: k.Let, lets: dict, column: str, batch: tuple[str, ...]):
    """(the dot's name, the scale or None, a, B) where `statement` is `QK + E` with QK a
    dot's tile (times a scale) and E = a * column + B; None otherwise."""
    value = statement.value
    if not (isinstance(value, ir.Op) and value.op == "+" and len(value.args) == 2):
        return None
    for tile, term in (value.args, reversed(value.args)):
        scored = _dot_tile(tile, lets)
        if scored is None:
            continue
        alpha = _coefficient(term, column)
        if alpha is None or alpha == _ZERO or not _invariant(alpha, batch) or \
                _magnitude(alpha) > _MAGNITUDE:
            continue
        offset = k.replaced(term, lambda n: ir.Const(0) if isinstance(n, k.IndexBlock)
                            and n.name == column else None)
        if not _per_row(offset):
            continue
        return (*scored, alpha, offset)
    return None


def _dot_tile(tile, lets: dict):
    """(the dot's name, the scale or None) for a Var of a dot's tile, or of a dot's tile
    times a param; None otherwise."""
    if not isinstance(tile, k.Var) or tile.name not in lets:
        return None
    value = lets[tile.name]
    if isinstance(value, k.Dot) and value.acc is None:
        return tile.name, None
    if isinstance(value, ir.Op) and value.op == "*" and len(value.args) == 2:
        dot, scale = value.args
        if isinstance(dot, k.Var) and isinstance(lets.get(dot.name), k.Dot) and \
                lets[dot.name].acc is None and isinstance(scale, ir.Param):
            return dot.name, scale
    return None


def _coefficient(node, column: str):
    """The coefficient of the block `column` in `node` where `node` is affine in it (sums,
    differences, negations, products and quotients by terms without it); _ZERO where it
    does not appear; None where it is not affine."""
    if isinstance(node, k.IndexBlock) and node.name == column:
        return ir.Const(1)
    if not any(isinstance(n, k.IndexBlock) and n.name == column for n in k.nodes(node)):
        return _ZERO
    if isinstance(node, k.Group):
        return _coefficient(node.value, column)
    if not isinstance(node, ir.Op):
        return None
    parts = [_coefficient(arg, column) for arg in node.args]
    if any(p is None for p in parts):
        return None
    if node.op == "neg":
        return ir.Op("neg", (parts[0],))
    if node.op in ("+", "-") and len(parts) == 2:
        a, b = parts
        if b == _ZERO:
            return a
        if a == _ZERO:
            return b if node.op == "+" else ir.Op("neg", (b,))
        return ir.Op(node.op, (a, b))
    if node.op == "*" and len(parts) == 2:
        (x, y), (a, b) = node.args, parts
        if a == _ZERO:
            return x if b == ir.Const(1) else ir.Op("*", (x, b))
        if b == _ZERO:
            return y if a == ir.Const(1) else ir.Op("*", (a, y))
        return None
    if node.op == "/" and len(parts) == 2 and parts[1] == _ZERO:
        return ir.Op("/", (parts[0], node.args[1]))
    return None


def per_row(value):
    """A value per row of a [rows, keys] tile ([rows, 1]: blocks and values expanded
    along the keys) as the [rows] vector a reduction over the keys gives."""
    def squeeze(node):
        if isinstance(node, k.IndexBlock) and node.axes == (True, False):
            return k.IndexBlock(node.name)
        if isinstance(node, k.Expand) and node.axes == (True, False):
            return node.value
        return None
    return k.replaced(value, squeeze)


def _invariant(node, batch: tuple[str, ...]) -> bool:
    """Whether `node` is one value per program, the same on every step (so made before
    the loop): constants, sizes, params and the program's batch indices; not a row's,
    not the step's (interior.py's `_per_program` allows the step: an address moves)."""
    return all(isinstance(n, (ir.Const, ir.Dim, ir.Param, ir.Op, k.Group)) or
               (isinstance(n, ir.Index) and n.var in batch) for n in k.nodes(node))


def _per_row(node) -> bool:
    """Whether `node` is at most one value per row (and step): nothing along the keys."""
    for n in k.nodes(node):
        if isinstance(n, k.IndexBlock) and len(n.axes) == 2 and n.axes[1]:
            return False
        if isinstance(n, (k.Var, k.Load, k.Dot, k.Reduce, k.Arange, k.Expand)):
            return False
    return True


def _magnitude(node) -> float:
    """An upper bound of |node| over every size >= 1, batch index >= 0 (inf where none is
    found): interval arithmetic on floats, enough for a head's slope 2 ** (-8 (h + 1) / H)
    (exponent <= 0, so at most 1); a param within the bound the host checks. Not
    ir/intervals.py's `interval`, which bounds integer index arithmetic in sympy
    (nonnegative products only): this one takes signs, quotients and powers, without
    sympy on the compile path."""
    lo, hi = _interval(node)
    return max(abs(lo), abs(hi))


_ANY = (-math.inf, math.inf)


def _interval(node) -> tuple[float, float]:
    if isinstance(node, ir.Const):
        value = float(node.value)
        return (value, value) if not math.isnan(value) else _ANY
    if isinstance(node, ir.Dim):
        return (1.0, math.inf)
    if isinstance(node, ir.Index):
        return (0.0, math.inf)
    if isinstance(node, ir.Param):           # the host's flag checks |x| <= PARAM_BOUND
        return (-PARAM_BOUND, PARAM_BOUND)
    if isinstance(node, k.Group):
        return _interval(node.value)
    if not isinstance(node, ir.Op):
        return _ANY
    args = [_interval(a) for a in node.args]
    if node.op == "neg":
        return (-args[0][1], -args[0][0])
    if len(args) != 2:
        return _ANY
    (a, b), (c, d) = args
    if node.op == "+":
        return _checked(a + c, b + d)
    if node.op == "-":
        return _checked(a - d, b - c)
    if node.op == "*":
        return _span([_times(x, y) for x in (a, b) for y in (c, d)])
    if node.op == "/" and (c > 0 or d < 0):
        return _span([q for x in (a, b) for y in (c, d) for q in _over(x, y)])
    if node.op == "**" and isinstance(node.args[0], ir.Const) and a > 0:
        base = float(a)
        ends = [_power(base, c), _power(base, d)]
        return _span(ends)
    return _ANY


def _checked(lo: float, hi: float) -> tuple[float, float]:
    return _ANY if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def _span(values: list[float]) -> tuple[float, float]:
    return _ANY if any(math.isnan(v) for v in values) else (min(values), max(values))


def _times(x: float, y: float) -> float:
    return 0.0 if x == 0 or y == 0 else x * y      # an end at 0 bounds the product at 0


def _over(x: float, y: float) -> tuple[float, ...]:
    """The corner x / y of a quotient's interval; unbounded over unbounded reaches from
    0 to infinity (with the quotient's sign)."""
    if math.isinf(y):
        sign = math.copysign(1.0, x) * math.copysign(1.0, y)
        return (0.0, sign * math.inf) if math.isinf(x) else (0.0,)
    return (x / y,)


def _power(base: float, exponent: float) -> float:
    try:
        return base ** exponent
    except OverflowError:
        return math.inf
