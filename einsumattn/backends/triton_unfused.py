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

from ..analysis.presence import absent_tensors
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from ..schedule.lowering import lower_unfused
from ..schedule.model import KernelSchedule
from ..schedule.unfused import einsum_schedule
from .triton_kernel import kernel_lines
from .triton_printer import Unsupported


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

    # ---------------------------------------------------------------- kernels
    def kernels(self) -> list[Kernel]:
        return [self._kernel(e) for e in self.cascade.einsums]

    def _kernel(self, einsum: Einsum) -> Kernel:
        cascade = self.cascade
        schedule = einsum_schedule(cascade, einsum, self.absent)
        kept = schedule.tensors[0].layout
        name = schedule.name
        reads = schedule.inputs
        if einsum.iterative is not None:
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
        for tensor in [out, *reads]:
            rank_count = len(cascade.tensors[tensor].ranks)
            args += [f"{tensor}_s{i}" for i in range(rank_count)]
            host += [f"{tensor}.stride({i})" for i in range(rank_count)]
        args += schedule.scalars
        host += schedule.scalars
        lowered = lower_unfused(cascade, einsum, schedule, self.absent, tuple(args))
        lines = kernel_lines(lowered)
        points = " * ".join(cascade.var_rank(v) for v in kept) or "1"
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
