"""The attention schedule (schedule/attention.py) lowered to the kernel IR
(schedule/kernel_ir.py), once, for every target's printer (backends/triton_ir.py prints
it as Triton).

The schedule's decisions (docs/codegen.md, the fused schedule) become statements:

- the program's coordinates: one point of each batch rank, a tile of <row>_BLOCK rows,
  the feature ranks held whole in tiles of <f>_BLOCK;
- one `Loop` over tiles of <m>_BLOCK keys per pass, from the pass's proved bounds (a
  causal row tile stops at the diagonal; a window starts at its first tile, the offset a
  kernel argument the host computes, rounded outwards: `Offset`); in it, the key tiles
  the pass needs are recomputed (nothing M-sized is buffered) and its reductions
  accumulate: `Reduce`s for tl.sum / tl.max / tl.min, `Dot`s as the schedule's DotPlans
  split them, with their rounded operands;
- a split streamed rank is one `Loop` over its outer part, the inner part the tile, the
  recurrences over the outer part carried in registers (`X_at`: before the step);
- the row values between the passes, the loop-invariant row tiles (the Q tile of QK)
  `Let`s hoisted before the first loop, and the outputs' `Store`s (absent rows as 0).

Which register value a read is, how it enters a tile and which mask says a value is
present are the schedule's rules (AttentionRoles' `register_name`, `register_axes`,
`absence_flag`): a read at shifted positions is refused when the roles are decided, a
value in a layout a tile cannot hold or the absence of a value that is not a key tile
while lowering, all as NotFusable with the reason and before anything is printed. The
result is a `LoweredKernel`: the schedule (with the description of what the statements
do), the statements, the host offsets.
"""

from __future__ import annotations

import dataclasses

import itertools

import sympy

from ..analysis.presence import Condition, point_conditions
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..transform.algebra import settled, substitute
from . import kernel_ir as k
from .attention import AttentionRoles
from .bounds import stream_bound
from .finite import finite_shifts
from .interior import (NarrowIndices, NarrowOffsets, TmaLoads, advanced, carried_loop,
                       described, interior_bounds, masked_keys, narrowed_indices,
                       rows_clamped, without_masks)
from .biases import added_biases
from .scales import folded_scales
from .shifts import LOG2E, distributed, max_shifted
from ..ir.expr import total
from .lowering import LoweredKernel, Lowering, Offset, product, program_statements
from .model import Bound, Role
from .stages import NotFusable

# The most alternatives (`or`) the per-key form of a key-tile mask may have; past it the
# kernel ORs the score mask over the rows instead, and the generated line stays short.
MAX_KEY_ALTERNATIVES = 8


def _layout_block(layout: tuple[str, ...], var: str) -> k.IndexBlock:
    """An index variable's block in a tile of `layout` (at most two dimensions)."""
    if len(layout) == 1 or var not in layout:
        return k.IndexBlock(var)
    return k.IndexBlock(var, (True, False) if layout.index(var) == 0 else (False, True))


_ROW_LIVE, _LANES = k.Var("row_live"), k.Var("lanes")
_HEADS = k.Var("heads")         # a packed row tile's query heads per group (model.Group)
_ZERO = k.Integer(ir.Const(0))
_NARROW = "OFFSETS_32"          # the host's flag: tile offsets fit in 32 bits
_TMA = "TMA"                    # the host's flag: the interior tiles are TMA loads
_INDEX_32 = "INDEX_32"          # the host's flag: rows' and keys' arithmetic fits 32 bits
_INTERIOR_NOTE = k.Comment("steps whose every key is live and seen by every row: no masks")
_REST_NOTE = k.Comment("the rest: the diagonal, the window's edges, the last partial tile")


class _Tiles(AttentionRoles, Lowering):
    """The attention schedule's decisions, with its tiles' expressions in kernel IR."""

    # The lowering's way to compute a value once before the loops (its name there), set
    # by the lowering that owns the kernel's statements.
    hoist = None

    # ---------------------------------------------------------------- kernel IR
    # An expression stands at (layout, lanes): a tile's layout and its live lanes (an IR
    # mask that loads take).
    def index(self, var: str, at):
        layout, _ = at
        if self.group is not None and var == self.group.var:
            # a packed tile's query head: one per row, as the row's own index
            return k.IndexBlock(var, _layout_block(layout, self.row).axes)
        if var in self.batch or var == self.loop or \
                (self.group is not None and var == self.group.group):
            return ir.Index(var)
        return _layout_block(layout, var)

    def dim(self, node: ir.Dim, at):
        if self.loop is not None and node.rank == self.cascade.var_rank(self.stream) and \
                not self.padded:
            return ir.Dim(self.tile_block)    # the split factor is the tile
        return node

    def stream_in_rank(self) -> k.Integer:
        """The tile's stream index below its rank's size: `m < M` (an unsplit tile's last
        keys), `m0 < M0` (a padded split's lanes past its factor)."""
        return k.Integer(ir.Op("<", (k.Var(self.stream),
                                     ir.Dim(self.cascade.var_rank(self.stream)))))

    def step_keys(self):
        """The keys one step of a split advances by: the tile, or a padded tile's factor
        (the kernel's argument for the inner rank)."""
        inner = self.cascade.var_rank(self.stream)
        return ir.Dim(inner) if self.padded else k.Var(self.tile_block)

    def read_in_index(self, node: ir.Read):
        self._no_read(node)

    def read(self, node: ir.Read, at, flag: bool = False):
        """A tensor read as a block in the layout: an input is loaded (a Load masked by
        the lanes and the held ranks' ends); an intermediate is its register value
        (the schedule's `register_name`), broadcast from its own layout."""
        layout, lanes = at
        t = self.cascade.tensors[node.tensor]
        if t.is_input and self.group is not None:
            # A key-side read of the group `h * KH // H`: the program's group, kh.
            node = ir.Read(node.tensor, tuple(self.grouped(i) for i in node.indices))
        if not t.is_input:
            name = self.register_name(node)
            axes = self.register_axes(node.tensor, layout, name)
            return k.Expand(k.Var(name), axes) if axes else k.Var(name)
        extent = lambda position: ir.Dim(t.ranks[position])      # noqa: E731
        if not set(ir.index_vars(node)) - set(self.batch) - {self.loop} - self._group_var():
            # one address per program
            return k.Load(node.tensor, self.coordinates(node, at, extent))
        if self.hoist is not None and self.stream in layout and layout[0] == self.row and \
                not set(ir.index_vars(node)) - set(self.batch) - {self.row}:
            # A per-row input read in a key tile (a backward's LSE or DELTA): loaded once
            # per program before the loops, one value per row, broadcast along the tile.
            # (A row value computed before the loops loads it where it is: the hoisted
            # loads go in just before the first loop.)
            rows = ((self.row,), _ROW_LIVE)
            value = k.Load(node.tensor, self.coordinates(node, rows, extent),
                           k.Mask((_ROW_LIVE,)))
            return k.Expand(self.hoist(value, f"{node.tensor}_row"), (True, False))
        coordinates = self.coordinates(node, at, extent)
        ends = [k.Integer(ir.Op("<", (_layout_block(layout, var),
                                      ir.Dim(self.cascade.var_rank(var)))))
                for index in node.indices for var in ir.index_vars(index)
                if var in self.features]
        return k.Load(node.tensor, coordinates, k.Mask((lanes, *ends)))

    def _group_var(self) -> set[str]:
        return set() if self.group is None else {self.group.group}

    @staticmethod
    def _no_read(node):
        raise NotFusable(f"a tensor read inside an index ({ir.to_text(node)})")

    def coordinates(self, node: ir.Read, at, extent) -> tuple[k.Coordinate, ...]:
        """A read's coordinates; the streamed key itself (`m`, or the split's
        `m1 * M0 + m0`) clamped into the key rank, or not at all, is marked: on an
        interior tile it is in that rank (schedule/interior.py)."""
        found = super().coordinates(node, at, extent)
        root = ir.Dim(self.cascade.root_rank(self.cascade.var_rank(self.stream)))
        key = self.key()
        return tuple(dataclasses.replace(c, key=True)
                     if index == key and c.clamp in (None, root) else c
                     for index, c in zip(node.indices, found))

    def expr(self, expr: ir.Expr, at, in_index: bool = False):
        """An exponential that follows a max-shift as exp2 with log2(e) folded into each
        side (one FFMA per score with a per-row product; schedule/shifts.py)."""
        if isinstance(expr, ir.Op) and expr.op == "exp" and not in_index \
                and max_shifted(self.cascade, expr.args[0]):
            a, b = (ir.Op("*", (super(_Tiles, self).expr(x, at), ir.Const(LOG2E)))
                    for x in expr.args[0].args)
            return k.Exp2(ir.Op("-", (a, b)))
        if isinstance(expr, ir.Op) and expr.op == "sigmoid" and not in_index:
            # 1 / (1 + 2**(-x log2(e))), the factor distributed over the argument's terms
            # (where a scale of a tile takes it into its FMA: schedule/scales.py)
            return k.SigmoidExp2(distributed(super().expr(expr.args[0], at), -LOG2E))
        return super().expr(expr, at, in_index)

    def lowered(self, expr: ir.Expr, layout: tuple[str, ...], lanes):
        """`expr` in a tile of `layout` as kernel IR: index variables as their blocks, the
        split factor as the key tile's constexpr, each read a Load or a register value;
        NotFusable where a kernel cannot express it."""
        return self.expr(expr, (layout, lanes))

    def mask(self, condition: Condition, layout: tuple[str, ...], lanes):
        """A presence condition in a tile as a kernel IR mask term."""
        return self.condition(condition, (layout, lanes))

    def condition(self, condition: Condition, at):
        """A presence condition as a kernel IR mask term: a filter, a range or a split's
        end, or the `_ok` mask of a key tile; no other condition fits this schedule."""
        if condition.kind in ("filter", "range", "split"):
            inner = [self.condition(c, at) for part in condition.parts for c in part]
            return k.Test(self.expr(condition.expr, at), integer=condition.kind != "filter",
                          scalar=condition.variables <= set(self.batch) | {self.loop},
                          inner=k.Mask(tuple(inner)))
        if condition.kind == "absent":
            return k.Var(self.absence_flag(condition.read.tensor))
        raise NotFusable(f"a {condition.kind} condition")


def lower_attention(cascade: Cascade) -> LoweredKernel:
    """The attention schedule of a cascade lowered to the kernel IR: one loop over key
    tiles per pass, or one over the steps of a split streamed rank. NotFusable with the
    reason where the cascade does not fit the schedule or its statements cannot say it."""
    tiles = _Tiles(cascade)
    return (_SplitLowering if tiles.loop is not None else _PassLowering)(tiles).lower()


class _PassLowering:
    """The attention schedule lowered to kernel IR statements: one key-tile loop per
    pass."""

    def __init__(self, fuser: _Tiles, schedule=None):
        self.f = fuser
        self.cascade = fuser.cascade
        self.body: list = []                # the kernel's statements (kernel IR)
        self.hoisted: dict = {}             # a loop-invariant tile (kernel IR) -> its name
        self.offsets: list[Offset] = []     # kernel arguments the host computes
        self.flags: dict = {}               # compile-time flags the host computes
        # Every decision (passes, bounds, dots and their rounded operands) is the
        # schedule's: this lowers it (`schedule`: the fuser's, already decided).
        self.schedule = schedule or fuser.kernel_schedule(f"{self.cascade.name}_fused")
        self.loops_start: int | None = None  # where the first loop's statements begin
        self.window: dict = {}              # a monotone bound at a row -> its name
        fuser.hoist = self._hoisted

    def _begin_loops(self) -> None:
        """Mark where the loops begin: loop-invariant tiles are computed before it."""
        if self.loops_start is None:
            self.loops_start = len(self.body)

    def lower(self) -> LoweredKernel:
        f, cascade = self.f, self.cascade
        name = self.schedule.name
        n_passes = len(self.schedule.passes)
        self._prologue(n_passes)

        pruned = {}
        available = {t.name for t in cascade.inputs}
        self.body += self._rows(available)
        stream = cascade.var_rank(f.stream)
        block = f"{f.stream}_BLOCK"
        split = self._split_range(stream)
        plan = list(f.pass_plan())
        for number, accumulators, needed in plan:
            pruned[number] = self._bounds(self.schedule.passes[number - 1].bounds)
            lo, hi = split or pruned[number]
            self._begin_loops()
            self.body += [k.Comment(""), k.Comment(
                f"pass {number} over {f.stream}: "
                f"{', '.join(e.tensor for e in accumulators) or 'nothing accumulates'}")]
            self.body += [self._init_accumulator(acc) for acc in accumulators]
            # int64: key index times stride may pass 2**31 elements.
            tile = [k.Let(f.stream, ir.Op("+", (k.Var("start"),
                                                k.Cast(k.Arange(block), "int64")))),
                    k.Let("lanes", k.Mask((k.Expand(_ROW_LIVE, (True, False)), k.Expand(
                        k.Integer(ir.Op("<", (k.Var(f.stream), ir.Dim(stream)))),
                        (False, True)))))]
            for einsum in needed:
                tile += self._stream(einsum)
            for acc in accumulators:
                tile += self._accumulate(acc)
            tile = self._scales_folded(tuple(tile))
            lo, hi = lo or _ZERO, hi or k.Integer(ir.Dim(stream))
            einsums = list(needed) + list(accumulators)

            def loops(first, last):
                return self._pass_loops(first, last, tuple(tile), einsums, stream)
            if not split:
                lo = self._sinks_first(self.schedule.passes[number - 1].bounds, lo, hi,
                                       k.Var(block), loops)
            self.body += loops(lo, hi)
            if number == plan[-1][0]:
                self.body += self._rows_after_loops()
            available.update(acc.tensor for acc in accumulators)
            self.body += self._rows(available)
        self._hoist()
        self.body.append(k.Comment(""))
        self.body += self._stores()
        described = ", ".join(
            f"pass {number}: "
            f"{_range_text(pruned[number], f.stream, self.schedule.passes[number - 1].bounds)}"
            for number in sorted(pruned))
        if split is not None:
            described += (f", split over {self.schedule.splits} programs per row tile, "
                          f"each adding its tiles' sums")
        return self._lowered(f"one fused kernel {name}: grid over {self._grid_text()}; "
                             f"{described}")

    def _split_range(self, stream: str):
        """The keys [first, last) of this program (grid axis 2) where the row tile's
        programs split the key rank (the schedule's `splits`): ranges of whole key
        tiles, ceil(ceil(M / splits) / tile) tiles each; None where one program
        takes every key."""
        knob = self.schedule.splits
        if knob is None:
            return None
        keys, tile = ir.Dim(stream), k.Var(f"{self.f.stream}_BLOCK")
        share = k.Quotient(total([keys, k.Var(knob), ir.Const(-1)]), k.Var(knob))
        chunk = ir.Op("*", (k.Quotient(total([share, tile, ir.Const(-1)]), tile), tile))
        self.body += [k.Comment(f"the keys of this program: {knob} programs split {stream}"),
                      k.Let("keys_first", k.Integer(ir.Op("*", (k.ProgramId(2), chunk)))),
                      k.Let("keys_last", k.Integer(k.Extremum("min", keys, total(
                          [k.Var("keys_first"), chunk]))))]
        return k.Var("keys_first"), k.Var("keys_last")

    # ---------------------------------------------------------------- pieces
    def _lowered(self, description: str) -> LoweredKernel:
        """The schedule, with the description of what its statements do, the statements
        and the offsets the host computes for them."""
        # The row tile's and the key tiles' indices in 32 bits where the host says they
        # fit (their masks then test in 32 bits: half the instructions of int64's).
        body = narrowed_indices(k.without_unread(tuple(self.body)),
                                {self.f.row, self.f.stream, "packed"}, _INDEX_32)
        self.flags[_INDEX_32] = NarrowIndices(_INDEX_32)
        return LoweredKernel(self.schedule.with_(description=description), body,
                             tuple(self.offsets), tuple(self.flags.values()))

    def _scales_folded(self, step: tuple) -> tuple:
        """A loop body with its tiles' per-program scales folded into their readers
        (schedule/scales.py); the flags they need are the kernel's."""
        step, flags = folded_scales(step)
        self.flags.update((flag.name, flag) for flag in flags)
        return step

    def _prologue(self, n_passes: int) -> None:
        """The program's coordinates: its batch point, its row tile, the feature tiles."""
        f, cascade = self.f, self.cascade
        batch, rows = f.batch, f.row
        if f.group is not None:
            batch, rows = f.group.programs(f.batch), f"({f.group.var}, {f.row})"
        self.body.append(k.Comment(
            f"program: one point of {', '.join(batch) or 'nothing'}, "
            f"{f.row}_BLOCK points of {rows}; "
            f"{n_passes} pass(es) over {cascade.root_rank(cascade.var_rank(f.stream))}"))
        if f.group is None:
            self.body += program_statements(cascade, f.batch, f.row, f"{f.row}_BLOCK")
        else:
            self.body += self._packed_rows()
        self.body.append(self._live_rows())
        self.body += [k.Let(var, k.Arange(f"{var}_BLOCK")) for var in f.features]

    def _grid_text(self) -> str:
        f = self.f
        if f.group is None:
            return ", ".join(f.batch + [f.row + " tiles"])
        return (f"{', '.join(f.group.programs(f.batch))}, tiles of ({f.group.var}, {f.row}) rows (the query "
                f"heads of a group packed: K and V tiles loaded once per group)")

    def _packed_rows(self) -> list:
        """The coordinates of a program of packed rows (model.Group): its point of the
        batch ranks with the group kh in place of the query head, then its tile of packed
        rows r: query row r // G of head first(kh) + r % G, with G = ceil(H / KH) and
        first(kh) = ceil(kh H / KH); a group's heads end at first(kh + 1)."""
        f, cascade, group = self.f, self.cascade, self.f.group
        heads, groups = ir.Dim(group.extent), ir.Dim(group.rank)
        parts = tuple((v, groups if v == group.group else ir.Dim(cascade.var_rank(v)))
                      for v in group.programs(f.batch))
        return [k.Comment(f"rows packed: the query heads {group.var} of group {group.group} "
                          f"(the heads whose K and V tiles are the group's) times the rows"),
                k.Let("batch", k.Cast(k.ProgramId(1), "int64")),
                k.Unflatten("batch", parts, "rest"),
                k.Let(_HEADS.name, k.Integer(k.Quotient(total([heads, groups, ir.Const(-1)]),
                                                        groups))),
                *self._packed_tile(wide=True),
                k.Let("heads_end", k.Integer(self._first_head(ir.Op(
                    "+", (ir.Index(group.group), ir.Const(1))))))]

    def _first_head(self, kh):
        """first(kh) = ceil(kh H / KH), the group's first query head (kh >= 0)."""
        groups = ir.Dim(self.f.group.rank)
        return k.Quotient(total([ir.Op("*", (kh, ir.Dim(self.f.group.extent))), groups,
                                 ir.Const(-1)]), groups)

    def _packed_tile(self, wide: bool) -> list:
        """The packed rows of the program's tile: their query row and head (`wide`: in
        int64; else in 32 bits, the query row widened for the addresses)."""
        f, group = self.f, self.f.group
        block = f"{f.row}_BLOCK"
        program = k.Cast(k.ProgramId(0), "int64") if wide else k.ProgramId(0)
        rows = [k.Let("packed", ir.Op("+", (ir.Op("*", (program, k.Var(block))),
                                           k.Arange(block)))),
                k.Unflatten("packed", ((f.row, ir.Dim(self.cascade.var_rank(f.row))),
                                       ("head", _HEADS)), "packed_rest"),
                k.Let(group.var, k.Integer(ir.Op("+", (self._first_head(
                    ir.Index(group.group)), k.Var("head")))))]
        if not wide:
            rows.append(k.Let(f.row, k.Cast(k.Var(f.row), "int64")))
        return rows

    def _rows_after_loops(self) -> list:
        """A packed tile's row coordinates and live rows computed again once the loops
        are done, for the values and stores after them. Kept from the prologue, they
        would be held across the loops: 4 int64 registers per row and 8 rows per thread
        in the stores' layout at 128 rows and 8 warps (GQA at head dim 128: 255 registers,
        12 B spilled). They are computed in 32 bits here (the host checks that the packed
        rows fit), a computation of its own that the compiler does not merge with the
        prologue's int64 one; an integer division per row, once per program."""
        if self.f.group is None:
            return []
        return [k.Comment(""), k.Comment("the packed rows again, in 32 bits, for what "
                                         "follows the loops (not held across them)"),
                *self._packed_tile(wide=False), self._live_rows()]

    def _live_rows(self) -> k.Let:
        """`row_live`: the tile's rows that exist (and, packed, belong to the group)."""
        f = self.f
        live = ir.Op("<", (k.Var(f.row), ir.Dim(self.cascade.var_rank(f.row))))
        if f.group is not None:
            live = ir.Op("&", (live, ir.Op("<", (k.Var(f.group.var), k.Var("heads_end")))))
        return k.Let(_ROW_LIVE.name, k.Integer(live))

    def _hoist(self) -> None:
        """Put the loop-invariant row tiles before the first loop."""
        lets = [k.Let(name, value) for value, name in self.hoisted.items()]
        self.body[self.loops_start:self.loops_start] = lets

    def _rows(self, available: set[str], depth: int = 1) -> list:
        """Row values whose every input is available (inputs, finished accumulators,
        row values already computed), in dataflow order."""
        found = []
        for einsum in self.cascade.einsums:
            if self.f.kinds[einsum.tensor] != Role.ROW or einsum.tensor in available:
                continue
            if all(r in available for r in einsum.reads):
                found += self._row_value(einsum)
                available.add(einsum.tensor)
        return found

    def _row_value(self, einsum: Einsum) -> list:
        """A value per row (or per row and held feature), computed in its tile."""
        layout = self.f.layouts[einsum.tensor]
        value = self.f.lowered(einsum.body, layout, self._row_lanes(layout))
        if not self._fills(einsum.body, layout):
            value = ir.Op("+", (value, self._zeros(layout)))    # broadcast to the tile
        return [self._comment(einsum), k.Let(einsum.tensor, value)]

    def _fills(self, body: ir.Expr, layout: tuple[str, ...]) -> bool:
        """Whether an elementwise body already has the whole tile's shape: it reads an
        intermediate held in this very layout (its register, not broadcast), so adding a
        tile of zeros would be a real addition per element (x + 0.0 is not x for x = -0.0,
        so nothing removes it), e.g. 32 FADDs per thread per key tile for the 128 x 64
        rescaled accumulator of a split kernel."""
        f = self.f
        return any(isinstance(n, ir.Read) and not self.cascade.tensors[n.tensor].is_input
                   and f.register_axes(n.tensor, layout, f.register_name(n)) == ()
                   for n in ir.walk(body))

    def _comment(self, einsum: Einsum) -> k.Comment:
        return k.Comment(f"{lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}")

    def _row_lanes(self, layout: tuple[str, ...]):
        """The live lanes of a row value's tile (an IR mask): live rows, and the held
        rank's end."""
        if len(layout) == 1:
            return _ROW_LIVE
        feature = layout[1]
        end = k.Integer(ir.Op("<", (k.Var(feature), ir.Dim(self.cascade.var_rank(feature)))))
        return k.Mask((k.Expand(_ROW_LIVE, (True, False)), k.Expand(end, (False, True))))

    @staticmethod
    def _zeros(layout: tuple[str, ...]) -> k.Zeros:
        return k.Zeros(tuple(f"{v}_BLOCK" for v in layout))

    def _stream(self, einsum: Einsum) -> list:
        """A key tile's value (and its presence where it may be absent)."""
        f = self.f
        if f.kinds[einsum.tensor] == Role.STREAM:
            value = f.lowered(einsum.body, (f.row, f.stream), _LANES)
        else:
            value = self._tile_dot(einsum)
        found = [self._comment(einsum), k.Let(einsum.tensor, value)]
        if einsum.tensor in f.absent:
            conditions = point_conditions(einsum, f._conditions(einsum))
            found.append(k.Let(f"{einsum.tensor}_ok", self._tile_mask(conditions)))
        return found

    def _tile_dot(self, einsum: Einsum):
        """sum over a feature of (row-side factors) * (key-side factors) * scalars:
        a Dot of the row tile and the key tile transposed, as the schedule's DotPlan
        splits them."""
        f = self.f
        (feature,) = einsum.reduced
        plan = self.schedule.dot(einsum.tensor)
        # read() adds the feature mask; the lanes here are the row and key lanes. The key
        # tile's addresses are clamped and a score at a key no row sees is masked before any
        # arithmetic across keys, so the key side needs no more than the tile's own lanes.
        # A split's tile is its inner part, M0 = the block: every key of it exists (m0 <
        # M0 is true), so only the unsplit tile's last keys and a padded split's lanes
        # past its factor need a mask.
        key_lanes = k.Mask(()) if f.loop is not None and not f.padded else \
            k.Expand(f.stream_in_rank(), (True, False))
        rows = product([f.lowered(x, (f.row, feature), k.Expand(_ROW_LIVE, (True, False)))
                        for x in plan.left])
        if not all(isinstance(x, ir.Read) and self.cascade.tensors[x.tensor].is_input
                   for x in plan.left):
            # A computed row tile (a backward's dO / D) may hold inf or NaN in its dead
            # lanes (1 / 0 from masked loads of 0), which the dot would carry into every
            # live row (NaN * 0 = NaN): zeros there, as a masked load gives.
            feature_live = k.Integer(ir.Op("<", (_layout_block((f.row, feature), feature),
                                                 ir.Dim(self.cascade.var_rank(feature)))))
            rows = ir.Op("where", (k.Mask((k.Expand(_ROW_LIVE, (True, False)), feature_live)),
                                   rows, ir.Const(0.0)))
        keys = product([f.lowered(x, (f.stream, feature), key_lanes) for x in plan.right])
        dot = k.Dot(self._hoisted(k.DotOperand(_as_stored(rows)), f"{einsum.tensor}_rows"),
                    _as_stored(keys), transposed=True, rounded=plan.rounded,
                    converted=(True, False))
        return product([dot] + [f.lowered(x, (f.row, f.stream), _LANES) for x in plan.after])

    def _hoisted(self, value, name: str) -> k.Var:
        """A row tile that does not change along the stream, computed once before the
        passes (the Q tile of QK): the name it gets there."""
        if value not in self.hoisted:
            self.hoisted[value] = _unused(name, self.hoisted.values())
        return k.Var(self.hoisted[value])

    def _init_accumulator(self, einsum: Einsum) -> k.Let:
        layout = self.f.layouts[einsum.tensor]
        return k.Let(einsum.tensor, k.Full(tuple(f"{v}_BLOCK" for v in layout),
                                           ir.REDUCTION_IDENTITY[einsum.reduce_op]))

    def _term_mask(self, einsum: Einsum) -> k.Mask:
        return self._tile_mask(self.f._conditions(einsum))

    def _tile_mask(self, conditions: list[Condition]) -> k.Mask:
        """`lanes` and the conditions on a key tile beyond it, each once."""
        f = self.f
        beyond = f.beyond_lanes(conditions)
        masks = [f.mask(c, (f.row, f.stream), _LANES) for c in beyond]
        # A key tile's `_ok` mask starts with `lanes`: where one is used, lanes is said.
        lanes = [] if any(c.kind == "absent" for c in beyond) else [_LANES]
        return k.Mask(tuple(lanes + masks))

    def _accumulate(self, einsum: Einsum, fresh: bool = False) -> list:
        """A reduction over the key tile: into an accumulator across tiles, or (`fresh`)
        the tile's own value (a per-step value of a split stream)."""
        f = self.f
        layout = (f.row, f.stream)
        name = einsum.tensor
        ok = self._term_mask(einsum)
        found = [self._comment(einsum)]
        if f.kinds[name] in (Role.ACCUMULATE, Role.TILE_REDUCE):
            # The terms' mask masks the loads too: a term it leaves out is not read (the
            # totals of GQA's partial sums, `sum[h] dK_p[.., h, ..] where kh == h*KH//H`,
            # read the heads of their group, not every head).
            term = f.lowered(einsum.body, layout, ok)
            identity = ir.Const(ir.REDUCTION_IDENTITY[einsum.reduce_op])
            tile = k.Reduce(einsum.reduce_op, ir.Op("where", (ok, term, identity)), axis=1)
            found.append(k.Let(name, tile) if fresh else
                         k.Accumulate(name, einsum.reduce_op, tile))
            return found
        # sum over the stream of (stream tile) * (key tile over a feature): a Dot.
        feature = f.layouts[name][1]
        plan = self.schedule.dot(name)
        tile_side, key_side = plan.left, plan.right
        # The key tile is zeroed at keys no row of the program sees: a zero probability
        # alone would still give 0 * inf = NaN from padding or a KV cache past its length.
        seen = f"{name}_keys"
        found.append(k.Let(seen, self._keys_seen(einsum, ok)))
        keys_seen = k.Expand(k.Var(seen), (True, False))
        a = product([f.lowered(x, layout, _LANES) for x in tile_side]) if tile_side \
            else ir.Const(1.0)
        b = product([f.lowered(x, (f.stream, feature), keys_seen) for x in key_side])
        if not all(self._loaded_per_key(x) for x in key_side):
            b = ir.Op("where", (keys_seen, b, ir.Const(0.0)))   # a function of a masked load
        dot = k.Dot(ir.Op("where", (ok, a, ir.Const(0.0))), _as_stored(b),
                    rounded=plan.rounded)
        found.append(k.Let(name, dot) if fresh else k.Accumulate(name, "sum", dot))
        return found

    def _loaded_per_key(self, factor: ir.Expr) -> bool:
        """An input read whose load is masked per key (its masked lanes load 0)."""
        return isinstance(factor, ir.Read) and self.cascade.tensors[factor.tensor].is_input \
            and self.f.stream in ir.index_vars(factor)

    def _keys_seen(self, einsum: Einsum, terms: k.Mask) -> k.Boolean:
        """A mask over the key tile: the keys that some live row of the program's tile sees
        in `einsum`'s terms (`terms`: their mask over rows and keys). Conditions made of
        conditions on the key alone (the key length, padding) and of affine filters of key
        and row (`m <= p`, `p - m < W`), with `and` / `or`, give it per key, at no cost per
        score; any other condition on the rows needs an OR over the rows of `terms`."""
        alternatives = [((), ())]
        for condition in self.f.leaf_conditions(einsum):
            if self.f.said_by_live_keys(condition):
                continue
            found = self._alternatives(condition)
            if found is None or len(alternatives) * len(found) > MAX_KEY_ALTERNATIVES:
                return k.Boolean(k.Reduce("max", k.Cast(terms, "int32"), axis=0))
            alternatives = [(a + b, c + d) for a, c in alternatives for b, d in found]
        kept = [list(dict.fromkeys(keys + tuple(self._rows_reach(bounds))))
                for keys, bounds in alternatives]
        common = [c for c in kept[0] if all(c in other for other in kept)]
        either = [k.Mask(tuple(c for c in other if c not in common)) for other in kept]
        if len(either) > 1:
            common.append(k.Either(tuple(either)))
        # Booleans: Triton's interpreter gives `block & scalar` int32 data, which a load's
        # mask rejects (on the GPU it is a no-op on a boolean).
        return k.Boolean(k.Mask((k.Test(self._keys_live().value, integer=True), *common)))

    def _alternatives(self, condition: Condition, expr: ir.Expr | None = None):
        """A condition (or `expr`, a part of it) as alternatives a key may meet it by,
        each (conditions on the key alone, as kernel IR; affine filters of key and row,
        as `stream_bound`s); None where a part depends on the row otherwise."""
        f = self.f
        if expr is None:
            if condition.kind not in ("filter", "range", "split"):
                return None
            found = self._alternatives(condition, condition.expr)
            for inner in (c for part in condition.parts for c in part):
                more = self._alternatives(inner)
                if found is None or more is None:
                    return None
                found = [(a + b, c + d) for a, c in found for b, d in more]
            return found
        variables = frozenset(ir.index_vars(expr))
        if not variables & {f.row, *f.features}:
            try:
                term = f.mask(Condition(condition.kind, variables, expr), (f.stream,),
                              k.Mask((self._keys_live(grouped=False),)))
            except NotFusable:          # not a condition per key: the rows will tell
                return None
            return [((term,), ())]
        if isinstance(expr, ir.Op) and expr.op in ("and", "or"):
            left, right = (self._alternatives(condition, arg) for arg in expr.args)
            if left is None or right is None:
                return None
            if expr.op == "or":
                return left + right
            return [(a + b, c + d) for a, c in left for b, d in right]
        bound = stream_bound(f.keyed(expr), f.stream, f.row)
        return None if bound is None else [((), (bound,))]

    def _rows_reach(self, bounds) -> list:
        """Per-key conditions for affine filters `key <= row + c` ('upper') and
        `key >= row + c` ('lower'): some live row of the tile (first..last) meets them all.
        A key k needs a row p with k - c_upper <= p <= k - c_lower within first..last,
        which exists exactly when k <= last + c_upper, k >= first + c_lower and
        c_lower <= c_upper."""
        f, key = self.f, self._key()
        first = self._first_row()
        last = ir.Op("-", (k.Extremum("min", self._end_row(),
                                      ir.Dim(self.cascade.var_rank(f.row))), ir.Const(1)))
        found, sides = [], {"upper": [], "lower": []}
        for side, offset in bounds:
            at = self._offset(side, offset)
            sides[side].append((offset, at))
            found.append(_integer_test("<=", key, ir.Op("+", (last, at))) if side == "upper"
                         else _integer_test(">=", key, ir.Op("+", (first, at))))
        for (low, low_at), (high, high_at) in itertools.product(sides["lower"],
                                                                 sides["upper"]):
            gap = settled(high - low)
            if not gap.is_number:
                found.append(k.Test(ir.Op("<=", (low_at.value, high_at.value)), integer=True,
                                    scalar=True))
            elif gap < 0:
                found.append(_integer_test("<", key, ir.Const(0)))   # no row meets both
        return found

    def _key(self, grouped: bool = True):
        """The key index of the tile's lanes, as the kernel computes it (`grouped`: shown
        as one quantity)."""
        return k.Var(self.f.stream)

    def _keys_live(self, grouped: bool = True) -> k.Integer:
        """The tile's keys that exist (the last tile may reach past the key rank)."""
        root = self.cascade.root_rank(self.cascade.var_rank(self.f.stream))
        return k.Integer(ir.Op("<", (self._key(grouped), ir.Dim(root))))

    def _stores(self) -> list:
        """Every output's tile stored in its live lanes, absent points (conditions of its
        own row, GQA's kv head) as 0: kernel IR Stores."""
        f = self.f
        stores = []
        for name in self.cascade.outputs:
            layout = f.layouts[name]
            lanes = self._row_lanes(layout)
            offset = [ir.Op("*", (c.index, k.Var(f"{name}_s{position}"))) for position, c
                      in enumerate(self.point(self.cascade.einsum(name).indices, layout))]
            value = k.Var(name)
            if f.row_masks.get(name):
                absent = k.Mask(tuple(f.condition(c, (layout, lanes))
                                      for c in f.row_masks[name]))
                value = ir.Op("where", (absent, value, ir.Const(0.0)))
            stores.append(k.Store(name, k.Integer(total(offset)), value, lanes, rounded=True,
                                  added=self.schedule.splits))
        return stores

    def point(self, indices, layout: tuple[str, ...]) -> tuple[k.Coordinate, ...]:
        """The coordinates of a row value's tile at `indices` (index variables): the
        program's batch point, the rows and held features as blocks in `layout` (a
        packed tile's query head per row)."""
        f = self.f
        lanes = self._row_lanes(layout)
        return tuple(k.Coordinate(
            _layout_block(layout, var) if var in layout else
            f.index(var, (layout, lanes)) if f.group is not None and var == f.group.var
            else k.Var(var)) for var in indices)

    # ---------------------------------------------------------------- interior tiles
    def _pass_loops(self, start, stop, tile: tuple, einsums: list, stream: str) -> list:
        """A pass's loop over key tiles (`start`: the first key of one), with its interior
        tiles (schedule/interior.py) as a loop of their own without masks, after the
        masked ones: the pass's reductions are sums, maxima and minima, whose order is
        free, and a dot accumulating into the registers another loop leaves behind would
        make ptxas serialize every wgmma of the kernel (C7515)."""
        f = self.f
        block = k.Var(f"{f.stream}_BLOCK")
        blocks = {f.stream: (k.Var("start"), k.Cast(k.Arange(block.name), "int64"))}
        tile = rows_clamped(tile, self._clamped_rows())
        bounds, inner = self._interior_step(tile, einsums, stream, k.Var("start"), blocks)
        tile, moved = self._advanced(self._described_loads(masked_keys(tile), blocks),
                                     k.Var("start"), blocks)

        def loop(first, last, body, carried):
            return carried_loop("start", k.Var("start"), first, last, block, body, carried)

        if inner is None:
            return loop(start, stop, tile, moved)
        # start is 0 or a multiple of the block
        first = start if start == _ZERO else k.Integer(k.Quotient(start, block))
        last = k.Integer(k.Quotient(ir.Op("+", (stop, ir.Op("-", (block, ir.Const(1))))),
                                    block))
        begin, end, _ = self._interior_range(first, last, stream, block, bounds,
                                             capped=stop != k.Integer(ir.Dim(stream)))
        begin, end = (at if at == _ZERO else start if at == first else
                      k.Integer(ir.Op("*", (at, block))) for at in (begin, end))
        masked = [s for a, b in ((start, begin), (end, stop)) if a != b
                  for s in loop(a, b, tile, moved)]
        return [k.Comment("the tiles with masks: a window's edges, the diagonal, the last "
                          "partial tile"), *masked, _INTERIOR_NOTE, *loop(begin, end, *inner)]

    def _interior_step(self, step: tuple, einsums: list, stream: str, loop, blocks: dict):
        """The affine bounds an interior tile is inside (interior_bounds) and the step's
        statements on such a tile (no masks, the addresses advanced from pointer blocks
        made before the loops, and the base pointers they carry); None for them where no
        tile can be one."""
        bounds = interior_bounds(self.f, einsums)
        inner = None if bounds is None else without_masks(
            step, _LANES.name, _ROW_LIVE.name, stream, tuple(self._row_ranks()))
        if inner is not None:
            # Every score of an interior tile is present: a running max over finite
            # scores needs no -inf guard there (schedule/finite.py).
            before = {s.name: s.value for s in self.body if isinstance(s, k.Let)}
            inner = finite_shifts(inner, {**before, **{name: value for value, name
                                                       in self.hoisted.items()}})
            inner = self._advanced(self._described_loads(inner, blocks), loop, blocks)
        return bounds, inner

    def _row_ranks(self) -> dict:
        """The row index variables and their ranks' sizes (a packed tile's head too)."""
        f = self.f
        ranks = {f.row: ir.Dim(self.cascade.var_rank(f.row))}
        if f.group is not None:
            ranks[f.group.var] = ir.Dim(f.group.extent)
        return ranks

    def _clamped_rows(self) -> dict:
        """The row index variables -> a function giving their block clamped into the
        rank (min(p, P - 1)), computed once before the loops: what a load in a loop reads
        the rows at (interior.rows_clamped)."""
        def clamp(var, size):
            last = ir.Op("-", (size, ir.Const(1)))
            return lambda: self._hoisted(k.Integer(k.Extremum("min", k.Var(var), last)),
                                         f"{var}in")
        return {var: clamp(var, size) for var, size in self._row_ranks().items()}

    def _described_loads(self, step: tuple, blocks: dict) -> tuple:
        """The step's K and V tile loads also as TMA loads, where the host's flag says
        (schedule/interior.py's `described`)."""
        bounded = {var: f"{var}_BLOCK" for var in self.f.features}
        return described(step, blocks, bounded, _TMA, self._described)

    def _described(self, tensor: str, block: tuple) -> None:
        """A TMA descriptor the host makes for a step's loads."""
        found = self.flags.get(_TMA, TmaLoads(_TMA, ())).descriptors
        self.flags[_TMA] = TmaLoads(_TMA, tuple(dict.fromkeys(found + ((tensor, block),))))

    def _advanced(self, step: tuple, loop, blocks: dict) -> tuple[tuple, tuple]:
        """A loop body's loads read at addresses computed before the loops
        (schedule/interior.py's `advanced`), and the base pointers the body carries: the
        held features' blocks are 0 .. their knob - 1, and one flag of the host says
        whether the tiles' offsets fit in 32 bits."""
        bounded = {var: f"{var}_BLOCK" for var in self.f.features}
        return advanced(step, loop, blocks, self._hoisted, bounded, self._narrow)

    def _narrow(self, tensor: str, knobs: tuple) -> str:
        terms = self.flags.get(_NARROW, NarrowOffsets(_NARROW, ())).terms
        added = tuple((tensor, position, knob) for position, knob in knobs)
        self.flags[_NARROW] = NarrowOffsets(_NARROW, tuple(dict.fromkeys(terms + added)))
        return _NARROW

    def _interior_range(self, start, stop, stream: str, tile, bounds, capped: bool):
        """The interior tiles' numbers [begin, end) within [start, stop) (kernel IR
        integers, in tiles of `tile` keys): whole tiles, (t + 1) * tile <= M, inside every
        affine bound of the step for every row of the program; and whether a lower bound
        leaves masked tiles before them. `capped`: `stop` is a proved bound, not the
        rank's last tile (which no whole tile passes)."""
        first = self._first_row()
        last = total([self._end_row(), ir.Const(-1)])
        upper = [k.Quotient(ir.Dim(stream), tile)]
        lower = []
        for side, offset in bounds:
            at = self._offset(side, offset)
            if side == "upper":   # last key (t + 1) * tile - 1 <= first row + offset
                upper.append(k.Quotient(k.Extremum("max", ir.Const(0), total(
                    [first, at, ir.Const(1)])), tile))
            else:                 # first key t * tile >= last row + offset
                lower.append(k.Quotient(total([k.Extremum("max", ir.Const(0), total(
                    [last, at])), tile, ir.Const(-1)]), tile))
        begin = start
        for bound in lower:
            begin = k.Integer(k.Extremum("max", begin, bound))
        if lower:
            begin = k.Integer(k.Extremum("min", begin, stop))
        end = upper[0]
        for bound in upper[1:]:
            end = k.Extremum("min", end, bound)
        if lower or start != _ZERO:
            end = k.Extremum("max", end, begin)
        if capped:      # else stop is the last tile of the rank, past M // tile
            end = k.Extremum("min", end, stop)
        return begin, k.Integer(end) if not isinstance(end, k.Integer) else end, bool(lower)

    # ---------------------------------------------------------------- bounds
    def _first_row(self):
        """The program's first row (a packed tile's: the first query row it holds)."""
        start = ir.Op("*", (k.ProgramId(0), k.Var(f"{self.f.row}_BLOCK")))
        return start if self.f.group is None else k.Quotient(start, _HEADS)

    def _end_row(self):
        """One past the program's last row (uncapped by the rank's end)."""
        block = k.Var(f"{self.f.row}_BLOCK")
        if self.f.group is None:
            return total([ir.Op("*", (k.ProgramId(0), block)), block])
        last = total([ir.Op("*", (k.ProgramId(0), block)), block, ir.Const(-1)])
        return total([k.Quotient(last, _HEADS), ir.Const(1)])

    def _bounds(self, bounds: tuple[Bound, ...]):
        """A pass's loop bounds (kernel IR integers) from the schedule's proved bounds;
        None: the whole range."""
        f = self.f
        lo, hi = None, None
        block = k.Var(f"{f.stream}_BLOCK")
        for bound in bounds:
            if bound.side == "upper":   # m <= row + offset: m < end row + offset
                keys = ir.Dim(self.cascade.var_rank(f.stream))
                hi = _tighter("min", hi, self._open_rows(
                    bound, k.Extremum("min", keys, self._keys_end(bound)), keys))
            else:                       # m >= row + offset
                first = k.Extremum("max", ir.Const(0), self._keys_start(bound))
                lo = _tighter("max", lo, k.Integer(ir.Op("*", (k.Quotient(first, block),
                                                               block))))
        return lo, hi

    def _open_rows(self, bound: Bound, end, every):
        """An upper bound's end of the loop (`end`), or `every` (the whole rank) for a
        row tile holding a row below the bound's `open_rows` (a row that sees every key:
        its first row is below ceil(s))."""
        if bound.open_rows is None:
            return k.Integer(end)
        below = k.Integer(ir.Op("<", (self._first_row(), self._offset(
            "upper", bound.open_rows, "open_rows"))))
        return k.Integer(k.Extremum("max", end, ir.Op("*", (every, below))))

    def _sinks_first(self, bounds: tuple[Bound, ...], start, stop, tile, loops,
                     steps: bool = False):
        """Where a lower bound lets every row see the first keys too (`key < s`, the
        sinks: bounds.py's either_bound), the loops over their tiles (`loops(first,
        last)`) go into the body first, up to s rounded up to a whole key tile and no
        later than `stop` (`steps`: counted in a split's steps, else in keys, as `start`
        and `stop` are). Returns the window's start, moved past them so that no tile is
        visited twice (`start` itself without sinks)."""
        (sinks,) = [b.sinks for b in bounds if b.sinks is not None] or [None]
        if sinks is None:
            return start
        keys = k.Extremum("max", ir.Const(0), self._offset("upper", sinks, "sinks"))
        end = k.Quotient(total([keys, tile, ir.Const(-1)]), tile)
        if not steps:
            end = ir.Op("*", (end, tile))
        name = "sink_steps" if steps else "sinks_end"
        self.body += [k.Let(name, k.Integer(k.Extremum("min", end, stop))),
                      *loops(_ZERO, k.Var(name))]
        return k.Integer(k.Extremum("max", start, k.Var(name)))

    def _keys_start(self, bound: Bound):
        """The first key a lower bound lets some row of the tile see: its first row's."""
        if bound.function is not None:
            return self._at_row(bound.function, self._first_row(), "window_first")
        return total([self._first_row(), self._offset(bound.side, bound.offset)])

    def _keys_end(self, bound: Bound):
        """One past the last key an upper bound lets some row of the tile see: its last
        row's (an affine bound's from the uncapped tile end, as the rows past the rank
        add nothing)."""
        if bound.function is not None:
            last = ir.Op("-", (k.Extremum("min", self._end_row(),
                                          ir.Dim(self.cascade.var_rank(self.f.row))),
                               ir.Const(1)))
            return total([self._at_row(bound.function, last, "window_last"), ir.Const(1)])
        return total([self._end_row(), self._offset(bound.side, bound.offset)])

    def _at_row(self, function: ir.Expr, row, name: str) -> k.Var:
        """A monotone bound's function at one row, computed before the loops as the
        kernel's masks compute the condition (in floats: a param W is a float, and
        Triton's // takes integers only); its value is a whole number (bounds.py takes
        the floor or ceiling), converted exactly. The name it gets there (`name`,
        numbered if taken). (A NaN W masks every key: any bound is exact there.)"""
        value = k.Cast(self.f.expr(substitute(function, {self.f.row: row}),
                                   ((), k.Mask(()))), "int64")
        if value not in self.window:
            self.window[value] = _unused(name, self.window.values())
            self.body.append(k.Let(self.window[value], value))
        return k.Var(self.window[value])

    def _offset(self, side: str, offset: sympy.Expr, called: str | None = None):
        """An offset as the kernel reads it: an integer, or (with params, a window W) a
        kernel argument the host computes, rounded outwards, so a fractional param visits
        more tiles, never fewer (`called`: its name, else `<side>_offset`)."""
        if not offset.free_symbols:
            return k.Group(ir.Const(int(offset)))
        rounding = "floor" if side == "lower" else "ceil"
        named = [o.name for o in self.offsets if (o.rounding, o.value) == (rounding, offset)]
        if named:
            return k.Group(k.Var(named[0]))
        called = called or f"{side}_offset"
        same_side = sum(o.name.startswith(called) for o in self.offsets)
        name = called + (str(same_side + 1) if same_side else "")
        self.offsets.append(Offset(name, rounding, offset))
        return k.Group(k.Var(name))

class _SplitLowering(_PassLowering):
    """The schedule for a split streamed rank: one loop over its outer part, the inner
    part as the tile, recurrences over the outer part carried in registers."""

    def lower(self) -> LoweredKernel:
        f, cascade = self.f, self.cascade
        name = self.schedule.name
        outer = cascade.var_rank(f.loop)
        stream = cascade.root_rank(outer)
        inner = cascade.var_rank(f.stream)
        self._prologue(1)
        available = {t.name for t in cascade.inputs}
        self.body += self._rows(available)
        carried = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.CARRIED]
        self._begin_loops()
        self.body += [k.Comment(""), k.Comment(
            f"the key tiles: {f.loop} steps over {outer} = ceil({stream} / {inner}); "
            f"{', '.join(e.tensor for e in carried) or 'nothing'} carried across steps")]
        for einsum in carried:
            layout = f.layouts[einsum.tensor]
            init = f.lowered(einsum.init, layout, self._row_lanes(layout))
            self.body.append(k.Let(einsum.tensor, ir.Op("+", (init, self._zeros(layout)))))
        lo, hi = self._step_bounds()
        step = [k.Let(f.stream, k.Cast(k.Arange(f"{f.stream}_BLOCK"), "int64")),
                k.Let("lanes", k.Mask((k.Expand(_ROW_LIVE, (True, False)),
                                       k.Expand(self._keys_live(), (False, True))))),
                *(k.Let(f"{e.tensor}_at", k.Var(e.tensor), note=f"at step {f.loop}")
                  for e in carried)]
        for einsum in cascade.einsums:
            kind = f.kinds[einsum.tensor]
            if kind in (Role.STREAM, Role.STREAM_DOT):
                step += self._stream(einsum)
            elif kind in (Role.TILE_REDUCE, Role.TILE_DOT):
                step += self._accumulate(einsum, fresh=True)
            elif kind in (Role.TILE_ROW, Role.CARRIED):
                step += self._row_value(einsum)
        start, stop = lo or _ZERO, hi or k.Integer(ir.Dim(outer))
        step = self._scales_folded(self._biases_added(tuple(step)))
        mine = self._program_steps(outer)
        start = self._sinks_first(self.schedule.passes[0].bounds, start, stop,
                                  f.step_keys(),
                                  lambda first, last: self._loops(*mine(first, last), step,
                                                                  stream),
                                  steps=True)
        self.body += self._loops(*mine(start, stop), step, stream)
        self.body += self._after_loop(available)
        return self._lowered(f"one fused kernel {name}: grid over {self._grid_text()}; "
                             f"one loop over "
                             f"{outer} tiles of {inner} keys with "
                             f"{', '.join(e.tensor for e in carried)} carried in registers; "
                             f"{_range_text((lo, hi), f.loop, self.schedule.passes[0].bounds)}"
                             f"{self._described_split()}")

    def _program_steps(self, outer: str):
        """The steps this program runs of a range [start, stop) of them, as a function of
        the two: all of them (a split-KV partial kernel takes its range of them:
        schedule/split_kv.py)."""
        return lambda start, stop: (start, stop)

    def _described_split(self) -> str:
        return ""

    def _after_loop(self, available: set[str]) -> list:
        """What follows the loop: the row values that read the carried state (the
        finish), then the outputs' stores."""
        f, cascade = self.f, self.cascade
        body = self._rows_after_loops()
        available.update(e.tensor for e in cascade.einsums if f.kinds[e.tensor] != Role.ROW)
        body.append(k.Comment(""))
        body += self._rows(available)
        self.body += body
        self._hoist()
        self.body.append(k.Comment(""))
        return self._stores()

    def _loops(self, start, stop, step: tuple, stream: str) -> list:
        """The loop over the steps, with its interior steps (every mask of the tile true:
        schedule/interior.py) as a loop of their own without the masks: before them the
        steps a lower bound masks, after them the diagonal, the window's far edge and the
        last partial tile (the recurrences carried across steps keep their order). One
        masked loop where no tile can be interior."""
        f, cascade = self.f, self.cascade
        per_step = [e for e in cascade.einsums if f.kinds[e.tensor] != Role.ROW]
        blocks = {f.stream: (None, k.Cast(k.Arange(f.tile_block), "int64"))}
        step = rows_clamped(step, self._clamped_rows())
        bounds, inner = self._interior_step(step, per_step, stream, ir.Index(f.loop), blocks)
        if f.padded:
            inner = None        # the lanes past the factor are masked in every step
        # The masked steps read through the same pointer blocks, their keys masked
        # rather than clamped (fewer registers and instructions beside the interior's).
        step, moved = self._advanced(self._described_loads(masked_keys(step), blocks),
                                     ir.Index(f.loop), blocks)

        def loop(first, last, body, carried):
            return carried_loop(f.loop, ir.Index(f.loop), first, last, None, body, carried)

        if inner is None:
            return loop(start, stop, step, moved)
        begin, end, lowered = self._interior_range(
            start, stop, stream, k.Var(f.tile_block), bounds,
            capped=stop != k.Integer(ir.Dim(self.cascade.var_rank(f.loop))))
        loops = [_INTERIOR_NOTE, *loop(begin, end, *inner),
                 _REST_NOTE, *loop(end, stop, step, moved)]
        if lowered:
            loops[:0] = loop(start, begin, step, moved)
        return loops

    def _biases_added(self, step: tuple) -> tuple:
        """A step with each score's term linear in the key column taken by the matrix
        unit (schedule/biases.py), its operands made before the loop; the flags they
        need are the kernel's."""
        f = self.f
        step, flags = added_biases(step, f.stream, tuple(f.batch), f"{f.row}_BLOCK",
                                   f.tile_block, self._hoisted)
        self.flags.update((flag.name, flag) for flag in flags)
        return step

    def _step_bounds(self):
        """The range of steps m1 for this row tile (kernel IR integers): the schedule's
        proved bounds of its one pass (present only where skipping a fully masked step is
        proved right)."""
        f, cascade = self.f, self.cascade
        tile = f.step_keys()
        lo, hi = None, None
        for bound in self.schedule.passes[0].bounds:
            if bound.side == "upper":   # keys up to the last row + offset
                last = total([self._keys_end(bound), tile])
                steps = k.Quotient(k.Extremum("max", ir.Const(0),
                                              ir.Op("-", (last, ir.Const(1)))), tile)
                outer = ir.Dim(cascade.var_rank(f.loop))
                hi = _tighter("min", hi,
                              self._open_rows(bound, k.Extremum("min", outer, steps), outer))
            else:                       # keys from the first row + offset
                lo = _tighter("max", lo, k.Integer(k.Quotient(k.Extremum(
                    "max", ir.Const(0), self._keys_start(bound)), tile)))
        return lo, hi

    def _key(self, grouped: bool = True):
        f = self.f
        key = ir.Op("+", (ir.Op("*", (k.Var(f.loop), f.step_keys())), k.Var(f.stream)))
        return k.Group(key) if grouped else key

    def _keys_live(self, grouped: bool = True) -> k.Integer:
        """A padded step's keys exist below the factor too (m0 < M0): the lanes past it
        are the next step's keys."""
        live = super()._keys_live(grouped)
        if not self.f.padded:
            return live
        return k.Integer(ir.Op("&", (live.value, self.f.stream_in_rank().value)))


def _tighter(op: str, bound, new):
    """Two bounds of one side of a loop (a causal diagonal and a KV cache's valid
    length): the tighter, `op` "min" for upper bounds, "max" for lower ones."""
    return new if bound is None else k.Integer(k.Extremum(op, bound, new))


def _unused(name: str, taken) -> str:
    """`name`, or `name2`, `name3`, ...: the first that `taken` does not hold."""
    taken = set(taken)
    return next(n for n in itertools.chain([name], (f"{name}{i}" for i in itertools.count(2)))
                if n not in taken)


def _as_stored(operand):
    """A dot operand that is a tile loaded from an input, loaded in the input's own dtype:
    the dot converts it once (a 16-bit K tile is transposed and fed to the tensor cores
    without a trip through float32 and back, which exact widening makes a no-op on the
    values); anything computed stays float32."""
    if isinstance(operand, k.Load) and not operand.flag:
        return dataclasses.replace(operand, raw=True)
    return operand


def _integer_test(op: str, left, right) -> k.Test:
    """A comparison of indices as a mask's condition."""
    return k.Test(ir.Op(op, (left, right)), integer=True)


def _range_text(bounds, stream: str, proved: tuple[Bound, ...] = ()) -> str:
    """What a loop's range leaves out, in words: an upper bound is the causal diagonal
    (affine) or a window's far edge (a bound of the row that is not affine)."""
    lo, hi = bounds
    if lo is None and hi is None:
        return f"all {stream} tiles"
    parts = []
    if lo is not None:
        sinks = any(b.sinks is not None for b in proved)
        parts.append("skips tiles between the sinks and the window" if sinks else
                     "skips tiles before the window")
    if hi is not None:
        window = any(b.side == "upper" and b.function is not None for b in proved)
        open_rows = any(b.open_rows is not None for b in proved)
        parts.append(f"skips tiles past the {'window' if window else 'diagonal'}" +
                     (" (but for the rows that see every key)" if open_rows else ""))
    return ", ".join(parts)
