"""The Triton backend, first schedule: one kernel per Einsum.

Each Einsum is a kernel whose programs take BLOCK points of its left side (flattened,
in int64 so sizes past 2**31 elements index correctly), loop over the reduced space in
tiles of RBLOCK, and reduce with `tl.sum` / `tl.max` / `tl.min`. Values are float32;
intermediates live in global memory (contiguous float32, with an int8 `_ok` mask for
tensors that may be absent). A recurrence is a kernel over the other left variables
with a loop over its iterative rank inside, and a barrier between steps.

This schedule runs every construct of the language and is the baseline the fused
streaming schedule (one kernel per cascade, loops over key tiles per pass) is measured
against; docs/codegen.md says which schedule each spec gets.

Loads use clamped coordinates, so every address a live lane touches is inside its
tensor; whether the value is *present* is a separate mask, from the conditions of
`analysis/presence.py`, exactly as in the torch backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis.presence import Condition, absent_tensors, einsum_conditions, point_conditions
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..schedule.model import KernelSchedule
from ..schedule.unfused import einsum_schedule
from .triton_printer import (TritonPrinter, Unsupported, element_offset, load, scalar_condition,
                             tile_asserts)


@dataclass
class Kernel:
    """A generated kernel and how the host launches it."""

    name: str
    einsum: Einsum
    source: list[str]
    args: list[str]                      # host expressions, in the kernel's order
    grid: str                            # host expression: number of programs
    schedule: KernelSchedule             # what it computes and how, as data
    tuning: dict = field(default_factory=dict)


class TritonEmitter:
    """Kernels for a cascade, and the host code that allocates and launches them."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.absent = absent_tensors(cascade)

    # ---------------------------------------------------------------- names
    def _size(self, var: str) -> str:
        return self.cascade.var_rank(var)

    def _extent(self, tensor: str, position: int) -> str:
        t = self.cascade.tensors[tensor]
        rank = t.ranks[position]
        return f"({rank} + 1)" if t.iterative == position else rank

    # ---------------------------------------------------------------- kernels
    def kernels(self) -> list[Kernel]:
        return [self._kernel(e) for e in self.cascade.einsums]

    def _kernel(self, einsum: Einsum) -> Kernel:
        cascade = self.cascade
        schedule = einsum_schedule(cascade, einsum, self.absent)
        recurrence = einsum.iterative is not None
        x = einsum.iter_var
        kept = schedule.tensors[0].layout
        reduced = einsum.reduced
        name = schedule.name
        reads = schedule.inputs
        if recurrence:
            self._check_recurrence(einsum)
        args, host = [], []
        out = einsum.tensor
        args += [f"{out}_ptr"]
        host += [out]
        if out in self.absent:
            args.append(f"{out}_ok_ptr")
            host.append(f"{out}_ok")
        for tensor in reads:
            args.append(f"{tensor}_ptr")
            host.append(tensor)
            if tensor in self.absent:
                args.append(f"{tensor}_ok_ptr")
                host.append(f"{tensor}_ok")
        strides: dict[str, list[str]] = {}
        for tensor in [out, *reads]:
            rank_count = len(cascade.tensors[tensor].ranks)
            strides[tensor] = [f"{tensor}_s{i}" for i in range(rank_count)]
            args += strides[tensor]
            host += [f"{tensor}.stride({i})" for i in range(rank_count)]
        body = _KernelBody(self, einsum, kept, reduced, strides).emit(recurrence)
        args += schedule.scalars
        host += schedule.scalars
        knobs = [knob.name for knob in schedule.knobs]
        lines = ["@triton.jit",
                 f"def {name}({', '.join(args)}, "
                 f"{', '.join(k + ': tl.constexpr' for k in knobs)}):",
                 f"    # {lhs_text(cascade, einsum)} = {rhs_text(einsum)}",
                 *tile_asserts(knobs, 1)]
        if recurrence:
            lines.append(f"    # a recurrence over {self._size(x)}: the steps run in order "
                         f"inside each program")
        lines += body
        points = " * ".join(self._size(v) for v in kept) or "1"
        grid = f'triton.cdiv({points}, tuning["BLOCK"])'
        return Kernel(name, einsum, lines, host, grid, schedule,
                      {knob.name: knob.default for knob in schedule.knobs})

    def host_lines(self, kernels: list[Kernel]) -> list[str]:
        """The body of the host function after binding: allocate, launch, return."""
        cascade = self.cascade
        lines = []
        for kernel in kernels:
            einsum = kernel.einsum
            tensor = cascade.tensors[einsum.tensor]
            shape = [cascade.ranks[r].name for r in tensor.ranks]
            if tensor.iterative is not None:
                shape[tensor.iterative] += " + 1"
            shape_text = f"({', '.join(shape)}{',' if len(shape) == 1 else ''})"
            lines.append("")
            lines.append(f"# {lhs_text(cascade, einsum)} = {rhs_text(einsum)}")
            lines.append(f"{einsum.tensor} = torch.empty({shape_text}, device=device, "
                         f"dtype=torch.float32)")
            if einsum.tensor in self.absent:
                lines.append(f"{einsum.tensor}_ok = torch.empty({shape_text}, device=device, "
                             f"dtype=torch.int8)")
            lines.append(f'tuning = TUNING["{kernel.name}"]')
            lines.append(f"{kernel.name}[({kernel.grid},)](")
            lines.append(f"    {', '.join(kernel.args)},")
            lines.append("    **tuning)")
        lines += self._absent_outputs_as_zero()
        return lines

    def _absent_outputs_as_zero(self) -> list[str]:
        """Outputs hold their final values: 0 where absent. Which outputs may be absent is
        a fact of the cascade the kernels compute, which is not always the spec's (the
        derived `AV = where(SNV == 0, 0, SNV / SD[b, h, b])` is absent for b >= P, where
        the spec's sum over absent terms is a present 0)."""
        return [f"{output} = torch.where({output}_ok != 0, {output}, 0.0)"
                for output in self.cascade.outputs if output in self.absent]

    def _check_recurrence(self, einsum: Einsum) -> None:
        """Steps read the recurrence from global memory; other programs' points would
        race, so a step may read only its own point's earlier positions."""
        for expr in (einsum.body, einsum.filter):
            for read in ir.reads(expr) if expr is not None else ():
                if read.tensor != einsum.tensor:
                    continue
                for position, (index, var) in enumerate(zip(read.indices, einsum.indices)):
                    if position != einsum.iterative and index != ir.Index(var):
                        raise Unsupported(f"the recurrence {einsum.tensor} reads other "
                                          f"points of itself ({ir.to_text(read)})")


class _KernelBody:
    """The statements of one kernel."""

    def __init__(self, emitter: TritonEmitter, einsum: Einsum, kept: tuple[str, ...],
                 reduced: tuple[str, ...], strides: dict[str, list[str]]):
        self.emitter = emitter
        self.cascade = emitter.cascade
        self.einsum = einsum
        self.kept = kept
        self.reduced = reduced
        self.strides = strides
        self.lines: list[str] = []

    def _decompose(self, flat: str, variables: tuple[str, ...], suffix: str) -> None:
        """Row-major unflattening of `flat` into one block per variable."""
        rest = flat
        for position, var in enumerate(reversed(variables)):
            size = self.emitter._size(var)
            if position == len(variables) - 1:
                self.lines.append(f"    {var}{suffix} = {rest}")
            else:
                self.lines.append(f"    {var}{suffix} = {rest} % {size}")
                self.lines.append(f"    rest{suffix} = {rest} // {size}")
                rest = f"rest{suffix}"

    def _names(self, two_d: bool) -> dict[str, str]:
        names = {v: (f"{v}_2" if two_d else v) for v in self.kept}
        names.update({v: f"{v}_r" for v in self.reduced})
        if self.einsum.iter_var is not None:
            names[self.einsum.iter_var] = "step"
        return names

    def _offset(self, tensor: str, indices, names: dict[str, str]) -> str:
        printer = TritonPrinter(names, self._no_read, integer=True)
        return element_offset(self.cascade, tensor, indices, printer,
                              lambda position: self.emitter._extent(tensor, position))

    @staticmethod
    def _no_read(node):
        raise Unsupported(f"a tensor read inside an index ({ir.to_text(node)})")

    def _load(self, node: ir.Read, names: dict[str, str], lanes: str, ok: bool = False) -> str:
        pointer = f"{node.tensor}_ok_ptr" if ok else f"{node.tensor}_ptr"
        block_vars = set(self.kept) | set(self.einsum.reduced)
        address = f"{pointer} + {self._offset(node.tensor, node.indices, names)}" \
            if node.indices else pointer
        if not node.indices or not set(ir.index_vars(node)) & block_vars:
            # One address (a scalar tensor, or a read at the recurrence's step only): it
            # is valid (coordinates are clamped), needs no mask, and broadcasts.
            return load(address, ok=ok)
        return load(address, lanes, ok=ok)

    def _value(self, expr: ir.Expr, names: dict[str, str], lanes: str) -> str:
        return TritonPrinter(names, lambda r: self._load(r, names, lanes))(expr)

    def _mask(self, condition: Condition, names: dict[str, str], lanes: str) -> str:
        if condition.kind in ("filter", "range", "split"):
            text = TritonPrinter(names, lambda r: self._load(r, names, lanes),
                                 integer=condition.kind != "filter")(condition.expr)
            if not condition.variables:
                text = scalar_condition(text)     # one value for every lane
            inner = [self._mask(c, names, lanes) for part in condition.parts for c in part]
            return " & ".join([f"({text})"] + inner)
        if condition.kind == "absent":
            return self._load(condition.read, names, lanes, ok=True)
        cond, if_true, if_false = (self._all(list(part), names, lanes)
                                   for part in condition.parts)
        choice = self._value(condition.expr.args[0], names, lanes)
        return f"({cond} & tl.where({choice}, {if_true}, {if_false}))"

    def _all(self, conditions: list[Condition], names: dict[str, str], lanes: str) -> str:
        # A mask is a set: a condition two reads share is tested once.
        return " & ".join(dict.fromkeys(self._mask(c, names, lanes) for c in conditions)) \
            or "(0 == 0)"

    def emit(self, recurrence: bool) -> list[str]:
        einsum = self.einsum
        points = " * ".join(self.emitter._size(v) for v in self.kept) or "1"
        self.lines += ["    pid = tl.program_id(0).to(tl.int64)",
                       "    flat = pid * BLOCK + tl.arange(0, BLOCK)",
                       f"    live = flat < {points}"]
        self._decompose("flat", self.kept, "")
        if recurrence:
            init = Einsum(einsum.tensor, self.kept, einsum.init)
            self._compute(init, "init", "0")
            self.lines.append(f"    for step in range(0, {self.emitter._size(einsum.iter_var)}):")
            self.lines.append("        tl.debug_barrier()  # the previous step's stores")
            saved, self.lines = self.lines, []
            self._compute(einsum, "value", "step + 1")
            self.lines = saved + ["    " + line for line in self.lines]
        else:
            self._compute(einsum, "value", None)
        return self.lines

    def _compute(self, einsum: Einsum, target: str, iterative_at: str | None) -> None:
        """Statements computing `einsum` at this program's points into `target`, stored
        at the iterative position `iterative_at` (for a recurrence's init and steps)."""
        cascade = self.cascade
        space = self.kept + einsum.reduced + ((einsum.iter_var,) if iterative_at and
                                              iterative_at != "0" else ())
        conditions = einsum_conditions(cascade, einsum, self.emitter.absent, space)
        points = point_conditions(einsum, conditions)
        names1 = self._names(False)
        out = self.einsum.tensor
        out_offset = self._store_offset(iterative_at, names1)
        if einsum.reduce_op is None:
            value = self._value(einsum.body, names1, "live")
            self.lines.append(f"    {target} = {value} + tl.zeros([BLOCK], tl.float32)")
        else:
            names2 = self._names(True)
            identity = {"sum": "0.0", "max": "float('-inf')", "min": "float('inf')"}[
                einsum.reduce_op]
            for var in self.kept:
                self.lines.append(f"    {var}_2 = {var}[:, None]")
            self.lines.append(f"    {target} = tl.full([BLOCK], {identity}, tl.float32)")
            r_points = " * ".join(self.emitter._size(v) for v in einsum.reduced)
            self.lines.append(f"    for r0 in range(0, {r_points}, RBLOCK):")
            self.lines.append("        rflat = (r0 + tl.arange(0, RBLOCK).to(tl.int64))[None, :]")
            self.lines.append(f"        lanes = live[:, None] & (rflat < {r_points})")
            saved, self.lines = self.lines, []
            self._decompose("rflat", einsum.reduced, "_r")
            term = self._all(conditions, names2, "lanes")
            value = self._value(einsum.body, names2, "lanes")
            self.lines.append(f"    ok = lanes & {term}")
            self.lines.append(f"    term = {value}")
            combine = {"sum": f"{target} + tl.sum(tl.where(ok, term, 0.0), axis=1)",
                       "max": f"tl.maximum({target}, tl.max(tl.where(ok, term, {identity}), "
                              f"axis=1))",
                       "min": f"tl.minimum({target}, tl.min(tl.where(ok, term, {identity}), "
                              f"axis=1))"}[einsum.reduce_op]
            self.lines.append(f"    {target} = {combine}")
            self.lines = saved + ["    " + line for line in self.lines]
        self.lines.append(f"    tl.store({out}_ptr + {out_offset}, {target}, mask=live)")
        if out in self.emitter.absent:
            point = self._all(points, names1, "live")
            self.lines.append(f"    tl.store({out}_ok_ptr + {out_offset}, ({point} & live)"
                              f".to(tl.int8), mask=live)")

    def _store_offset(self, iterative_at: str | None, names: dict[str, str]) -> str:
        terms = []
        for position, var in enumerate(self.einsum.indices):
            if position == self.einsum.iterative:
                terms.append(f"({iterative_at}) * {self.einsum.tensor}_s{position}")
            else:
                terms.append(f"{names[var]} * {self.einsum.tensor}_s{position}")
        # A scalar output (or a recurrence with no other variable): make the address a
        # block (every lane but the first is masked off) so it matches the stored block.
        if not self.kept:
            terms.append("0 * flat")
        return " + ".join(terms)
