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


@dataclass(frozen=True)
class Flag:
    """A compile-time constant the host computes per call: whether `param` is a finite
    positive number (`0 < param < inf`), under the kernel's name `name`."""
    name: str
    param: str


def folded_scales(statements: tuple) -> tuple[tuple, tuple[Flag, ...]]:
    """`statements` (a loop's body) with each per-program scale of a tile folded into the
    tile's readers, and the flags the host must compute for them."""
    scaled = {}
    for statement in statements:
        if isinstance(statement, k.Let):
            split = _scaled(statement.value)
            if split is not None:
                scaled[statement.name] = split
    flags: dict[str, Flag] = {}

    def fold(node):
        if isinstance(node, ir.Op) and node.op == "*" and isinstance(node.args[1], ir.Const) \
                and isinstance(node.args[0], k.Var) and node.args[0].name in scaled:
            tile, scale = scaled[node.args[0].name]
            return ir.Op("*", (tile, k.Group(ir.Op("*", (scale, node.args[1])))))
        if isinstance(node, k.Reduce) and node.op in ("max", "min"):
            name, unscaled = _reduced_tile(node.value, scaled)
            if name is None:
                return None
            tile, scale = scaled[name]
            folded = ir.Op("*", (k.Reduce(node.op, unscaled, node.axis), scale))
            if _positive(scale):
                return folded
            flag = flags.setdefault(scale.name, Flag(f"{scale.name}_POSITIVE", scale.name))
            return k.Specialized(flag.name, folded, node)
        return None

    return k.replaced(statements, fold), tuple(flags.values())


def _scaled(value):
    """(tile, scale) for `tile * scale` with `tile` a computed tile and `scale` one param
    or a positive expression of sizes; None otherwise."""
    if not (isinstance(value, ir.Op) and value.op == "*"):
        return None
    for tile, scale in (value.args, reversed(value.args)):
        if isinstance(tile, k.Var) and (isinstance(scale, ir.Param) or _positive(scale)):
            return tile, scale
    return None


def _reduced_tile(value, scaled: dict):
    """The scaled tile a max / min reduces (`QK`, or `where(ok, QK, identity)`) and the
    same value over the unscaled tile; (None, None) for anything else."""
    if isinstance(value, k.Var) and value.name in scaled:
        return value.name, scaled[value.name][0]
    if isinstance(value, ir.Op) and value.op == "where" and \
            isinstance(value.args[1], k.Var) and value.args[1].name in scaled and \
            isinstance(value.args[2], ir.Const) and value.args[2].value in (-math.inf, math.inf):
        name = value.args[1].name
        return name, ir.Op("where", (value.args[0], scaled[name][0], value.args[2]))
    return None, None


def _positive(scale) -> bool:
    """A positive finite expression of sizes and constants, by sympy (sizes are positive
    integers); a param's sign is the host's to test."""
    if any(not isinstance(n, (ir.Const, ir.Dim, ir.Op)) for n in k.nodes(scale)):
        return False
    value = Algebra().to_sympy(scale)
    return bool(value.is_positive) and bool(value.is_finite)
