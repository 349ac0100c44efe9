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

from ..ir import Cascade
from ..schedule.kernel_ir import Unsupported
from ..schedule.loops import LoopRoles
from ..schedule.lowering import lower_loops
from ..schedule.model import Role
from ..schedule.stages import NotFusable
from .triton_ir import KernelPrinter
from .triton_kernel import FusedKernel, kernel_arguments, kernel_source, launch_lines


def _described(roles: LoopRoles) -> str:
    """What the kernel's loop does, in words (the module's docstring)."""
    cascade = roles.cascade
    if roles.step is not None:
        carried = [e.tensor for e in cascade.einsums if roles.kinds[e.tensor] == Role.CARRIED]
        return (f"one loop over the {cascade.var_rank(roles.step)} steps of {roles.step} with "
                f"{', '.join(carried)} carried in registers")
    size = " * ".join(cascade.var_rank(v) for v in roles.loop)
    return "; ".join(f"pass {number} over {size} in tiles: "
                     f"{', '.join([e.tensor for e in accumulators] + stored)}"
                     for number, accumulators, stored, _ in roles.pass_plan()) or "no loop"


def _emit(roles: LoopRoles) -> FusedKernel:
    """The loop schedule's kernel: its schedule lowered to the kernel IR and printed."""
    cascade = roles.cascade
    schedule = roles.kernel_schedule(f"{cascade.name}_fused")
    name = schedule.name
    tuning = {knob.name: knob.default for knob in schedule.knobs}
    blocks = list(tuning) + [f"{v}_BLOCK" for v in roles.held]
    args, host_args = kernel_arguments(cascade, schedule)
    kernel = lower_loops(roles, schedule, tuple(args), tuple(blocks))
    try:
        body = KernelPrinter().statements(kernel.body)
    except Unsupported as reason:
        raise NotFusable(str(reason)) from None
    source = kernel_source(name, args, blocks, list(tuning), 1, body)
    host = launch_lines(cascade, schedule, host_args)
    grid = ", ".join(roles.batch + [f"{roles.row} tiles"])
    held = f"; {', '.join(roles.held)} held whole in a tile" if roles.held else ""
    return FusedKernel(name, source, host, tuning, schedule.with_(
        description=f"one fused kernel {name}: grid over {grid}{held}; {_described(roles)}"))


def fuse_loops(cascade: Cascade) -> FusedKernel:
    """The fused loop kernel for a cascade, or NotFusable (Crossing where a value would
    cross program tiles)."""
    return _emit(LoopRoles(cascade))
