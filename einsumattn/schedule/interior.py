"""Interior key tiles: the steps of a split key loop where every mask of the tile is true,
lowered once more without them.

A tile of keys is interior for a program's rows when it lies wholly inside the key rank
(`(m1 + 1) * M0 <= M`) and wholly inside every affine filter of the step's terms for
every row of the program (`key <= row + c`: its last key at most the first row + c;
`key >= row + c`: its first key at least the last row + c). There every `lanes`, `_ok`
and key mask of the step is true, so the step is the same computation without them: the
where() that pick a reduction's identity, the per-key masks of the V tile and the row
masks cost nothing (what the tutorial's unmasked off-band loop saves). Rows past the rank
(the last row tile's padding) compute values that are never stored; rows are
independent. Addresses keep their clamps, so no load leaves its tensor.

Sound only where every condition of the step's terms is one of those: anything else (a
mask read from an input, a per-row absence) leaves the loop as it was.
"""

from __future__ import annotations

from ..analysis.presence import Condition
from ..ir import expr as ir
from . import kernel_ir as k
from .bounds import stream_bound
from .masks import range_comparisons

TRUE = k.Mask(())


def interior_bounds(roles, einsums) -> list | None:
    """The affine bounds ('upper'/'lower', offset) every condition of the step's terms
    reduces to, or None where one is not such a bound (then no tile is interior)."""
    found = []
    in_rank = set(roles.split_key_in_rank())   # a key of a full tile is in its rank
    for einsum in einsums:
        for condition in roles.leaf_conditions(einsum) + \
                roles.leaf_conditions(einsum, points=True):
            if roles.said_by_live_keys(condition):
                continue
            for part in range_comparisons(condition):
                if part.expr in in_rank:
                    continue
                if part.kind != "filter" or any(part.parts):
                    return None
                bound = _bound(roles, part)
                if bound is None:
                    return None
                found.append(bound)
    return list(dict.fromkeys(found))


def _bound(roles, condition: Condition):
    expr = condition.expr
    if not (set(ir.index_vars(expr)) <= {roles.row, roles.stream, roles.loop}):
        return None
    return stream_bound(roles.keyed(expr), roles.stream, roles.row)


def without_masks(statements: tuple, lanes: str, row_live: str, keys: str) -> tuple | None:
    """The step's statements with every mask of the tile true: `lanes`, the spec's tests,
    the live-key tests (`key < keys`) and the row mask; what they guarded stays. None
    where a statement still names a mask it dropped (a form this does not fold)."""
    env: dict[str, object] = {}
    out = []
    fold = _Folding(env, row_live, keys)
    for statement in statements:
        if isinstance(statement, k.Let):
            value = TRUE if statement.name == lanes else fold(statement.value)
            if _is_true(value):
                env[statement.name] = TRUE
                continue
            out.append(k.Let(statement.name, value, statement.note))
        elif isinstance(statement, k.Accumulate):
            out.append(k.Accumulate(statement.name, statement.op, fold(statement.value)))
        elif isinstance(statement, k.Comment):
            out.append(statement)
        else:
            return None
    named = {n.name for n in k.nodes(tuple(out)) if isinstance(n, k.Var)}
    return None if named & (set(env) | {row_live}) else tuple(out)


def _is_true(value) -> bool:
    return isinstance(value, k.Mask) and not value.conditions


class _Folding:
    """`node` with the tile's masks true, and what that makes trivial folded."""

    def __init__(self, env: dict, row_live: str, keys: str):
        self.env, self.row_live, self.keys = env, row_live, keys

    def _key_range(self, node) -> bool:
        """`key < M`, the live keys (not a held feature's end, `e < E`)."""
        return isinstance(node, k.Integer) and isinstance(node.value, ir.Op) and \
            node.value.op == "<" and node.value.args[1] == ir.Dim(self.keys)

    def __call__(self, node):
        fold = self
        if isinstance(node, k.Var):
            return TRUE if node.name == self.row_live else self.env.get(node.name, node)
        if isinstance(node, k.Test) or self._key_range(node):
            return TRUE
        if isinstance(node, k.Mask):
            kept = [c for c in map(fold, node.conditions) if not _is_true(c)]
            return k.Mask(tuple(kept))
        if isinstance(node, (k.Expand, k.Boolean)):
            value = fold(node.value)
            if _is_true(value):
                return TRUE
            return k.Expand(value, node.axes) if isinstance(node, k.Expand) else k.Boolean(value)
        if isinstance(node, k.Load):
            mask = None if node.mask is None else fold(node.mask)
            if mask is not None and _is_true(mask):
                mask = None      # clamped addresses: every lane reads inside its tensor
            return k.Load(node.tensor, node.coordinates, mask, node.flag, node.raw)
        if isinstance(node, ir.Op):
            args = tuple(map(fold, node.args))
            if node.op == "where" and _is_true(args[0]):
                return args[1]
            return ir.Op(node.op, args)
        if isinstance(node, k.Reduce):
            return k.Reduce(node.op, fold(node.value), node.axis)
        if isinstance(node, k.Dot):
            return k.Dot(fold(node.left), fold(node.right), node.transposed, node.rounded,
                         node.precision, node.converted)
        if isinstance(node, (k.Exp2, k.DotOperand, k.Group)):
            return type(node)(fold(node.value))
        if isinstance(node, k.Cast):
            return k.Cast(fold(node.value), node.dtype)
        return node
