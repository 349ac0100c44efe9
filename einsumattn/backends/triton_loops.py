"""The fused loop schedule: one Triton kernel for a cascade (or a stage of one) that is
not attention-shaped, with its loop read off the IR.

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
  reduced with tl.sum / tl.max / tl.min inside a step.

A register value can be read only at the program's own points. A read at other points of
a grid rank (ECA's `GAP[b, c + k - K // 2]`) raises `Crossing`: the value crosses program
tiles, which is where `schedule/stages.py` cuts the cascade into kernels with the value in
global memory between them. Anything else that does not fit raises NotFusable with the
reason.
"""

from __future__ import annotations

from ..analysis.presence import (Condition, absent_tensors, einsum_conditions,
                                 in_range_by_construction, point_conditions)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..schedule.stages import Crossing, NotFusable
from .triton_kernel import FusedKernel, kernel_arguments, program_coordinates
from .triton_printer import TritonPrinter, Unsupported, scalar_condition, tile_asserts

BLOCK_ROW = 16     # points of the row rank per program
BLOCK_LANES = 64   # points of the (flattened) loop ranks per tile


_IDENTITY = {"sum": "0.0", "max": "float('-inf')", "min": "float('inf')"}
_REDUCER = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}


def _expand(text: str, dim: str, layout: tuple[str, ...]) -> str:
    """A 1-D block along `dim`, broadcast into `layout`."""
    if len(layout) == 1:
        return text
    return f"{text}[{', '.join(':' if d == dim else 'None' for d in layout)}]"


class _LoopFuser:
    """The schedule's facts: grid, loop, held ranks, the kind and layout of each tensor."""

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
        self.kinds: dict[str, str] = {}
        self.layouts: dict[str, tuple[str, ...]] = {}
        for einsum, space in zip(einsums, spaces):
            if set(space) & set(self.loop) and set(space) & set(self.held):
                raise NotFusable(f"{einsum.tensor} iterates over {', '.join(space)}: both "
                                 f"the loop ({', '.join(self.loop)}) and held ranks")
            self._classify(einsum)
        for einsum in einsums:
            self._check_reads(einsum)
        for output in cascade.outputs:
            if self.kinds[output] == "carried":
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
            kind = "carried"
            if name in self.absent:
                raise NotFusable(f"the recurrence {name} may be absent")
        elif self.step in left:
            kind = "step"
        elif reduced & loop:
            if reduced != loop:
                raise NotFusable(f"{name} reduces {', '.join(sorted(reduced))}, not the "
                                 f"whole loop ({', '.join(self.loop)})")
            kind = "reduce"
        elif left & loop:
            if not loop <= left:
                raise NotFusable(f"{name} has part of the loop ({', '.join(self.loop)})")
            kind = "stream"
        else:
            kind = "row"
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
        in_loop = self.kinds.get(reader.tensor, "carried" if reader.iterative is not None
                                 else "step" if self.step in reader.indices else "row")
        if index == ir.Index(self.step) and in_loop in ("step", "carried"):
            return "at"
        if index == ir.Op("+", (ir.Index(self.step), ir.Const(1))) and \
                in_loop in ("step", "carried") and reader.tensor != read.tensor:
            return "now"
        if index == ir.Dim(rank) and in_loop == "row":
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
                if kind == "row" and any(self.kinds[d] in ("carried", "step") or
                                         d in self.after_loop for d in deps):
                    self.after_loop.add(name)
                elif kind != "row" and any(d in self.after_loop for d in deps):
                    raise NotFusable(f"{name} needs a value known only after the loop")
                continue
            after = [self.ready[d] + 1 for d in deps if d in self.ready]
            after += [self.first[d] for d in deps if d in self.first]
            if kind == "row":
                self.ready[name] = max([r - 1 for r in after] + [0])
            elif kind == "stream":
                self.first[name] = max(after + [1])
            else:
                self.ready[name] = max(after + [1])
        self.passes = max([self.ready[e] for e in self.ready if self.kinds[e] == "reduce"] +
                          [self.first[o] for o in self.cascade.outputs if o in self.first] +
                          [0])

    # ---------------------------------------------------------------- printing
    def names(self, layout: tuple[str, ...]) -> dict[str, str]:
        names = {v: v for v in self.batch}
        if self.step is not None:
            names[self.step] = self.step
        for var in (self.row, *self.held):
            if var in layout:
                names[var] = _expand(var, var, layout)
        if self.lanes in layout:
            for var in self.loop:
                names[var] = _expand(var, self.lanes, layout)
        return names

    def live(self, layout: tuple[str, ...]) -> str:
        return " & ".join(_expand(f"{d}_live", d, layout) for d in layout)

    def value(self, expr: ir.Expr, layout: tuple[str, ...]) -> str:
        try:
            return TritonPrinter(self.names(layout), lambda r: self.read(r, layout))(expr)
        except Unsupported as reason:
            raise NotFusable(str(reason)) from None

    def read(self, node: ir.Read, layout: tuple[str, ...], ok: bool = False) -> str:
        tensor = self.cascade.tensors[node.tensor]
        if not tensor.is_input:
            name = node.tensor
            producer = self.cascade.einsum(name)
            if producer.iterative is not None and not ok:
                index = node.indices[producer.iterative]
                if index == ir.Index(self.step):
                    name += "_at"
            return self.reshape(f"{name}_ok" if ok else name, self.layouts[node.tensor], layout)
        printer = TritonPrinter(self.names(layout), self._no_read, integer=True)
        terms = []
        for position, index in enumerate(node.indices):
            text = printer(index)
            if not in_range_by_construction(self.cascade, node.tensor, position, index):
                text = f"tl.minimum(tl.maximum({text}, 0), {tensor.ranks[position]} - 1)"
            terms.append(f"({text}) * {node.tensor}_s{position}")
        address = f"{node.tensor}_ptr + {' + '.join(terms) or '0'}"
        dims = self.layout(set(ir.index_vars(node)) - set(self.batch) - {self.step})
        if not dims:
            # One address per program (batch coordinates, the step): valid, no mask.
            return f"tl.load({address}).to(tl.float32)"
        # Masked on the tile dimensions the address has (a K[d] tile is loaded once, not
        # once per row), and broadcast where it is used.
        mask = " & ".join(_expand(f"{d}_live", d, layout) for d in dims)
        return f"tl.load({address}, mask={mask}, other=0.0).to(tl.float32)"

    @staticmethod
    def _no_read(node):
        raise NotFusable(f"a tensor read inside an index ({ir.to_text(node)})")

    @staticmethod
    def reshape(name: str, own: tuple[str, ...], layout: tuple[str, ...]) -> str:
        if own == layout:
            return name
        return f"{name}[{', '.join(':' if d in own else 'None' for d in layout)}]"

    def mask(self, condition: Condition, layout: tuple[str, ...]) -> str:
        if condition.kind in ("filter", "range", "split"):
            text = TritonPrinter(self.names(layout), lambda r: self.read(r, layout),
                                 integer=condition.kind != "filter")(condition.expr)
            if not self.layout(condition.variables - set(self.batch) - {self.step}):
                text = scalar_condition(text)
            inner = [self.mask(c, layout) for part in condition.parts for c in part]
            return " & ".join([f"({text})"] + inner)
        if condition.kind == "absent":
            return self.read(condition.read, layout, ok=True)
        cond, if_true, if_false = (self.all(list(part), layout) for part in condition.parts)
        choice = self.value(condition.expr.args[0], layout)
        return f"({cond} & tl.where({choice}, {if_true}, {if_false}))"

    def all(self, conditions: list[Condition], layout: tuple[str, ...]) -> str:
        return " & ".join([self.live(layout)] + [self.mask(c, layout) for c in conditions])

    def conditions(self, einsum: Einsum) -> list[Condition]:
        return einsum_conditions(self.cascade, einsum, self.absent)


class _LoopEmitter:
    def __init__(self, fuser: _LoopFuser):
        self.f = fuser
        self.cascade = fuser.cascade
        self.lines: list[str] = []

    def line(self, text: str, depth: int = 1) -> None:
        self.lines.append("    " * depth + text)

    def emit(self) -> FusedKernel:
        f, cascade = self.f, self.cascade
        name = f"{cascade.name}_fused"
        self.lines += program_coordinates(cascade, f.batch, f.row,
                                          f"{f.row}_BLOCK")
        self.line(f"{f.row}_live = {f.row} < {cascade.var_rank(f.row)}")
        for var in f.held:
            self.line(f"{var} = tl.arange(0, {var}_BLOCK).to(tl.int64)")
            self.line(f"{var}_live = {var} < {cascade.var_rank(var)}")
        if f.step is not None:
            loop_text = self._steps()
        else:
            loop_text = self._tiles()
        for output in cascade.outputs:
            if f.kinds[output] in ("row", "reduce"):
                self._store(output, 1)
        tuning = {f"{f.row}_BLOCK": BLOCK_ROW}
        if f.loop and f.passes:
            tuning[f"{f.lanes}_BLOCK"] = BLOCK_LANES
        blocks = list(tuning) + [f"{v}_BLOCK" for v in f.held]
        args, host_args = kernel_arguments(cascade, "\n".join(self.lines),
                                           list(cascade.outputs))
        source = ["@triton.jit",
                  f"def {name}({', '.join(args)}, "
                  f"{', '.join(b + ': tl.constexpr' for b in blocks)}):",
                  *tile_asserts(tuning, 1)] + self.lines
        host = []
        for output in cascade.outputs:
            ranks = cascade.tensors[output].ranks
            host.append(f"{output} = torch.empty(({', '.join(ranks)}"
                        f"{',' if len(ranks) == 1 else ''}), device=device, "
                        f"dtype=torch.float32)")
        host.append(f'tuning = dict(TUNING_FUSED["{name}"])')
        for var in f.held:
            host.append(f'tuning["{var}_BLOCK"] = max(16, '
                        f"triton.next_power_of_2({cascade.var_rank(var)}))")
        batch = " * ".join(cascade.var_rank(v) for v in f.batch) or "1"
        host.append(f"{name}[(triton.cdiv({cascade.var_rank(f.row)}, "
                    f'tuning["{f.row}_BLOCK"]), {batch})](')
        host.append(f"    {', '.join(host_args)},")
        host.append("    **tuning)")
        grid = ", ".join(f.batch + [f"{f.row} tiles"])
        held = f"; {', '.join(f.held)} held whole in a tile" if f.held else ""
        facts = {"form": "steps" if f.step else "tiles", "row": f.row, "batch": f.batch,
                 "loop": [f.step] if f.step else f.loop, "held": f.held,
                 "passes": 1 if f.step else f.passes,
                 "carried": [e for e, k in f.kinds.items() if k == "carried"],
                 "accumulated": [e for e, k in f.kinds.items() if k == "reduce"]}
        return FusedKernel(name, source, host, tuning,
                           f"one fused kernel {name}: grid over {grid}{held}; {loop_text}", {},
                           facts)

    # ---------------------------------------------------------------- recurrences
    def _steps(self) -> str:
        f, cascade = self.f, self.cascade
        before = [e for e in cascade.einsums if f.kinds[e.tensor] == "row"
                  and e.tensor not in f.after_loop]
        after = [e for e in cascade.einsums if e.tensor in f.after_loop]
        carried = [e for e in cascade.einsums if f.kinds[e.tensor] == "carried"]
        for einsum in before:
            self._compute(einsum, 1)
        steps = cascade.var_rank(f.step)
        self.line(f"# {f.step} steps over {steps} in order; "
                  f"{', '.join(e.tensor for e in carried) or 'nothing'} carried in registers")
        for einsum in carried:
            layout = f.layouts[einsum.tensor]
            init = f.value(einsum.init, layout)
            self.line(f"{einsum.tensor} = {init} + {self._zeros(layout)}")
        self.line(f"for {f.step} in range(0, {steps}):")
        for einsum in carried:
            self.line(f"{einsum.tensor}_at = {einsum.tensor}  # at step {f.step}", 2)
        for einsum in cascade.einsums:
            if f.kinds[einsum.tensor] in ("carried", "step"):
                self._compute(einsum, 2)
                if einsum.tensor in cascade.outputs:
                    self._store(einsum.tensor, 2)
        for einsum in after:
            self._compute(einsum, 1)
        return (f"one loop over the {steps} steps of {f.step} with "
                f"{', '.join(e.tensor for e in carried)} carried in registers")

    # ---------------------------------------------------------------- tiles
    def _tiles(self) -> str:
        f, cascade = self.f, self.cascade
        rows = [e for e in cascade.einsums if f.kinds[e.tensor] == "row"]
        for einsum in rows:
            if f.ready[einsum.tensor] == 0:
                self._compute(einsum, 1)
        described = []
        size = " * ".join(cascade.var_rank(v) for v in f.loop)
        block = f"{f.lanes}_BLOCK"
        for number in range(1, f.passes + 1):
            accumulators = [e for e in cascade.einsums if f.kinds[e.tensor] == "reduce"
                            and f.ready[e.tensor] == number]
            stored = [o for o in cascade.outputs if f.first.get(o) == number]
            needed = self._stream_closure(accumulators, stored)
            described.append(f"pass {number} over {size} in tiles: "
                             f"{', '.join([e.tensor for e in accumulators] + stored)}")
            self.line(f"# pass {number} over ({', '.join(f.loop)}) in tiles of {block}")
            for acc in accumulators:
                layout = f.layouts[acc.tensor]
                dims = ", ".join(f"{d}_BLOCK" for d in layout)
                self.line(f"{acc.tensor} = tl.full([{dims}], {_IDENTITY[acc.reduce_op]}, "
                          f"tl.float32)")
            self.line(f"for start in range(0, {size}, {block}):")
            # int64: a flattened index times a stride may pass 2**31.
            self.line(f"{f.lanes} = start + tl.arange(0, {block}).to(tl.int64)", 2)
            self.line(f"{f.lanes}_live = {f.lanes} < {size}", 2)
            rest = f.lanes
            for position, var in enumerate(reversed(f.loop)):
                extent = cascade.var_rank(var)
                if position == len(f.loop) - 1:
                    self.line(f"{var} = {rest}", 2)
                else:
                    self.line(f"{var} = {rest} % {extent}", 2)
                    self.line(f"{f.lanes}_rest = {rest} // {extent}", 2)
                    rest = f"{f.lanes}_rest"
            for einsum in needed:
                self._compute(einsum, 2)
            for acc in accumulators:
                self._compute(acc, 2, accumulate=True)
            for output in stored:
                self._store(output, 2)
            for acc in accumulators:
                self._presence(acc, 1)
            for einsum in rows:
                if f.ready[einsum.tensor] == number:
                    self._compute(einsum, 1)
        return "; ".join(described) or "no loop"

    def _stream_closure(self, accumulators, stored) -> list[Einsum]:
        f = self.f
        needed: set[str] = set()
        stack = [r for acc in accumulators for r in acc.reads] + list(stored)
        while stack:
            name = stack.pop()
            if name in needed or f.kinds.get(name) != "stream":
                continue
            needed.add(name)
            stack.extend(self.cascade.einsum(name).reads)
        return [e for e in self.cascade.einsums if e.tensor in needed]

    # ---------------------------------------------------------------- pieces
    def _zeros(self, layout: tuple[str, ...]) -> str:
        return f"tl.zeros([{', '.join(f'{d}_BLOCK' for d in layout)}], tl.float32)"

    def _compute(self, einsum: Einsum, depth: int, accumulate: bool = False) -> None:
        """The statements for one tensor in registers (and its `_ok` mask when it may be
        absent). A reduction masks absent terms and reduces the tile's reduced axes; with
        `accumulate`, it combines into the value from earlier tiles."""
        f, name = self.f, einsum.tensor
        layout = f.layouts[name]
        self.line(f"# {lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}", depth)
        conditions = f.conditions(einsum)
        if einsum.reduce_op is None:
            value = f"{f.value(einsum.body, layout)} + {self._zeros(layout)}"
        else:
            space = f.layout(set(einsum.variables) - {f.step} - set(f.batch))
            term = f.value(einsum.body, space)
            value = f"tl.where({f.all(conditions, space)}, {term}, {_IDENTITY[einsum.reduce_op]})"
            for axis in sorted((space.index(d) for d in space if d not in layout),
                               reverse=True):
                value = f"{_REDUCER[einsum.reduce_op]}({value}, axis={axis})"
            if accumulate:
                value = {"sum": f"{name} + {value}", "max": f"tl.maximum({name}, {value})",
                         "min": f"tl.minimum({name}, {value})"}[einsum.reduce_op]
        self.line(f"{name} = {value}", depth)
        if not accumulate:
            self._presence(einsum, depth)

    def _presence(self, einsum: Einsum, depth: int) -> None:
        """`T_ok` for a tensor that may be absent: its point conditions."""
        f, name = self.f, einsum.tensor
        if name in f.absent:
            points = point_conditions(einsum, f.conditions(einsum))
            self.line(f"{name}_ok = {f.all(points, f.layouts[name])}", depth)

    def _store(self, name: str, depth: int) -> None:
        f = self.f
        einsum = self.cascade.einsum(name)
        layout = f.layouts[name]
        names = f.names(layout)
        terms = [f"{names[var]} * {name}_s{position}"
                 for position, var in enumerate(einsum.indices)]
        value = f"tl.where({name}_ok, {name}, 0.0)" if name in f.absent else name
        self.line(f"tl.store({name}_ptr + {' + '.join(terms)}, {value}, "
                  f"mask={f.live(layout)})", depth)


def fuse_loops(cascade: Cascade) -> FusedKernel:
    """The fused loop kernel for a cascade, or NotFusable (Crossing where a value would
    cross program tiles)."""
    return _LoopEmitter(_LoopFuser(cascade)).emit()
