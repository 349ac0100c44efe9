"""When a split schedule may skip a fully masked key tile: a proof with sympy.

In the split schedule (schedule/lower_attention.py, `_SplitLowering`) each step m1 of the
loop computes per-step reductions over its tile (LGM = max[m0] QK, LSD = sum[m0] LSN, ...)
and updates the recurrences carried across steps (RGM, RSD, RSNV). A tile whose every
term is masked (above the causal diagonal, before a sliding window) gives each per-step
reduction its identity (sum 0, max -inf, min +inf). Skipping the tile is right exactly
when such a step leaves every carried value unchanged. That is proved here, for the two
kinds of state a row can be in:

- *finite*: every carried value is a real number (the row has seen a present key).
  Each update, with the per-step reductions at their identities and the per-step values
  inlined, must simplify to the value itself: max(RG, -inf) = RG, exp(RG - RG) = 1,
  L + R * 1 = R with L = 0.
- *initial*: every carried value is its `init` (the row has seen no present key yet).
  The update must give the init again: FuseMax's own Cascade 5 fails this
  (exp(-inf - -inf) is NaN), the rewrite's guarded rescale passes it.

A row's state is one of the two: it starts initial, stays initial while its tiles are
masked, and becomes finite at its first present key. So a loop may start at the first
tile that holds a present key and stop after the last one.
"""

from __future__ import annotations

import sympy

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..transform.algebra import Algebra
from .model import Role

IDENTITY = {"sum": sympy.Integer(0), "max": -sympy.oo, "min": sympy.oo}


class _Unknown(Exception):
    """An operation the proof does not model: no skipping."""


def masked_steps_are_identities(cascade: Cascade, kinds: dict[str, Role],
                                loop: str) -> str | None:
    """None if a fully masked step leaves every carried value unchanged (in both states);
    else the reason it may not be skipped."""
    carried = [e for e in cascade.einsums if kinds.get(e.tensor) == Role.CARRIED]
    if not carried:
        return "nothing is carried across steps"
    try:
        for state in ("finite", "initial"):
            proof = _Step(cascade, kinds, loop, state)
            for einsum in carried:
                before = proof.state(einsum)
                after = proof.updated(einsum)
                if sympy.simplify(after - before) != 0 and after != before:
                    return (f"a masked step changes {einsum.tensor} from "
                            f"{before} to {after} ({state} state)")
    except _Unknown as unknown:
        return f"the step uses {unknown}, which the proof does not model"
    return None


class _Step(Algebra):
    """The values of one loop step with every tile term masked, as sympy expressions:
    the IR -> sympy translation of the rewrites' proofs, with reads resolved to their
    values in the step and `where` and comparisons interpreted (Piecewise, relations)
    rather than left opaque."""

    # Functions the proof interprets beyond Algebra's exp, log, sqrt, max and min.
    _INTERPRETED = {
        "abs": sympy.Abs, "tanh": sympy.tanh,
        "sigmoid": lambda x: 1 / (1 + sympy.exp(-x)), "relu": lambda x: sympy.Max(x, 0),
        "==": sympy.Eq, "!=": sympy.Ne, "<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt,
        ">=": sympy.Ge, "and": sympy.And, "or": sympy.Or, "not": sympy.Not,
        "where": lambda c, a, b: sympy.Piecewise((a, c), (b, True)),
    }

    def __init__(self, cascade: Cascade, kinds: dict[str, Role], loop: str, state: str):
        super().__init__()
        self.cascade, self.kinds, self.loop, self.state_kind = cascade, kinds, loop, state
        self.new: dict[str, sympy.Expr] = {}

    def state(self, einsum: Einsum) -> sympy.Expr:
        """A carried value at step m1, before the update."""
        if self.state_kind == "initial":
            return self.to_sympy(einsum.init)
        return self.symbol(("state", einsum.tensor), einsum.tensor, real=True)

    def updated(self, einsum: Einsum) -> sympy.Expr:
        if einsum.tensor not in self.new:
            if einsum.reduce_op is not None:
                raise _Unknown(f"a reduction in the recurrence {einsum.tensor}")
            self.new[einsum.tensor] = self.to_sympy(einsum.body)
        return self.new[einsum.tensor]

    def read(self, node: ir.Read) -> sympy.Expr:
        kind = self.kinds.get(node.tensor)
        if kind in (Role.TILE_REDUCE, Role.TILE_DOT):
            return IDENTITY[self.cascade.einsum(node.tensor).reduce_op]
        if kind == Role.CARRIED:
            einsum = self.cascade.einsum(node.tensor)
            position = node.indices[einsum.iterative]
            if position == ir.Index(self.loop):
                return self.state(einsum)
            if position == ir.Op("+", (ir.Index(self.loop), ir.Const(1))):
                return self.updated(einsum)
            raise _Unknown(f"{ir.to_text(node)} (a carried value at another step)")
        if kind == Role.TILE_ROW:
            return self.to_sympy(self.cascade.einsum(node.tensor).body)
        if kind in (Role.STREAM, Role.STREAM_DOT):
            raise _Unknown(f"{ir.to_text(node)} (a tile value outside a reduction)")
        # Inputs and row values: the same at every step, any real value.
        return super().read(node)

    def function(self, op: str, args: list) -> sympy.Expr:
        if op in self._INTERPRETED:
            return self._INTERPRETED[op](*args)
        if op in ("exp", "log", "sqrt", "max", "min"):
            return super().function(op, args)
        raise _Unknown(op)
