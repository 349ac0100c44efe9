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
independent. Addresses keep their clamps, and a load at the rows reads them clamped into
their rank (`rows_clamped`, in every loop) or keeps the row mask, so no load leaves its
tensor.

Sound only where every condition of the step's terms is one of those: anything else (a
mask read from an input, a per-row absence) leaves the loop as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..analysis.presence import Condition
from ..ir import expr as ir
from . import kernel_ir as k
from .bounds import stream_bound
from ..ir.expr import total
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


def without_masks(statements: tuple, lanes: str, row_live: str, keys: str,
                  rows: tuple[str, ...] = ()) -> tuple | None:
    """The step's statements with every mask of the tile true: `lanes`, the spec's tests,
    the live-key tests (`key < keys`) and the row mask; what they guarded stays. A load
    that still reads the rows (`rows`: their index variables) unclamped keeps the row mask
    (its part of `lanes` too): see `rows_clamped`. None where a statement still names a
    mask it dropped (a form this does not fold)."""
    env: dict[str, object] = {}
    rows_env: dict[str, object] = {}      # what a dropped mask keeps for such loads
    out = []
    fold_rows = _Folding(rows_env, row_live, keys, keep_rows=True)
    fold = _Folding(env, row_live, keys, loads=(fold_rows, frozenset(rows)))
    for statement in statements:
        if isinstance(statement, k.Let):
            value = TRUE if statement.name == lanes else fold(statement.value)
            if _is_true(value):
                env[statement.name] = TRUE
                rows_env[statement.name] = fold_rows(statement.value)
                continue
            out.append(k.Let(statement.name, value, statement.note))
        elif isinstance(statement, k.Accumulate):
            out.append(k.Accumulate(statement.name, statement.op, fold(statement.value)))
        elif isinstance(statement, k.Comment):
            out.append(statement)
        else:
            return None
    named = {n.name for n in k.nodes(_without_load_masks(tuple(out))) if isinstance(n, k.Var)}
    return None if named & (set(env) | {row_live}) else tuple(out)


def _without_load_masks(body: tuple) -> tuple:
    """The statements with their loads' masks left out (where the row mask may stay)."""
    return k.replaced(body, lambda node: dataclasses.replace(node, mask=None)
                      if isinstance(node, k.Load) else None)


def _reads_rows(load: k.Load, rows: frozenset) -> bool:
    """Whether a load's coordinates name a row index variable."""
    return any(isinstance(n, (k.Var, k.IndexBlock)) and n.name in rows
               for c in load.coordinates for n in k.nodes(c))


def rows_clamped(statements: tuple, clamped_rows: dict) -> tuple:
    """A loop body's loads that read the rows at one of a tensor's strided positions (not
    its last), reading them clamped into their rank (`clamped_rows`: the row index
    variables -> a function giving the clamped block, one value per row, computed before
    the loops). The rows past the rank in the last row tile compute values that are never
    stored, but a load at such a row would read past its tensor where a loop without masks
    drops the row mask (linear attention's Q over its feature tiles, the backward's dAV
    and AV over theirs). A masked loop keeps the mask and reads the same in-bounds
    addresses, so both loops share one pointer block and the loop computes nothing more
    (a row mask kept instead held registers: linear attention's second stage spilled).
    At the last position, the contiguous one where inputs are, a clamp would cost the
    loads their vector width (the clamped block is not contiguous): there the loop
    without masks keeps the row mask (without_masks)."""
    def clamp(node):
        if isinstance(node, k.IndexBlock) and node.name in clamped_rows:
            rows = clamped_rows[node.name]()
            return k.Expand(rows, node.axes) if node.axes else rows
        return None

    def load(node):
        if not isinstance(node, k.Load):
            return None
        last = len(node.coordinates) - 1
        return dataclasses.replace(node, coordinates=tuple(
            c if c.key or position == last else
            dataclasses.replace(c, index=k.replaced(c.index, clamp))
            for position, c in enumerate(node.coordinates)))
    return tuple(k.replaced(statement, load) for statement in statements)


def _is_true(value) -> bool:
    return isinstance(value, k.Mask) and not value.conditions


class _Folding:
    """`node` with the tile's masks true, and what that makes trivial folded
    (`keep_rows`: all but the row mask; `loads`: (the folding, the row variables) for
    the masks of loads that read the rows)."""

    def __init__(self, env: dict, row_live: str, keys: str, keep_rows: bool = False,
                 loads=None):
        self.env, self.row_live, self.keys = env, row_live, keys
        self.keep_rows, self.loads = keep_rows, loads

    def _key_range(self, node) -> bool:
        """`key < M`, the live keys (not a held feature's end, `e < E`)."""
        return isinstance(node, k.Integer) and isinstance(node.value, ir.Op) and \
            node.value.op == "<" and node.value.args[1] == ir.Dim(self.keys)

    def __call__(self, node):
        return k.replaced(node, self._fold)

    def _fold(self, node):
        """The folded node where a mask makes it trivial; None: its parts are folded."""
        if isinstance(node, k.Var):
            if node.name == self.row_live:
                return node if self.keep_rows else TRUE
            return self.env.get(node.name, node)
        if isinstance(node, k.Test) or self._key_range(node):
            return TRUE
        if isinstance(node, k.Mask):
            kept = [c for c in map(self, node.conditions) if not _is_true(c)]
            return k.Mask(tuple(kept))
        if isinstance(node, (k.Expand, k.Boolean)):
            value = self(node.value)
            if _is_true(value):
                return TRUE
            return k.Expand(value, node.axes) if isinstance(node, k.Expand) else k.Boolean(value)
        if isinstance(node, k.Load):
            folding = self
            if self.loads is not None and _reads_rows(node, self.loads[1]):
                folding = self.loads[0]
            mask = None if node.mask is None else folding(node.mask)
            if mask is not None and _is_true(mask):
                mask = None      # clamped addresses: every lane reads inside its tensor
            # The streamed key of an interior tile is in its rank: no clamp.
            coordinates = tuple(k.Coordinate(self(c.index), None, True) if c.key else
                                self(c) for c in node.coordinates)
            return dataclasses.replace(node, coordinates=coordinates, mask=mask)
        if isinstance(node, ir.Op) and node.op == "where":
            args = tuple(map(self, node.args))
            return args[1] if _is_true(args[0]) else ir.Op("where", args)
        return None


def masked_keys(statements: tuple) -> tuple:
    """A masked step's loads with the streamed key's clamp (into the key rank, kernel
    IR `Coordinate.key`) traded for a mask of the keys in the rank: a lane past the rank
    reads 0 instead of the last key's value (every value at such a key is masked before
    it is used, as it was), and the address is free to be advanced (`advanced`)."""
    def unclamp(node):
        if not isinstance(node, k.Load) or node.flag or \
                not any(c.key and c.clamp is not None for c in node.coordinates):
            return None
        live = [k.Integer(ir.Op("<", (c.index, c.clamp))) for c in node.coordinates
                if c.key and c.clamp is not None]
        coordinates = tuple(k.Coordinate(c.index, None, True) if c.key else c
                            for c in node.coordinates)
        return dataclasses.replace(node, coordinates=coordinates,
                                   mask=k.Mask((*live, *([node.mask] if node.mask else []))))

    return k.replaced(statements, unclamp)


@dataclass(frozen=True)
class NarrowOffsets:
    """A compile-time flag the host computes per call: whether every tile offset of the
    advanced loads fits in 32 bits, `sum((block - 1) * |stride|) < 2**31` over `terms`
    ((tensor, position, block knob): a coordinate's values are 0 .. block - 1). Where it
    does not (a stride past 2**31 / block), the kernel takes its 64-bit offsets."""
    name: str
    terms: tuple[tuple[str, int, str], ...]


@dataclass(frozen=True)
class NarrowIndices:
    """A compile-time flag the host computes per call: whether the index arithmetic that
    starts from the program's rows and a tile's keys (`narrowed_indices`) fits in 32
    bits. The lowering only marks those definitions; which values the kernel then
    computes in 32 bits, and their bounds, are the target's business (the Triton
    printer's types: backends/triton_indices.py), and so is the host's test."""
    name: str


def narrowed_indices(body: tuple, names: set[str], flag: str) -> tuple:
    """`body` with each `Let` of a name in `names` whose value widens to int64 (the row
    tile `p = program * BLOCK + arange`, a step's keys `arange`) defined both ways:
    in 32 bits where the host's `flag` holds, else in int64 as before. Everything those
    values reach (masks, the keys' tests against the rows) follows their type."""
    def narrow(node):
        if not isinstance(node, k.Let) or node.name not in names:
            return None
        slim = _narrowed(node.value)
        if slim == node.value:
            return node
        return dataclasses.replace(node, value=k.Specialized(flag, slim, node.value))

    return k.replaced(body, narrow)


def advanced(statements: tuple, loop, blocks: dict, hoist, bounded: dict | None = None,
             narrow=None) -> tuple[tuple, tuple]:
    """`statements` (a loop's body over `loop`, an index or variable node) with each load
    whose every coordinate is unclamped and splits into terms that move with the loop
    (one value per program) and terms that do not, read at addresses computed before
    the loop, moved by the moving terms each step (Advance):

    * where the terms that do not move are per-program values and blocks of known size
      (`bounded`: a block's name -> its knob; an arange), a 64-bit base pointer (the
      per-program part, `hoist(Pointers, name)`) plus a tile of offsets in 32 bits (four
      registers and one 64-bit add per address; `narrow(tensor, terms)` names the host's
      flag that says they fit, else the kernel takes 64-bit offsets);
    * else a block of 64-bit pointers.

    Where the offset that moves is linear in the loop variable, the base pointer is
    carried across the steps instead (`Carried`, `carried_loop`).

    `blocks`: the blocks the loop defines, name -> (the part that moves, or None; the
    part that does not), so `m = start + arange` splits; a coordinate naming any other
    value the loop defines stays as it is."""
    defined = {s.name for s in statements if isinstance(s, k.Let)}
    bounded = bounded or {}

    def advance(node):
        parts = _parts(node, blocks)
        if parts is None:
            return None
        fixed, tiles, steps = [], [], []
        for position, (scalars, tile) in enumerate(parts):
            if any(loop in k.nodes(t) for t in tile):
                return None         # a block that moves with the loop: not a step offset
            moving = [t for t in scalars if loop in k.nodes(t)]
            still = [t for t in scalars if loop not in k.nodes(t)] + tile
            if any(isinstance(n, (k.Var, k.IndexBlock)) and n.name in defined
                   for t in still for n in k.nodes(t)):
                return None
            fixed.append(still)
            tiles.append(tile)
            if moving:
                steps.append((position, total(moving)))
        tensor, steps = node.tensor, tuple(steps)
        knobs = [(position, _block_knob(t, bounded)) for position, terms in enumerate(tiles)
                 for t in terms]
        if narrow is None or not knobs or any(knob is None for _, knob in knobs):
            pointers = hoist(k.Pointers(tensor, _coordinates(fixed)), f"{tensor}_tile")
            return dataclasses.replace(node, address=k.Advance(pointers, tensor, steps))
        base = hoist(k.Pointers(tensor, _coordinates(
            [[t for t in terms if t not in tile] for terms, tile in zip(fixed, tiles)])),
            f"{tensor}_base")
        flag = narrow(tensor, tuple(knobs))
        offsets = hoist(k.Specialized(flag, k.Offsets(tensor, _coordinates(tiles, _narrowed)),
                                      k.Offsets(tensor, _coordinates(tiles, _widened))),
                        f"{tensor}_offsets")
        rates = tuple((position, _rate(offset, loop)) for position, offset in steps)
        if any(rate is None for _, rate in rates):
            return dataclasses.replace(node, address=ir.Op("+", (
                k.Advance(base, tensor, steps), offsets)))
        same = sum(c.tensor == tensor for c in carried.values())
        found = carried.setdefault((base, rates), Carried(
            f"{tensor}_at" + (str(same + 1) if same else ""), base, tensor, rates))
        return dataclasses.replace(node, address=ir.Op("+", (k.Var(found.name), offsets)))

    carried: dict = {}
    body = tuple(k.replaced(statement, advance) for statement in statements)
    return body, tuple(carried.values())


@dataclass(frozen=True)
class Carried:
    """A base pointer carried across a loop's steps (`name`): `base` moved to the loop's
    first step before it, and by one step's offset at the end of each: per position of
    `tensor`, the offset's rate (the loop variable's coefficient) times the step, times
    the stride. One 64-bit add per step, where computing the offset from the loop
    variable each step takes a 64-bit multiply too."""
    name: str
    base: object
    tensor: str
    rates: tuple


def carried_loop(var: str, loop, start, stop, step, body: tuple, carried) -> list:
    """`for var in range(start, stop, step)` around `body` (`loop`: the variable as the
    body names it), its carried base pointers set before it and moved after each step."""
    moved = step if step is not None else ir.Const(1)
    first = [k.Let(c.name, k.Advance(c.base, c.tensor, tuple(
        (position, _times(rate, start)) for position, rate in c.rates
        if not _is_zero(start)))) for c in carried]
    after = [k.Let(c.name, k.Advance(k.Var(c.name), c.tensor, tuple(
        (position, _times(rate, moved)) for position, rate in c.rates))) for c in carried]
    return first + [k.Loop(var, start, stop, step, tuple(body) + tuple(after))]


def _rate(offset, loop):
    """The coefficient of `loop` in an offset linear in it (`loop`, `loop * c`, `c *
    loop`, c free of it), or None."""
    if offset == loop:
        return ir.Const(1)
    if isinstance(offset, ir.Op) and offset.op == "*":
        a, b = offset.args
        for x, c in ((a, b), (b, a)):
            if x == loop and loop not in k.nodes(c):
                return c
    return None


def _times(rate, value):
    if rate == ir.Const(1):
        return value
    return rate if value == ir.Const(1) else ir.Op("*", (value, rate))


def _is_zero(value) -> bool:
    return value in (ir.Const(0), k.Integer(ir.Const(0)))


@dataclass(frozen=True)
class TmaLoads:
    """A compile-time flag the host computes per call (`name`): whether the GPU's
    tensor memory accelerator reads `descriptors` ((tensor, block per position: a knob
    or None for 1)), which the host then passes as `<tensor>_desc`."""
    name: str
    descriptors: tuple


def described(statements: tuple, blocks: dict, bounded: dict, flag: str, note) -> tuple:
    """A step's 2-D tile loads (a K or V tile) also as TMA loads
    (kernel IR `Described`), chosen by the host's `flag` per call (`Specialized`: the
    tensors' strides and alignment must suit the GPU's tensor memory accelerator).
    A load qualifies where each coordinate is unclamped and is one block of known size
    (an arange, a held feature's block) plus values per program, the two blocks in the
    tile's order. Its mask's held features' ends and the key's end are the tensor's
    own (a TMA read past them gives 0); any other condition (the keys no row of the
    tile sees) zeroes the tile after the read. `note(tensor, block)` records a
    descriptor the host must make."""
    def describe(node):
        parts = _parts(node, blocks)
        if parts is None:
            return None
        starts, block, axes = [], [], []
        for scalars, tiles in parts:
            knob = _block_knob(tiles[0], bounded) if len(tiles) == 1 else None
            if tiles and knob is None:
                return None
            if tiles:
                axes.append(_axes(tiles[0]))
            starts.append(total(scalars) if scalars else ir.Const(0))
            block.append(knob)
        if axes not in ([(True, False), (False, True)],):
            return None
        conditions = () if node.mask is None else _flat(node.mask.conditions)
        kept = tuple(c for c in conditions if not _tensor_end(c, node.coordinates))
        note(node.tensor, tuple(block))
        tma = dataclasses.replace(node, mask=None, address=k.Described(
            node.tensor, tuple(starts), tuple(block)))
        if kept:        # a mask beyond the tensor's ends (keys no row sees): applied
            tma = ir.Op("where", (k.Mask(kept), tma, ir.Const(0.0)))
        return k.Specialized(flag, tma, node)

    return tuple(k.replaced(statement, describe) for statement in statements)


def _axes(term) -> tuple:
    """The tile axes a block term lies along (its outermost broadcast)."""
    while isinstance(term, k.Cast):
        term = term.value
    return tuple(term.axes) if isinstance(term, (k.Expand, k.IndexBlock)) else ()


def _flat(conditions) -> tuple:
    """A conjunction's conditions, those of the masks inside it included."""
    return tuple(c for condition in conditions for c in (
        _flat(condition.conditions) if isinstance(condition, k.Mask) else (condition,)))


def _tensor_end(condition, coordinates) -> bool:
    """`i < n` for a coordinate `i` of the load itself that is the streamed key (`m`,
    `m1 * M0 + m0`) or a held feature's block (`e`): past the tensor's end there, which
    a TMA read gives as 0."""
    axes = ()
    if isinstance(condition, k.Expand):
        condition, axes = condition.value, condition.axes
    value = condition.value if isinstance(condition, k.Integer) else None
    if not (isinstance(value, ir.Op) and value.op == "<" and isinstance(value.args[1], ir.Dim)):
        return False
    index = value.args[0]
    if isinstance(index, k.Var):
        index = k.IndexBlock(index.name, axes)
    return any(c.index == index and (c.key or isinstance(c.index, k.IndexBlock))
               for c in coordinates)


def _parts(node, blocks: dict):
    """Per coordinate of a tensor's load, its terms one value per program and its terms
    that are blocks (a block the loop defines split as `blocks` says); None for anything
    else (not a load, a presence flag's, one already reading at an address) and where a
    coordinate is clamped (its sum is not its terms' sum)."""
    if not isinstance(node, k.Load) or node.flag or node.address is not None:
        return None
    parts = []
    for coordinate in node.coordinates:
        if coordinate.clamp is not None:
            return None
        terms = _terms(k.replaced(coordinate.index, lambda n: _split_block(n, blocks)))
        parts.append(([t for t in terms if _per_program(t)],
                      [t for t in terms if not _per_program(t)]))
    return parts


def _coordinates(terms_per_position, form=lambda term: term) -> tuple:
    """Coordinates summing each position's terms (0 where there is none)."""
    return tuple(k.Coordinate(total([form(t) for t in terms]) if terms else ir.Const(0))
                 for terms in terms_per_position)


def _block_knob(term, bounded: dict):
    """The knob of a block whose values are 0 .. knob - 1 (an arange, a held feature's
    block), broadcast or widened; None for any other term."""
    while isinstance(term, (k.Expand, k.Cast)):
        term = term.value
    if isinstance(term, k.Arange):
        return term.size
    if isinstance(term, k.IndexBlock):
        return bounded.get(term.name)
    return None


def _narrowed(term):
    """A tile term in the index arithmetic's own 32 bits (its int64 casts dropped)."""
    return k.replaced(term, lambda n: _narrowed(n.value)
                      if isinstance(n, k.Cast) and n.dtype == "int64" else None)


def _widened(term):
    return k.Cast(_narrowed(term), "int64")


def _split_block(node, blocks: dict):
    """A block the loop defines, as its moving part plus the rest (broadcast alike)."""
    if not isinstance(node, k.IndexBlock) or node.name not in blocks:
        return None
    moving, still = blocks[node.name]
    still = k.Expand(still, node.axes) if node.axes else still
    return still if moving is None else ir.Op("+", (moving, still))


def _terms(expr) -> list:
    """The terms of a sum (integer arithmetic: the address is their sum exactly)."""
    if isinstance(expr, ir.Op) and expr.op == "+":
        return _terms(expr.args[0]) + _terms(expr.args[1])
    return [expr]


def _per_program(expr) -> bool:
    """One value per program: no block (arange, index block, broadcast, load) in it."""
    return not any(isinstance(n, (k.Arange, k.IndexBlock, k.Expand, k.Load))
                   for n in k.nodes(expr))
