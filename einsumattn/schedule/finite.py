"""The -inf guards of a running max that an interior key tile does without.

The online rewrite (transform/online.py) guards its running max R so that a row whose
every score so far is absent (-inf) holds 0 rather than NaN (`exp(-inf - -inf)`):

    S = where(R == -inf, 0, R)                          the shift of the step
    C = where(R_at == -inf, 0, exp(R_at - S))           the rescale of the sums so far

where R = max(R_at, max over the tile's keys of the scores). On an interior tile
(schedule/interior.py) every score of the tile is present, and where each score is
computed from finite values only (the tile of the dot of Q and K, params, constants and
indices, through +, -, *, max, exp, tanh, ...: no load of an input into the score, which
may hold a -inf mask), the tile's max is finite, so R is finite: S = R, and C's guard
only replaces exp(-inf - S) = 0 by 0. The step drops both guards there, as
FlashAttention's unmasked blocks and Triton's tutorial do (on the H100 at a 128 x 64
tile, 4 warps: 16 FSETP/FSEL per thread per tile).

Exact where Q, K and the params are finite (a param that divides, nonzero) and no score
overflows float32. A key whose
K holds inf can give a row -inf at that key; a whole interior tile of such keys for one
row then gives NaN where the oracle gives the other keys' softmax (the limitation of
FlashAttention's kernels; docs/codegen.md). Masked tiles keep their guards.
"""

from __future__ import annotations

import math

from ..ir import expr as ir
from . import kernel_ir as k
from .shifts import guarded

# Ops whose value is finite where their arguments are (up to float32 overflow).
_CLOSED = {"+", "-", "*", "neg", "max", "min", "exp", "tanh", "sigmoid", "abs", "where",
           "softplus", "logsigmoid", "expm1", "silu", "erf"}


def finite_shifts(statements: tuple, before: dict) -> tuple:
    """An interior step's statements with the guards of each running max over finite
    scores dropped (the module's docstring says when that is exact); `before`: the values
    made before the loop, by name (a slope, the Q tile)."""
    values = {**before, **{s.name: s.value for s in statements if isinstance(s, k.Let)}}
    finite_maxima = {name for name, value in values.items() if _finite_max(value, values)}
    shifts = set()
    out = []
    for statement in statements:
        found = guarded(statement.value) if isinstance(statement, k.Let) else None
        if found is not None:
            tested, kept = found
            if _is_var(tested) and tested == kept and tested.name in finite_maxima:
                shifts.add(statement.name)                   # S = R
            elif not (_is_var(tested) and _vanishes(kept, tested, shifts)):
                kept = None                                  # C = exp(R_at - S)
            if kept is not None:
                statement = k.Let(statement.name, kept, _UNGUARDED)
        out.append(statement)
    return tuple(out)


_UNGUARDED = "no -inf guard: the tile's scores are finite (schedule/finite.py)"


def _is_var(node) -> bool:
    return isinstance(node, k.Var)


def _finite_max(value, values: dict) -> bool:
    """Whether `value` is `max(R_at, L)` with L a max over a tile of finite scores."""
    if not (isinstance(value, ir.Op) and value.op == "max" and len(value.args) == 2):
        return False
    return any(_is_var(arg) and _tile_max(values.get(arg.name), values)
               for arg in value.args)


def _tile_max(value, values: dict) -> bool:
    """A max over the tile's keys of finite scores (in each specialized form), possibly
    scaled and shifted by finite row values (schedule/scales.py's folded forms)."""
    if isinstance(value, k.Specialized):
        return _tile_max(value.if_true, values) and _tile_max(value.if_false, values)
    if isinstance(value, k.Reduce):
        return value.op == "max" and _finite(value.value, values)
    if isinstance(value, ir.Op) and value.op in ("+", "*") and len(value.args) == 2:
        first, second = value.args
        return (_tile_max(first, values) and _finite(second, values)) or \
            (_tile_max(second, values) and _finite(first, values))
    return False


def _finite(node, values: dict, depth: int = 12) -> bool:
    """Whether `node` is finite where Q, K and the params are (up to overflow): names
    are followed to their values (one made before the loop may be an earlier pass's
    -inf), a load of an input is not known finite (it may hold a -inf mask)."""
    if depth == 0:
        return False
    again = depth - 1
    if isinstance(node, ir.Const):
        return math.isfinite(node.value)
    if isinstance(node, (ir.Param, ir.Dim, ir.Index, k.Integer, k.IndexBlock, k.Arange)):
        return True
    if isinstance(node, k.Var):
        return node.name in values and _finite(values[node.name], values, again)
    if isinstance(node, (k.Expand, k.Group, k.Cast)):
        return _finite(node.value, values, again)
    if isinstance(node, k.Specialized):
        return _finite(node.if_true, values, again) and _finite(node.if_false, values, again)
    if isinstance(node, k.Reduce):
        return _finite(node.value, values, again)
    if isinstance(node, k.Dot):
        # The products of two tiles read from Q and K (or made before the loop from
        # sizes and params: schedule/biases.py's exact operands), plus the accumulator.
        return node.acc is None or _finite(node.acc, values, again)
    if isinstance(node, ir.Op) and node.op in _CLOSED:
        args = node.args[1:] if node.op == "where" else node.args
        return all(_finite(arg, values, again) for arg in args)
    if isinstance(node, ir.Op) and node.op == "/":
        # A size is at least 1; a param that divides is taken to be nonzero.
        numerator, denominator = node.args
        return _finite(numerator, values, again) and (
            isinstance(denominator, (ir.Dim, ir.Param)) or
            (isinstance(denominator, ir.Const) and denominator.value != 0
             and math.isfinite(denominator.value)))
    if isinstance(node, ir.Op) and node.op == "**":
        # A power of a positive constant (ALiBi's slope 2 ** (-8 (h + 1) / H)).
        base, exponent = node.args
        return isinstance(base, ir.Const) and 0 < base.value < math.inf and \
            _finite(exponent, values, again)
    return False


def _vanishes(kept, tested: k.Var, shifts: dict) -> bool:
    """Whether `kept` is `exp(R_at * c - S')` with c > 0 and S' a finite shift (times a
    constant): at R_at = -inf it is exp(-inf) = 0, what the guard gives."""
    if not isinstance(kept, k.Exp2) and not (isinstance(kept, ir.Op) and kept.op == "exp"):
        return False
    exponent = kept.value if isinstance(kept, k.Exp2) else kept.args[0]
    if not (isinstance(exponent, ir.Op) and exponent.op == "-" and len(exponent.args) == 2):
        return False
    scaled, shift = exponent.args
    if scaled != tested and not (
            isinstance(scaled, ir.Op) and scaled.op == "*" and scaled.args[0] == tested
            and isinstance(scaled.args[1], ir.Const) and scaled.args[1].value > 0):
        return False
    if isinstance(shift, ir.Op) and shift.op == "*" and isinstance(shift.args[1], ir.Const) \
            and math.isfinite(shift.args[1].value):
        shift = shift.args[0]
    return _is_var(shift) and shift.name in shifts
