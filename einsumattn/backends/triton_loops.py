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

from ..analysis.presence import Condition, point_conditions
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..schedule.loops import LoopRoles
from ..schedule.model import Role
from ..schedule.stages import NotFusable
from .triton_kernel import (FusedKernel, kernel_arguments, kernel_source, launch_lines,
                            program_coordinates)
from .triton_printer import TritonPrinter, Unsupported, element_offset, load, scalar_condition



_IDENTITY = {"sum": "0.0", "max": "float('-inf')", "min": "float('inf')"}
_REDUCER = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}


def _expand(text: str, dim: str, layout: tuple[str, ...]) -> str:
    """A 1-D block along `dim`, broadcast into `layout`."""
    if len(layout) == 1:
        return text
    return f"{text}[{', '.join(':' if d == dim else 'None' for d in layout)}]"


class _LoopTiles(LoopRoles):
    """The loop schedule's decisions, with the printing of tiles in them."""

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
        address = f"{node.tensor}_ptr + " + \
            element_offset(self.cascade, node.tensor, node.indices, printer)
        dims = self.layout(set(ir.index_vars(node)) - set(self.batch) - {self.step})
        if not dims:
            return load(address)    # one address per program (batch coordinates, the step)
        # Masked on the tile dimensions the address has (a K[d] tile is loaded once, not
        # once per row), and broadcast where it is used.
        return load(address, " & ".join(_expand(f"{d}_live", d, layout) for d in dims))

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
        # A mask is a set: a condition two reads share is tested once.
        return " & ".join(dict.fromkeys([self.live(layout)] +
                                        [self.mask(c, layout) for c in conditions]))


class _LoopEmitter:
    def __init__(self, fuser: _LoopTiles):
        self.f = fuser
        self.cascade = fuser.cascade
        self.lines: list[str] = []

    def line(self, text: str, depth: int = 1) -> None:
        self.lines.append("    " * depth + text)

    def emit(self) -> FusedKernel:
        f, cascade = self.f, self.cascade
        schedule = f.kernel_schedule(f"{cascade.name}_fused")
        name = schedule.name
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
            if f.kinds[output] in (Role.ROW, Role.REDUCE):
                self._store(output, 1)
        tuning = {knob.name: knob.default for knob in schedule.knobs}
        blocks = list(tuning) + [f"{v}_BLOCK" for v in f.held]
        args, host_args = kernel_arguments(cascade, schedule)
        source = kernel_source(name, args, blocks, list(tuning), 1, self.lines)
        host = launch_lines(cascade, schedule, host_args)
        grid = ", ".join(f.batch + [f"{f.row} tiles"])
        held = f"; {', '.join(f.held)} held whole in a tile" if f.held else ""
        return FusedKernel(name, source, host, tuning, schedule.with_(
            description=f"one fused kernel {name}: grid over {grid}{held}; {loop_text}"))

    # ---------------------------------------------------------------- recurrences
    def _steps(self) -> str:
        f, cascade = self.f, self.cascade
        before = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.ROW
                  and e.tensor not in f.after_loop]
        after = [e for e in cascade.einsums if e.tensor in f.after_loop]
        carried = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.CARRIED]
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
            if f.kinds[einsum.tensor] in (Role.CARRIED, Role.STEP):
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
        rows = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.ROW]
        for einsum in rows:
            if f.ready[einsum.tensor] == 0:
                self._compute(einsum, 1)
        described = []
        size = " * ".join(cascade.var_rank(v) for v in f.loop)
        block = f"{f.lanes}_BLOCK"
        for number, accumulators, stored, needed in f.pass_plan():
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
    return _LoopEmitter(_LoopTiles(cascade)).emit()
