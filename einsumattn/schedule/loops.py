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

from ..analysis.presence import Condition, absent_tensors, einsum_conditions, point_conditions
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from .kernel import loaded_inputs, scalars
from .model import Form, KernelSchedule, Knob, Loop, LoopKind, Pass, Role, Store, TensorPlan
from .stages import Crossing, NotFusable

BLOCK_ROW = 16     # points of the row rank per program
BLOCK_LANES = 64   # points of the (flattened) loop ranks per tile


class LoopRoles:
    """The loop schedule's decisions: grid, loop, held ranks, the role and layout of each
    tensor, and the pass each is computed in."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        einsums = cascade.einsums
        if cascade.splits:
            raise NotFusable("a split rank outside the attention schedule")
        steps = {e.iter_var for e in einsums if e.iterative is not None}
        if len(steps) > 1:
            raise NotFusable(f"recurrences over different ranks ({', '.join(sorted(steps))})")
        self.step = next(iter(steps), None)
        common = set.intersection(*(set(e.indices) for e in einsums)) - {self.step}
        order = [r.var for r in cascade.ranks.values()]
        grid = [v for v in order if v in common]
        if not grid:
            raise NotFusable("no rank that every tensor has, to spread programs over")
        self.row, self.batch = grid[-1], grid[:-1]
        spaces = [[v for v in order if v in e.variables and v not in common
                   and v != self.step] for e in einsums]
        # The loop: the largest iteration space beyond the grid (none with a recurrence).
        self.loop: list[str] = [] if self.step else max(spaces, key=len)
        self.held = [v for v in order if any(v in s for s in spaces) and v not in self.loop]
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

    # ---------------------------------------------------------------- layouts
    @property
    def order(self) -> tuple[str, ...]:
        """Every tile dimension, in the one order all layouts follow."""
        return (self.row, *self.held) + ((self.lanes,) if self.loop else ())

    def layout(self, variables) -> tuple[str, ...]:
        dims = set(variables) | ({self.lanes} if set(variables) & set(self.loop) else set())
        return tuple(d for d in self.order if d in dims)

    # ---------------------------------------------------------------- classification
    def _classify(self, einsum: Einsum) -> None:
        name, left, reduced = einsum.tensor, set(einsum.indices), set(einsum.reduced)
        loop = set(self.loop)
        if self.step in reduced:
            raise NotFusable(f"{name} reduces over the steps of {self.step}")
        if einsum.iterative is not None:
            kind = Role.CARRIED
            if name in self.absent:
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
                elif index != ir.Index(var):
                    text = f"{einsum.tensor} reads {read.tensor} at {ir.to_text(index)}"
                    if var in self.batch or var == self.row:
                        raise Crossing(f"{text}, other points of {var} than its own: "
                                       f"another program computes them")
                    raise NotFusable(f"{text}, not at its own point")

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
        knobs = [Knob(f"{self.row}_BLOCK", BLOCK_ROW, "a power of two")]
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
        return KernelSchedule(
            name=name, form=Form.STEPS if self.step is not None else Form.TILES,
            batch=tuple(self.batch), row=self.row, loops=loops, held=tuple(self.held),
            tensors=tuple(TensorPlan(e.tensor, self.kinds[e.tensor], self.layouts[e.tensor])
                          for e in cascade.einsums),
            passes=passes, inputs=loaded_inputs(cascade, live),
            outputs=tuple(cascade.outputs), scalars=scalars(cascade, live),
            stores=tuple(self._store(o) for o in cascade.outputs), knobs=tuple(knobs),
            uses_dot=False)

    def _store(self, output: str) -> Store:
        """An output that may be absent is stored as 0 where its point conditions fail."""
        if output not in self.absent:
            return Store(output)
        einsum = self.cascade.einsum(output)
        return Store(output, frozenset(point_conditions(einsum, self.conditions(einsum))))
