"""The loop schedule's decisions (docs/codegen.md, the loop schedule): for a cascade
that is not attention-shaped, the grid ranks every Einsum has, the loop (recurrence steps
or the largest iteration space beyond the grid, flattened into tiles), the ranks held
whole, and each tensor's role, layout and pass. schedule/lowering.py's `lower_loops`
lowers them to the kernel IR, which backends/triton_ir.py prints.

- The *grid* ranks are those every Einsum has on its left (ECA: B, C; GLA: B, H, F): a
  program takes one point of each and a tile of <row>_BLOCK points of the last one (the
  row rank), so nothing a program computes is needed by another.
- With a recurrence (an iterative rank X, GLA's T), the program loops over X one step at
  a time; the recurrences are carried in registers (`S_at` is the value before the step,
  `S` after it), the per-step tensors are computed and stored each step, and what reads
  final values runs after the loop: flash-linear-attention's fused recurrent kernel,
  derived from the spec.
- Without one, the ranks of the largest iteration space beyond the grid (ECA: H, W) are
  the *loop*, flattened and taken in tiles of <h>_flat_BLOCK lanes: reductions over all of
  them (GAP) accumulate across the tiles, tensors over them (O) are computed per tile and
  stored. A tensor that needs a finished reduction is computed in a later pass over the
  tiles (its inputs are re-read: nothing loop-sized is buffered).
- Every other rank (ECA's K, GLA's D) is *held* whole in a tile of <k>_BLOCK, and may be
  reduced with a sum, max or min inside a step.

A register value can be read only at the program's own points. A read at other points of
a grid rank (ECA's `GAP[b, c + k - K // 2]`) raises `Crossing`: the value crosses program
tiles, which is where schedule/stages.py cuts the cascade into kernels with the value in
global memory between them. Anything else that does not fit raises NotFusable with the
reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..analysis.presence import Condition, absent_tensors, einsum_conditions, point_conditions
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from .kernel import loaded_inputs, scalars
from .model import (DotPlan, Form, KernelSchedule, Knob, Loop, LoopKind, Pass, Role,
                    Store, TensorPlan)
from .stages import Crossing, NotFusable

BLOCK_ROW = 16     # points of the row rank per program
BLOCK_LANES = 64   # points of the (flattened) loop ranks per tile
# The chunk where a chunk's attention is a sum over (t0, tk, d), no tl.dot (GLA's decay
# per key feature): 16 x 16 x D values a chunk, as flash-linear-attention's sub-chunks of
# 16 (at 64 it would be 16 times as many registers).
CUBIC_CHUNK = 16
# The chunk form's tile of value features and its warps (sm90 static reports: at 64
# features and 8 warps the fewest issue slots per token, no spill, GLA and RetNet).
CHUNK_ROWS = 64
CHUNK_WARPS = 8


@dataclass(frozen=True)
class Chunk:
    """The chunk form's variables: a step `var` of the split rank (t) is the chunk `step`
    (t1, the recurrence's steps) and the step `within` it (t0: t = t1*T0 + t0, T0 the
    rank `inner`); `key` (tk) a second step of the chunk, a held rank as large."""

    var: str
    step: str
    within: str
    key: str
    inner: str


class LoopRoles:
    """The loop schedule's decisions: grid, loop, held ranks, the role and layout of each
    tensor, and the pass each is computed in."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        einsums = cascade.einsums
        steps = {e.iter_var for e in einsums if e.iterative is not None}
        if len(steps) > 1:
            raise NotFusable(f"recurrences over different ranks ({', '.join(sorted(steps))})")
        self.step = next(iter(steps), None)
        self.chunk = self._chunk()
        order = [r.var for r in cascade.ranks.values()]
        if self.chunk is None:
            common = set.intersection(*(set(e.indices) for e in einsums)) - {self.step}
            grid = [v for v in order if v in common]
        else:
            # The chunk form's programs take the outputs' ranks but the steps: the batch
            # (B, H) and tiles of the value features (F, last). An Einsum without some
            # of them (the chunk's decays, per head and not per batch point; the chunk's
            # attention, not per feature) is computed whole in each program.
            output = cascade.einsum(cascade.outputs[0])
            grid = [v for v in order if v in self.own(output.indices) and
                    v not in (self.step, self.chunk.within)]
            common = set(grid)
        if not grid:
            raise NotFusable("no rank that every tensor has, to spread programs over")
        self.row, self.batch = grid[-1], grid[:-1]
        spaces = [[v for v in order if v in self.own(e.variables) and v not in common
                   and v not in (self.step, self.row)] for e in einsums]
        # The loop: the largest iteration space beyond the grid (none with a recurrence).
        self.loop: list[str] = [] if self.step else max(spaces, key=len)
        self.held = [v for v in order if any(v in s for s in spaces) and v not in self.loop]
        if self.chunk is not None:
            # The chunk's steps first (its C x C attention is (t0, tk)), the features
            # next, the value features last: every tl.dot of the chunk then takes its
            # operands as held, but for one transposed (docs/codegen.md, the chunk form).
            first = [v for v in (self.chunk.within, self.chunk.key) if v in self.held]
            self.held = first + [v for v in self.held if v not in first]
        # The flattened loop index, named after the loop's first rank (names.py's rule).
        self.lanes = f"{self.loop[0]}_flat" if self.loop else "flat"
        self.absent = absent_tensors(cascade)
        self.kinds: dict[str, Role] = {}
        self.layouts: dict[str, tuple[str, ...]] = {}
        for einsum, space in zip(einsums, spaces):
            if set(space) & set(self.loop) and set(space) & set(self.held):
                raise NotFusable(f"{einsum.tensor} iterates over {', '.join(space)}: both "
                                 f"the loop ({', '.join(self.loop)}) and held ranks")
            self._classify(einsum)
        for einsum in einsums:
            self._check_reads(einsum)
        for output in cascade.outputs:
            if self.kinds[output] == Role.CARRIED:
                raise NotFusable(f"the recurrence {output} is an output")
        self._passes()

    # ---------------------------------------------------------------- the chunk form
    def _chunk(self) -> Chunk | None:
        """The chunk form (rule 4's chunked recurrence): the one split of the cascade,
        its outer part the recurrence's steps; None without a split. Any other split is
        the attention schedule's."""
        cascade = self.cascade
        if not cascade.splits:
            return None
        split = cascade.splits[0]
        outer, var = cascade.ranks[split.outer].var, cascade.ranks[split.parent].var
        inner = cascade.ranks[split.inner].var
        size = cascade.ranks[split.inner].size
        # The chunk's second step (the key's): a rank defined as large as the chunk.
        keys = [r.var for r in cascade.ranks.values() if r.definition is not None and
                r.size == size and r.name != split.inner]
        # Rule 4's form: the recurrence steps over the chunks, a second step of the
        # chunk, and outputs over the split rank itself (its steps reassembled). An
        # online max-shift's split is the attention schedule's: its outputs are per row.
        if len(cascade.splits) > 1 or self.step != outer or not keys or \
                not all(var in cascade.einsum(o).indices for o in cascade.outputs):
            raise NotFusable("a split rank outside the attention schedule")
        return Chunk(var, outer, inner, keys[0], split.inner)

    def own(self, variables) -> set[str]:
        """The variables a tensor or expression spans in the kernel: in the chunk form
        a step t is (t1, t0), the chunk and the step within it."""
        found = set(variables)
        if self.chunk is not None and self.chunk.var in found:
            found = (found - {self.chunk.var}) | {self.chunk.step, self.chunk.within}
        return found

    # ---------------------------------------------------------------- layouts
    @property
    def order(self) -> tuple[str, ...]:
        """Every tile dimension, in the one order all layouts follow (the chunk form:
        the value features last)."""
        if self.chunk is not None:
            return (*self.held, self.row)
        return (self.row, *self.held) + ((self.lanes,) if self.loop else ())

    def layout(self, variables) -> tuple[str, ...]:
        dims = self.own(variables)
        dims |= {self.lanes} if dims & set(self.loop) else set()
        return tuple(d for d in self.order if d in dims)

    # ---------------------------------------------------------------- classification
    def _classify(self, einsum: Einsum) -> None:
        name, left, reduced = einsum.tensor, self.own(einsum.indices), set(einsum.reduced)
        loop = set(self.loop)
        if self.step in reduced:
            raise NotFusable(f"{name} reduces over the steps of {self.step}")
        if einsum.iterative is not None:
            kind = Role.CARRIED
            if name in self.absent and self.chunk is None:
                # (the chunk form carries the state's presence flags beside it: the
                # last chunk's state is absent where it ends before the chunk does)
                raise NotFusable(f"the recurrence {name} may be absent")
        elif self.step in left:
            kind = Role.STEP
        elif reduced & loop:
            if reduced != loop:
                raise NotFusable(f"{name} reduces {', '.join(sorted(reduced))}, not the "
                                 f"whole loop ({', '.join(self.loop)})")
            kind = Role.REDUCE
        elif left & loop:
            if not loop <= left:
                raise NotFusable(f"{name} has part of the loop ({', '.join(self.loop)})")
            kind = Role.STREAM
        else:
            kind = Role.ROW
        self.kinds[name] = kind
        self.layouts[name] = self.layout(left - {self.step} - set(self.batch))

    def _check_reads(self, einsum: Einsum) -> None:
        """Register values are read at the reader's own points; a recurrence also before
        the step (at x), after it (x+1), or finally (X)."""
        for read in einsum.accesses():
            if self.cascade.tensors[read.tensor].is_input:
                continue
            producer = self.cascade.einsum(read.tensor)
            for position, (index, var) in enumerate(zip(read.indices, producer.indices)):
                if position == producer.iterative:
                    if self._step_form(read, index, einsum) is None:
                        raise NotFusable(f"{einsum.tensor} reads the recurrence "
                                         f"{read.tensor} at {ir.to_text(index)}")
                elif self.chunk is not None and self.chunk_read(var, index, einsum):
                    continue
                elif index != ir.Index(var):
                    text = f"{einsum.tensor} reads {read.tensor} at {ir.to_text(index)}"
                    if var in self.batch or var == self.row:
                        raise Crossing(f"{text}, other points of {var} than its own: "
                                       f"another program computes them")
                    raise NotFusable(f"{text}, not at its own point")

    def chunk_read(self, var: str, index: ir.Expr, reader: Einsum | None = None
                   ) -> str | None:
        """How the chunk form reads a register value's rank `var` at `index`: 'own' (its
        own point: the chunk and step of the reader's t, `t // T0` and `t % T0`; asked
        with the `reader`), 'renamed' (at another held rank as large: L[t1, tk, d] beside
        L[t1, t0, d]), 'picked' (one point of a held rank: L[t1, T0 - 1, d], the chunk's
        last step); None for anything else."""
        chunk = self.chunk
        t, size = ir.Index(chunk.var), ir.Dim(chunk.inner)
        if reader is not None and chunk.var in reader.variables and (
                (var == chunk.step and index == ir.Op("//", (t, size))) or
                (var == chunk.within and index == ir.Op("%", (t, size)))):
            return "own"
        if var not in self.held:
            return None
        if isinstance(index, ir.Index) and index.var in self.held and index.var != var and \
                self.cascade.ranks[self.cascade.var_rank(index.var)].size == \
                self.cascade.ranks[self.cascade.var_rank(var)].size:
            return "renamed"
        if index == ir.Index(var):
            return None
        if not ir.index_vars(index) and not any(isinstance(node, ir.Read)
                                                for node in ir.walk(index)):
            return "picked"
        return None

    def _step_form(self, read: ir.Read, index: ir.Expr, reader: Einsum) -> str | None:
        """'at' (before the step), 'now' (after it) or 'final'; None if not readable."""
        rank = self.cascade.var_rank(self.step)
        in_loop = self.kinds.get(reader.tensor, Role.CARRIED if reader.iterative is not None
                                 else Role.STEP if self.step in reader.indices else Role.ROW)
        if index == ir.Index(self.step) and in_loop in (Role.STEP, Role.CARRIED):
            return "at"
        if index == ir.Op("+", (ir.Index(self.step), ir.Const(1))) and \
                in_loop in (Role.STEP, Role.CARRIED) and reader.tensor != read.tensor:
            return "now"
        if index == ir.Dim(rank) and in_loop == Role.ROW:
            return "final"
        return None

    def _passes(self) -> None:
        """ready: after which pass a row value or reduction is known (0: before the
        first); first: the first pass a loop tile (stream) can be computed in."""
        self.ready: dict[str, int] = {}
        self.first: dict[str, int] = {}
        self.after_loop: set[str] = set()
        for einsum in self.cascade.einsums:
            name, kind = einsum.tensor, self.kinds[einsum.tensor]
            deps = [r for r in einsum.reads if r in self.kinds and r != name]
            if self.step is not None:
                if kind == Role.ROW and any(self.kinds[d] in (Role.CARRIED, Role.STEP) or
                                         d in self.after_loop for d in deps):
                    self.after_loop.add(name)
                elif kind != Role.ROW and any(d in self.after_loop for d in deps):
                    raise NotFusable(f"{name} needs a value known only after the loop")
                continue
            after = [self.ready[d] + 1 for d in deps if d in self.ready]
            after += [self.first[d] for d in deps if d in self.first]
            if kind == Role.ROW:
                self.ready[name] = max([r - 1 for r in after] + [0])
            elif kind == Role.STREAM:
                self.first[name] = max(after + [1])
            else:
                self.ready[name] = max(after + [1])
        self.passes = max([self.ready[e] for e in self.ready if self.kinds[e] == Role.REDUCE] +
                          [self.first[o] for o in self.cascade.outputs if o in self.first] +
                          [0])

    def conditions(self, einsum: Einsum) -> list[Condition]:
        return einsum_conditions(self.cascade, einsum, self.absent)

    # ---------------------------------------------------------------- the chunk's dots
    def space(self, einsum: Einsum) -> tuple[str, ...]:
        """The tile dimensions of an Einsum's iteration space (its left side and what it
        reduces, but the batch and the step)."""
        return self.layout(set(einsum.variables) - {self.step} - set(self.batch))

    def reduced_tile(self, einsum: Einsum) -> list[str]:
        """The tile dimensions an Einsum reduces inside a tile."""
        layout = self.layouts[einsum.tensor]
        return [d for d in self.space(einsum) if d not in layout]

    def tile_dims(self, variables) -> set[str]:
        """The tile dimensions an expression or condition over `variables` varies along."""
        return self.own(variables) & set(self.order)

    def dot_plan(self, einsum: Einsum) -> DotPlan | None:
        """A sum over one held rank r into a 2-D tile (i, j) whose every factor and
        condition lies on one side, (i, r) or (r, j), or after the sum, (i, j): one
        tl.dot (the chunk form's products: q k^T, A V, (k decayed)^T v, (q decayed) S).
        None where a factor spans all three (GLA's decay per feature inside the chunk's
        attention: a C x C x D sum) or the form is not the chunk's."""
        if self.chunk is None or einsum.reduce_op != "sum":
            return None
        if len(self.layouts[einsum.tensor]) != 2 or len(self.reduced_tile(einsum)) != 1:
            return None
        sides: dict[str, list] = {"left": [], "right": [], "after": []}
        for factor in ir.product_factors(einsum.body):
            side = self.dot_side(einsum, self.tile_dims(ir.index_vars(factor)))
            if side is None:
                return None
            sides[side].append(factor)
        if any(self.dot_side(einsum, self.tile_dims(c.variables)) is None
               for c in self.conditions(einsum)):
            return None
        inputs = {t.name for t in self.cascade.inputs}
        exact = not sides["left"] or not sides["right"]
        rounded = 0 if exact else \
            sum(1 for side in ("left", "right")
                if not (len(sides[side]) == 1 and isinstance(sides[side][0], ir.Read)
                        and sides[side][0].tensor in inputs))
        return DotPlan(einsum.tensor, tuple(sides["left"]), tuple(sides["right"]),
                       tuple(sides["after"]), rounded, exact)

    def decay(self, exponent: ir.Expr) -> bool:
        """Whether `exp(exponent)` is one of the chunk's decays: an exponent that reads
        the chunk's prefix sums of log-gates only (rule 4's `S_L[t0] - S_L[tk]`,
        `S_L[T0 - 1]`, ...: a sum over the chunk's key step under `tk <= t0`)."""
        reads = ir.reads(exponent)
        return bool(reads) and all(r.tensor in self.prefix_sums for r in reads)

    @functools.cached_property
    def prefix_sums(self) -> frozenset[str]:
        """The chunk form's sums over the chunk's key step under `tk <= t0`."""
        if self.chunk is None:
            return frozenset()
        causal = ir.Op("<=", (ir.Index(self.chunk.key), ir.Index(self.chunk.within)))
        return frozenset(e.tensor for e in self.cascade.einsums
                         if e.reduce_op == "sum" and e.reduced == (self.chunk.key,) and
                         causal in ir.conjuncts(e.filter))

    @property
    def cubic(self) -> tuple[str, ...]:
        """The chunk form's sums that are no tl.dot and span three tile dimensions (the
        chunk's attention with a decay per feature: C x C x D values per chunk)."""
        return tuple(e.tensor for e in self.cascade.einsums
                     if self.chunk is not None and e.reduce_op is not None and
                     self.dot_plan(e) is None and len(self.space(e)) > 2)

    def dot_side(self, einsum: Einsum, dims: set[str]) -> str | None:
        """Which operand of `einsum`'s dot a factor or condition over the tile dims `dims`
        belongs to: 'left' (the reduced r and rows i), 'right' (r and columns j), 'after'
        (no r: applied to the product); None if it spans i, r and j."""
        i, j = self.layouts[einsum.tensor]
        r = self.reduced_tile(einsum)[0]
        if r not in dims:
            return "after" if dims <= {i, j} else None
        if dims <= {i, r}:
            return "left"
        return "right" if dims <= {r, j} else None

    # ---------------------------------------------------------------- the schedule
    def pass_plan(self) -> list[tuple[int, list[Einsum], list[str], list[Einsum]]]:
        """Per pass over the tiles: its number, the reductions it finishes, the outputs it
        stores, and the loop tiles it computes (again) for them."""
        plan = []
        for number in range(1, self.passes + 1):
            reductions = [e for e in self.cascade.einsums if self.kinds[e.tensor] ==
                          Role.REDUCE and self.ready[e.tensor] == number]
            stored = [o for o in self.cascade.outputs if self.first.get(o) == number]
            plan.append((number, reductions, stored, self._tiles_for(reductions, stored)))
        return plan

    def _tiles_for(self, reductions: list[Einsum], stored: list[str]) -> list[Einsum]:
        needed: set[str] = set()
        stack = [r for e in reductions for r in e.reads] + list(stored)
        while stack:
            name = stack.pop()
            if name in needed or self.kinds.get(name) != Role.STREAM:
                continue
            needed.add(name)
            stack.extend(self.cascade.einsum(name).reads)
        return [e for e in self.cascade.einsums if e.tensor in needed]

    def kernel_schedule(self, name: str) -> KernelSchedule:
        """The decisions as data, before anything is printed."""
        cascade = self.cascade
        # What the kernel computes: everything but the loop tiles no pass needs.
        tiles = {e.tensor for *_, needed in self.pass_plan() for e in needed}
        live = [e for e in cascade.einsums
                if self.kinds[e.tensor] != Role.STREAM or e.tensor in tiles]
        # The chunk form's programs take 64 value features: each recomputes the chunk's
        # attention, so the fewer programs per batch point the less work is repeated;
        # with 8 warps nothing spills (sm90 static reports, docs/codegen.md).
        row_block = CHUNK_ROWS if self.chunk is not None else BLOCK_ROW
        knobs = [Knob(f"{self.row}_BLOCK", row_block, "a power of two")]
        if self.step is not None:
            loops = (Loop(self.step, cascade.var_rank(self.step), LoopKind.RECURRENCE_STEPS,
                          over=(self.step,)),)
            passes = (Pass(1, (), tuple(e.tensor for e in cascade.einsums
                                        if self.kinds[e.tensor] in (Role.CARRIED, Role.STEP))),)
        else:
            extent = " * ".join(cascade.var_rank(v) for v in self.loop)
            tile = f"{self.lanes}_BLOCK"
            loops = tuple(Loop(self.lanes, extent, LoopKind.FLAT_TILES, tile, tuple(self.loop))
                          for _ in range(self.passes))
            passes = tuple(Pass(number, tuple(e.tensor for e in reductions),
                                tuple(e.tensor for e in tiles))
                           for number, reductions, _, tiles in self.pass_plan())
            if self.loop and self.passes:
                knobs.append(Knob(tile, BLOCK_LANES, "a power of two"))
        dots = tuple(plan for plan in (self.dot_plan(e) for e in live) if plan is not None)
        return KernelSchedule(
            name=name, form=Form.STEPS if self.step is not None else Form.TILES,
            batch=tuple(self.batch), row=self.row, loops=loops, held=tuple(self.held),
            tensors=tuple(TensorPlan(e.tensor, self.kinds[e.tensor], self.layouts[e.tensor])
                          for e in cascade.einsums),
            passes=passes, inputs=loaded_inputs(cascade, live),
            outputs=tuple(cascade.outputs), scalars=scalars(cascade, live),
            stores=tuple(self._store(o) for o in cascade.outputs), knobs=tuple(knobs),
            uses_dot=bool(dots), dots=dots,
            # The chunk form's dots take computed values of no bound in float16's range
            # (the state, the chunk's attention): float32 with float16 inputs.
            buffered_dots=bool(dots),
            launch=(("num_warps", CHUNK_WARPS),) if self.chunk is not None else ())

    def _store(self, output: str) -> Store:
        """An output that may be absent is stored as 0 where its point conditions fail."""
        if output not in self.absent:
            return Store(output)
        einsum = self.cascade.einsum(output)
        return Store(output, frozenset(point_conditions(einsum, self.conditions(einsum))))
