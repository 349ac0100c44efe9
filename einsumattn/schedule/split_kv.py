"""Split-KV (FlashDecoding): the key range of a row tile split over several programs,
their partial states merged by a second kernel.

A decoding call has a handful of query rows per (batch, head), so the split kernel's
grid of row tiles is a few dozen programs on a GPU of 132 multiprocessors, each
streaming the whole KV cache. The 1-pass cascade's state over the keys merges
(transform/merge.py derives the combine from the cascade and proves it associative and
equal to the sequential pass), so the keys can be split:

    partial kernel   the split kernel (lower_attention.py) with a third grid axis: program
                     s runs the steps [s * chunk, (s + 1) * chunk) of its row tile
                     (chunk = ceil(steps / splits)) within the proved bounds (a causal tile
                     stops at the diagonal: a split past it runs no step), and stores the
                     carried state (the running max, the rescaled sums) in float32
                     buffers indexed by s instead of finishing
    merge kernel     per row tile: folds the splits' states in order with the derived
                     combine (each Einsum of `combine`, lowered as it is written), then the
                     Einsums after the loop (the finish) and the outputs' stores, as the
                     split kernel ends

A split with no key (past the diagonal, past a KV cache's valid length) stores the empty
state (the recurrences' inits), which the combine's identity law proves harmless. The
host chooses the number of splits per call (the module's `_kv_splits`); with one, the
split kernel runs as before. The merge adds in a fixed order: results do not vary from
run to run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import Cascade, Einsum, Tensor
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..transform.algebra import replace_reads
from . import kernel_ir as k
from .lower_attention import _ZERO, _SplitLowering, _Tiles
from .lowering import LoweredKernel
from .model import Role
from .stages import NotFusable

# The merge kernel's loop variable (the spec's variables are spelled with a trailing _).
SPLIT = "split"


@dataclass(frozen=True)
class StateBuffer:
    """One part of the state as the kernels hold it: the carried register, its index
    variables (the step dropped), and the float32 buffer the partial kernel stores it in
    (one more leading dimension: the split)."""

    register: str
    indices: tuple[str, ...]
    empty: float
    before: str             # the combine's input for the state so far (A_x)
    split: str              # ... and for the split's state (B_x)

    @property
    def buffer(self) -> str:
        return f"{self.register}_state"


@dataclass(frozen=True)
class SplitKV:
    """A split kernel's split-KV plan: the knob holding the number of splits per call,
    the state's parts, and the combine (transform/merge.py's, in the kernel's names)."""

    knob: str
    parts: tuple[StateBuffer, ...]
    combine: Cascade

    @property
    def buffers(self) -> tuple[str, ...]:
        return tuple(p.buffer for p in self.parts)


def split_kv(lowered: LoweredKernel, cascade: Cascade,
             parts: tuple[tuple[str, float, str, str], ...],
             combine: Cascade) -> tuple[SplitKV, LoweredKernel, LoweredKernel]:
    """The split-KV form of the split kernel `lowered` of `cascade`: its plan, read off
    the derived merge's parts ((register, empty, A_x, B_x) in the kernel's names:
    the combine's inputs for the state so far and the split's) and its combine cascade,
    and the partial and merge kernels lowered. NotFusable with the reason where the
    kernel's carried state is not exactly the merged one."""
    f = _Tiles(cascade)
    schedule = lowered.schedule
    if f.loop is None:
        raise NotFusable("the kernel streams its keys in passes, not one split loop")
    carried = {e.tensor: e for e in cascade.einsums if f.kinds[e.tensor] == Role.CARRIED}
    if set(carried) != {part[0] for part in parts}:
        raise NotFusable(f"the kernel carries {', '.join(sorted(carried))}, the merge "
                         f"combines {', '.join(part[0] for part in parts)}")
    buffers = []
    for name, empty, before, split in parts:
        einsum = carried[name]
        buffers.append(StateBuffer(name, tuple(v for v in einsum.indices
                                                     if v != einsum.iter_var), empty,
                                   before, split))
    plan = SplitKV(f"{f.loop}_SPLITS", tuple(buffers), combine)
    # One fuser and the kernel's own schedule for both: nothing is decided again.
    return (plan, _PartialLowering(f, plan, schedule).lower(),
            _MergeLowering(f, plan, schedule).lower())


def state_cascade(cascade: Cascade, plan: SplitKV) -> Cascade:
    """`cascade` with the state buffers as tensors (their leading rank the split), so
    that the kernels' arguments (pointers, strides) are read off like any tensor's."""
    tensors = dict(cascade.tensors)
    for part in plan.parts:
        ranks = tuple(cascade.var_rank(v) for v in part.indices)
        tensors[part.buffer] = Tensor(part.buffer, (plan.knob, *ranks), False)
    return replace(cascade, tensors=tensors)


class _PartialLowering(_SplitLowering):
    """The split kernel, its steps split over the programs of grid axis 2, each storing
    the state at the end of its steps."""

    def __init__(self, fuser: _Tiles, plan: SplitKV, schedule):
        super().__init__(fuser, schedule)
        self.plan = plan
        self.schedule = self.schedule.with_(
            name=f"{self.cascade.name}_partial", outputs=plan.buffers,
            scalars=(*self.schedule.scalars, plan.knob), stores=())

    def _program_steps(self, outer: str):
        knob = ir.Dim(self.plan.knob)      # a size the host passes, as M1 is
        steps = ir.Dim(outer)
        chunk = k.Quotient(ir.total([steps, knob, ir.Const(-1)]), knob)
        self.body += [
            k.Comment(f"the steps of this program: {self.plan.knob} programs split "
                      f"{outer} (split-KV)"),
            k.Let("steps_first", k.Integer(ir.Op("*", (k.ProgramId(2), chunk)))),
            k.Let("steps_last", k.Integer(k.Extremum("min", steps, ir.total(
                [k.Var("steps_first"), chunk]))))]
        # every range of steps the kernel loops over (the sinks', the window's) within
        # this program's
        return lambda start, stop: (
            k.Integer(k.Extremum("max", start, k.Var("steps_first"))),
            k.Integer(k.Extremum("min", stop, k.Var("steps_last"))))

    def _described_split(self) -> str:
        return (f"; the steps split over {self.plan.knob} programs per row tile, each "
                f"storing its state ({', '.join(self.plan.buffers)}) for the merge kernel")

    def _after_loop(self, available: set[str]) -> list:
        body = self._rows_after_loops()
        self.body += body
        self._hoist()
        stores = [k.Comment(""), k.Comment(
            "the state at the end of this program's steps (float32), for the merge kernel")]
        for part in self.plan.parts:
            layout = self.f.layouts[part.register]
            point = (k.Coordinate(k.ProgramId(2)),) + self.point(part.indices, layout)
            offset = ir.total([ir.Op("*", (c.index, k.Var(f"{part.buffer}_s{position}")))
                               for position, c in enumerate(point)])
            stores.append(k.Store(part.buffer, k.Integer(offset), k.Var(part.register),
                                  self._row_lanes(layout)))
        return stores


class _MergeLowering(_SplitLowering):
    """The merge kernel: per row tile, the splits' states folded in order with the
    derived combine, then what follows the split kernel's loop."""

    def __init__(self, fuser: _Tiles, plan: SplitKV, schedule):
        super().__init__(fuser, schedule)
        self.plan = plan
        self.schedule = self.schedule.with_(
            name=f"{self.cascade.name}_merge", loops=(), uses_dot=False, dots=(),
            inputs=(*plan.buffers, *self.schedule.inputs),
            scalars=(*self.schedule.scalars, plan.knob), knobs=self.schedule.knobs[:1],
            skipping=None)

    def lower(self) -> LoweredKernel:
        f, cascade, plan = self.f, self.cascade, self.plan
        self.body.append(k.Comment(
            f"the merge of the {plan.knob} partial states of a row tile (split-KV)"))
        start = len(self.body)
        self._prologue(1)
        # (its first line counts passes over the keys: this kernel reads none)
        self.body[start] = k.Comment(f"program: one point of "
                                     f"{', '.join(f.batch) or 'nothing'}, {f.row}_BLOCK "
                                     f"points of {f.row}")
        available = {t.name for t in cascade.inputs}
        self.body += self._rows(available)
        self._begin_loops()
        self.body.append(k.Comment(f"the empty state, then each split's merged in: "
                                   f"merge(state, split's)"))
        for part in plan.parts:
            layout = f.layouts[part.register]
            self.body.append(k.Let(part.register, ir.Op("+", (ir.Const(part.empty),
                                                               self._zeros(layout)))))
        step = []
        for part in plan.parts:
            layout = f.layouts[part.register]
            point = (k.Coordinate(k.Var(SPLIT)),) + self.point(part.indices, layout)
            step += [k.Let(part.before, k.Var(part.register)),
                     k.Let(part.split, k.Load(part.buffer, point,
                                                        self._row_lanes(layout)))]
        for einsum in plan.combine.einsums:
            step += [self._comment_combine(einsum),
                     k.Let(einsum.tensor, self._combined(einsum))]
        self.body.append(k.Loop(SPLIT, _ZERO, k.Integer(ir.Dim(plan.knob)), None,
                                tuple(step)))
        self.body += self._after_loop(available)
        return self._lowered(f"the merge kernel {self.schedule.name}: grid over "
                             f"{self._grid_text()}; the {plan.knob} states of a row "
                             f"tile merged in order, then finished")

    def _comment_combine(self, einsum: Einsum) -> k.Comment:
        return k.Comment(f"{lhs_text(self.plan.combine, einsum)} = {rhs_text(einsum)}")

    def _combined(self, einsum: Einsum):
        """A combine Einsum's body (elementwise: transform/states.py's combine_cascade)
        over the registers: A_x the state so far, B_x the split's, the others the values
        just computed, broadcast into its layout."""
        combine = self.plan.combine
        layout = self._layout([combine.var_rank(v) for v in einsum.indices])

        def register(read: ir.Read):
            mine = self._layout(combine.tensors[read.tensor].ranks)
            value = k.Var(read.tensor)
            if mine == layout:
                return value
            return k.Expand(value, tuple(v in mine for v in layout))
        return replace_reads(einsum.body, register)

    def _layout(self, ranks) -> tuple[str, ...]:
        """The kernel's tile layout (its row and held feature variables) of a value over
        `ranks`: the combine names its variables after its ranks, the spec as it likes."""
        f = self.f
        var = {self.cascade.var_rank(v): v for v in (f.row, *f.features)}
        return tuple(var[r] for r in ranks if r in var)

