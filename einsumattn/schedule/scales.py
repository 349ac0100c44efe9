"""A key tile scaled by one value per program, folded into the tile's readers.

`QK = QK_sum * s` (s a param, or an expression of sizes) costs one multiply per score per
key tile. The readers the online softmax gives it take s for free:

* a constant factor, as the exponential that follows the max-shift has
  (schedule/shifts.py) and a sigmoid's argument (`-log2(e)`, kernel_ir.SigmoidExp2):
  `exp2(QK * log2(e) - B)` is `exp2(QK_sum * (s * log2(e)) - B)`, one FFMA per score with
  the per-program product `s * log2(e)` (the tutorial's `qk_scale`). The two roundings
  differ by at most an ulp of the exponent, as the exp2 form itself does;
* the max (or min) over the keys: `max[m] QK = s * max[m] QK_sum` where `0 < s < inf`.
  Rounding to nearest is monotonic, so `fl(s * max x) = max fl(s * x)` bit for bit; a
  masked score's -inf stays -inf and a NaN stays a NaN. For any other s (negative, 0,
  inf, NaN) it is not the same, so the kernel holds both forms and the host picks one per
  call with a flag (`<param>_POSITIVE`, a compile-time constant: a call with another
  scale compiles the other form once). A positive expression of sizes (`1 / sqrt(E)`)
  needs no flag.

Where every reader is folded the scaled tile is never used, and Triton's compiler drops
it. Only a scale that is one param or a provably positive expression of sizes and
constants is folded (the host tests the param itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import expr as ir
from ..transform.algebra import Algebra
from . import kernel_ir as k
from .biases import per_row


@dataclass(frozen=True)
class Flag:
    """A compile-time constant the host computes per call: whether `param` is a finite
    positive number (`0 < param < inf`), under the kernel's name `name`."""
    name: str
    param: str


@dataclass(frozen=True)
class _Scaled:
    """A tile's value `tile * scale + offset` (scale None: 1; offset None: 0, else one
    value per row, [rows, 1]) where the host's flag `flag` holds (None: always)."""
    tile: k.Var
    scale: object
    offset: object = None
    flag: str | None = None


def folded_scales(statements: tuple) -> tuple[tuple, tuple[Flag, ...]]:
    """`statements` (a loop's body) with each per-program scale of a tile folded into the
    tile's readers, and the flags the host must compute for them. A tile with a value per
    row added (schedule/biases.py: a score's term taken by the matrix unit) folds the
    same way, its row value joining the reader's own (one FFMA per score)."""
    scaled = {}
    for statement in statements:
        if isinstance(statement, k.Let):
            split = _scaled(statement.value)
            if split is not None:
                scaled[statement.name] = split
    flags: dict[str, Flag] = {}

    def under(form: _Scaled, folded, node):
        return folded if form.flag is None else k.Specialized(form.flag, folded, node)

    def fold(node):
        if isinstance(node, ir.Op) and node.op == "-" and _times_const(node.args[0], scaled):
            form, const = _times_const(node.args[0], scaled)
            if form.offset is not None:      # (tile*s + B) * c - Y = tile*(s*c) + (B*c - Y)
                row = k.Group(ir.Op("-", (ir.Op("*", (form.offset, const)), node.args[1])))
                return under(form, ir.Op("+", (_scaled_by(form, const), row)), node)
            return None
        if _times_const(node, scaled):
            form, const = _times_const(node, scaled)
            folded = _scaled_by(form, const)
            if form.offset is not None:
                folded = ir.Op("+", (folded, k.Group(ir.Op("*", (form.offset, const)))))
            return under(form, folded, node)
        if isinstance(node, k.Reduce) and node.op in ("max", "min"):
            name, unscaled = _reduced_tile(node.value, scaled)
            if name is None:
                return None
            form = scaled[name]
            folded = k.Reduce(node.op, unscaled, node.axis)
            if form.scale is not None:
                folded = ir.Op("*", (folded, form.scale))
            if form.offset is not None:
                folded = ir.Op("+", (folded, per_row(form.offset)))
            if form.flag is not None:        # its flag holds only for 0 < s < inf
                return k.Specialized(form.flag, folded, node)
            if form.scale is None or _positive(form.scale):
                return folded
            flag = flags.setdefault(form.scale.name,
                                    Flag(f"{form.scale.name}_POSITIVE", form.scale.name))
            return k.Specialized(flag.name, folded, node)
        return None

    return k.replaced(statements, fold), tuple(flags.values())


def _times_const(node, scaled: dict):
    """(the scaled tile's form, c) for `T * c`, T a scaled tile, c a constant."""
    if isinstance(node, ir.Op) and node.op == "*" and isinstance(node.args[1], ir.Const) \
            and isinstance(node.args[0], k.Var) and node.args[0].name in scaled:
        return scaled[node.args[0].name], node.args[1]
    return None


def _scaled_by(form: _Scaled, const):
    """The tile times its scale times `const`, the product of the two one value."""
    factor = const if form.scale is None else k.Group(ir.Op("*", (form.scale, const)))
    return ir.Op("*", (form.tile, factor))


def _scaled(value):
    """The form of `tile * scale` with `tile` a computed tile and `scale` one param or a
    positive expression of sizes, or of a biased score (`Specialized(flag, tile * scale +
    B, ...)`, schedule/biases.py); None otherwise."""
    if isinstance(value, k.Specialized) and isinstance(value.if_true, ir.Op) and \
            value.if_true.op == "+":
        body, offset = value.if_true.args
        if isinstance(body, k.Var):
            return _Scaled(body, None, offset, value.flag)
        inner = _scaled(body)
        if inner is not None and inner.offset is None and inner.flag is None:
            return _Scaled(inner.tile, inner.scale, offset, value.flag)
        return None
    if not (isinstance(value, ir.Op) and value.op == "*"):
        return None
    for tile, scale in (value.args, reversed(value.args)):
        if isinstance(tile, k.Var) and (isinstance(scale, ir.Param) or _positive(scale)):
            return _Scaled(tile, scale)
    return None


def _reduced_tile(value, scaled: dict):
    """The scaled tile a max / min reduces (`QK`, or `where(ok, QK, identity)`) and the
    same value over the unscaled tile; (None, None) for anything else."""
    if isinstance(value, k.Var) and value.name in scaled:
        return value.name, scaled[value.name].tile
    if isinstance(value, ir.Op) and value.op == "where" and \
            isinstance(value.args[1], k.Var) and value.args[1].name in scaled and \
            isinstance(value.args[2], ir.Const) and value.args[2].value in (-math.inf, math.inf):
        name = value.args[1].name
        return name, ir.Op("where", (value.args[0], scaled[name].tile, value.args[2]))
    return None, None


def _positive(scale) -> bool:
    """A positive finite expression of sizes and constants, by sympy (sizes are positive
    integers); a param's sign is the host's to test."""
    if any(not isinstance(n, (ir.Const, ir.Dim, ir.Op)) for n in k.nodes(scale)):
        return False
    value = Algebra().to_sympy(scale)
    return bool(value.is_positive) and bool(value.is_finite)
