"""Proved tile bounds: an affine filter between the streamed rank and the row rank
(`m <= p`, `p - m < W`) read as the bound on the keys a row sees, so a loop over key
tiles can start and stop where the filter allows."""

from __future__ import annotations

import sympy

from ..ir import expr as ir
from ..transform.algebra import Algebra


# a < b is b > a: a comparison with its sides swapped
_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def stream_bound(condition: ir.Expr, stream: str, row: str):
    """('upper', c) for m <= row + c, ('lower', c) for m >= row + c; None otherwise.
    c is printed for the kernel (integers and params)."""
    found = _affine(condition, stream, row)
    if found is None:
        return None
    op, a, row_coefficient, constant = found
    if row_coefficient != -a:
        return None
    # a*(m - p) + constant OP 0  ->  m - p OP' -constant/a
    offset = -constant / a
    # m < row + c is m <= row + c - 1 for integer c (a param is rounded on the host).
    side, value = {"<": ("upper", offset - 1), "<=": ("upper", offset),
                   ">": ("lower", offset + 1), ">=": ("lower", offset)}[op]
    value = sympy.expand(value)
    if not value.free_symbols and not value.is_Integer:
        return None
    return side, value


def prefix_bound(condition: ir.Expr, stream: str, row: str):
    """s for `m < s` (or `m <= s - 1`): the first keys, whatever the row (attention
    sinks), s a sympy expression of sizes, params and integers, the keys' exclusive end
    (rounded up on the host: for a fractional s the integer keys below it end at
    ceil(s)); None otherwise."""
    found = _affine(condition, stream, row)
    if found is None:
        return None
    op, a, row_coefficient, constant = found
    if row_coefficient != 0 or op not in ("<", "<="):
        return None
    end = sympy.expand(-constant / a + (1 if op == "<=" else 0))
    if not end.free_symbols and not end.is_Integer:
        return None
    return end


def either_bound(condition: ir.Expr, stream: str, row: str):
    """('lower', c, s) for `m >= row + c or m < s` (either way round): the keys a row
    sees are its window's from row + c, and the first s keys, the sinks (StreamingLLM);
    None otherwise."""
    return _either(condition, stream, row, "lower", sinks_of=stream)


def either_row_bound(condition: ir.Expr, stream: str, row: str):
    """('upper', c, s) for `m <= row + c or row < s` (either way round): a row sees the
    keys up to row + c, and a row below s every key. The sinks seen from the other side:
    the backward's dK/dV kernel streams the queries p for a tile of keys m, and `p - m <
    W or m < S` lets a sink key's row m see every query; None otherwise."""
    return _either(condition, stream, row, "upper", sinks_of=row)


def _either(condition: ir.Expr, stream: str, row: str, side: str, sinks_of: str):
    """(side, c, s) for an `or` of an affine bound on `side` and `sinks_of < s` (the
    stream's first values, or the row's); None otherwise."""
    if not isinstance(condition, ir.Op) or condition.op != "or" or len(condition.args) != 2:
        return None
    other = row if sinks_of == stream else stream
    for window, sinks in (condition.args, condition.args[::-1]):
        bound, end = stream_bound(window, stream, row), prefix_bound(sinks, sinks_of, other)
        if bound is not None and bound[0] == side and end is not None:
            return side, bound[1], end
    return None


def _affine(condition: ir.Expr, stream: str, row: str):
    """(op, a, b, c) for a comparison `a*m + b*row + c OP 0` with a = +-1 (after moving
    everything to the left, its sides swapped so that op keeps reading from m), b a
    number and c an expression of sizes, params and integers (plain sympy names);
    None for anything else: tensor reads, functions, other indices."""
    if not isinstance(condition, ir.Op) or condition.op not in ("<", "<=", ">", ">="):
        return None
    algebra = Algebra()
    difference = sympy.expand(algebra.to_sympy(condition.args[0]) -
                              algebra.to_sympy(condition.args[1]))
    # Affine in indices, sizes and params only: no tensor reads, no functions.
    names, constants = {}, set()
    for symbol in difference.free_symbols:
        node = algebra.nodes[symbol]
        if isinstance(node, ir.Read):
            return None
        if isinstance(node, ir.Index):
            names[symbol] = sympy.Symbol(node.var)
        else:            # a param or a size: known on the host
            names[symbol] = sympy.Symbol(node.name if isinstance(node, ir.Param) else
                                         node.rank)
            constants.add(names[symbol])
    if difference.atoms(sympy.Function):
        return None
    # Plain names from here on: the offset is printed into the kernel and the host.
    difference = difference.xreplace(names)
    m, p = sympy.Symbol(stream), sympy.Symbol(row)
    a = difference.coeff(m)
    rest = sympy.expand(difference - a * m)
    b = rest.coeff(p)
    constant = sympy.expand(rest - b * p)
    if a not in (1, -1) or not b.is_number or constant.free_symbols - constants:
        return None
    return (condition.op if a == 1 else _MIRRORED[condition.op]), a, b, constant


def monotone_bound(condition: ir.Expr, stream: str, row: str, keys: ir.Expr,
                   constant: frozenset = frozenset(), inputs: frozenset = frozenset()):
    """('lower', f) for key >= f(row), ('upper', f) for key <= f(row), with f a function
    of the row with integer values (floor and ceil taken) that never decreases as the
    row grows (built from the row, sizes, params, numbers, `constant` variables and
    reads of `inputs` at them, one value per program, by +, -, * and // by positive
    numbers or sizes, min and max): a clamped window, `m >= min(max(p - W // 2, 0),
    max(M - W, 0))`; or the same for every row: a KV cache's valid length, `m <
    LEN[b]`. The key may also be its row of D keys, `key // D`. The keys of a tile of
    rows first..last then lie within f(first) .. g(last): a row's bound is no tighter
    than the tile's. None otherwise (and for the affine filters, which stream_bound
    reads). `keys`: the key rank's size."""
    if not isinstance(condition, ir.Op) or condition.op not in ("<", "<=", ">", ">="):
        return None
    left, right = condition.args
    op = condition.op
    if _key_rows(left, stream) is None:
        left, right = right, left
        op = _MIRRORED[op]
    per_row = _key_rows(left, stream)
    if per_row is None or stream in ir.index_vars(right) or \
            _rising(right, row, constant, inputs) not in (0, 1):
        return None
    # The integer keys the condition lets through, for a value that may be fractional
    # (a param W is a float): m >= f is m >= ceil(f), m > f is m >= floor(f) + 1,
    # m <= g is m <= floor(g), m < g is m <= ceil(g) - 1. Floor and ceil keep the
    # direction, so the bound still never decreases.
    # Clamped to -1 .. keys (the key rank's size) first: the same keys pass, and an
    # infinite window (W = inf: every key) has a finite floor.
    clamped = ir.Op("min", (ir.Op("max", (right, ir.Const(-1))), keys))

    def floor(x):
        return ir.Op("//", (x, ir.Const(1)))

    def ceil(x):
        return ir.Op("neg", (floor(ir.Op("neg", (x,))),))

    side, bound = {"<": ("upper", ir.Op("-", (ceil(clamped), ir.Const(1)))),
                   "<=": ("upper", floor(clamped)),
                   ">": ("lower", ir.Op("+", (floor(clamped), ir.Const(1)))),
                   ">=": ("lower", ceil(clamped))}[op]
    if per_row is not _ONE:
        # key // D >= L is key >= L * D; key // D <= U is key <= U * D + D - 1
        bound = ir.Op("*", (bound, per_row)) if side == "lower" else \
            ir.Op("-", (ir.Op("*", (ir.Op("+", (bound, ir.Const(1))), per_row)),
                        ir.Const(1)))
    return side, bound


_ONE = ir.Const(1)


def _key_rows(expr: ir.Expr, stream: str):
    """D where `expr` is the key's row of D keys, `key // D` (D a size or a positive
    integer: a raster's row, the image width); 1 for the key itself; None otherwise."""
    if isinstance(expr, ir.Op) and expr.op == "//" and \
            _positive(expr.args[1], integer=True) and _is_key(expr.args[0], stream):
        return expr.args[1]
    return _ONE if _is_key(expr, stream) else None


def _positive(expr: ir.Expr, integer: bool = False) -> bool:
    """A size (at least 1 where there is a point) or a positive number (`integer`: a
    whole one)."""
    return isinstance(expr, ir.Dim) or (isinstance(expr, ir.Const) and expr.value > 0 and
                                        (not integer or float(expr.value).is_integer()))


def _is_key(expr: ir.Expr, stream: str) -> bool:
    """The key itself: the stream's index (a split's `m1 * M0 + m0` keyed to `m0`)."""
    if isinstance(expr, ir.Index):
        return expr.var == stream
    algebra = Algebra()
    try:
        value = algebra.to_sympy(expr)
    except Exception:  # noqa: BLE001 - anything sympy cannot take is not the key
        return False
    keys = [s for s, node in algebra.nodes.items()
            if isinstance(node, ir.Index) and node.var == stream]
    return len(keys) == 1 and sympy.expand(value - keys[0]) == 0


def _rising(expr: ir.Expr, row: str, constant: frozenset,
            inputs: frozenset = frozenset()) -> int | None:
    """1 if `expr` never decreases as `row` grows (and depends on it), 0 if it does not
    depend on it (one value per program: a read of an input at `constant` variables
    too), -1 if it never increases, None if unknown."""
    if isinstance(expr, ir.Index):
        return 1 if expr.var == row else 0 if expr.var in constant else None
    if isinstance(expr, (ir.Const, ir.Dim, ir.Param)):
        return 0
    if isinstance(expr, ir.Read):
        return 0 if expr.tensor in inputs and all(
            isinstance(i, ir.Index) and i.var in constant for i in expr.indices) else None
    if not isinstance(expr, ir.Op):
        return None
    args = [_rising(a, row, constant, inputs) for a in expr.args]
    if None in args:
        return None
    if expr.op in ("+", "min", "max"):
        return _agree(args)
    if expr.op == "-":
        return _agree([args[0], -args[1]])
    if expr.op == "neg":
        return -args[0]
    if expr.op in ("*", "//"):
        # times (or floor-divided by) a positive number or a size keeps the direction
        factor = expr.args[1] if args[1] == 0 else expr.args[0] if expr.op == "*" else None
        moving = args[0] if args[1] == 0 else args[1]
        if factor is None or not _positive(factor):
            return None if moving else 0
        return moving
    return None


def _agree(directions: list[int]) -> int | None:
    moving = {d for d in directions if d}
    return None if len(moving) > 1 else moving.pop() if moving else 0
