"""The unfused schedule's decisions (docs/codegen.md, the first schedule): one kernel per
Einsum, whose programs take BLOCK points of its left side, flattened, loop over the
reduced space in tiles of RBLOCK, and (a recurrence) over its steps in order; every
intermediate lives in global memory, with an `_ok` mask where it may be absent.
backends/triton_unfused.py prints kernels from them.
"""

from __future__ import annotations

from ..analysis.presence import einsum_conditions, point_conditions
from ..ir import Cascade, Einsum
from .kernel import scalars
from .model import Form, KernelSchedule, Knob, Loop, LoopKind, Pass, Role, Store, TensorPlan

BLOCK = 128   # left-side points per program
RBLOCK = 32   # reduced points per loop step
FLAT = "flat"  # the program's points: the left variables but the step, flattened


def einsum_schedule(cascade: Cascade, einsum: Einsum, absent: set[str]) -> KernelSchedule:
    """The kernel of one Einsum: its grid (BLOCK points of its left variables but the
    step, flattened), its loops (the steps of a recurrence, then the reduced points in
    tiles of RBLOCK), the tensors it reads from global memory and the store (with its
    point conditions where the tensor may be absent: an `_ok` mask is stored beside it)."""
    name = einsum.tensor
    recurrence = einsum.iterative is not None
    kept = tuple(v for v in einsum.indices if v != einsum.iter_var)
    loops = []
    if recurrence:
        loops.append(Loop(einsum.iter_var, cascade.var_rank(einsum.iter_var),
                          LoopKind.RECURRENCE_STEPS, over=(einsum.iter_var,)))
    if einsum.reduced:
        loops.append(Loop(f"r{FLAT}", " * ".join(cascade.var_rank(v) for v in einsum.reduced),
                          LoopKind.FLAT_TILES, "RBLOCK", tuple(einsum.reduced)))
    role = Role.STEP if recurrence else Role.REDUCE if einsum.reduce_op else Role.POINTS
    # A recurrence reads its own earlier steps from global memory.
    reads = tuple(sorted(set(einsum.reads) - {name}))
    store = Store(name)
    if name in absent:
        space = kept + einsum.reduced + ((einsum.iter_var,) if recurrence else ())
        store = Store(name, frozenset(point_conditions(
            einsum, einsum_conditions(cascade, einsum, absent, space))))
    return KernelSchedule(
        name=f"{name}_kernel", form=Form.EINSUM, batch=(), row=FLAT, loops=tuple(loops),
        held=(), tensors=(TensorPlan(name, role, kept),),
        passes=(Pass(1, (name,) if einsum.reduce_op else (), ()),),
        inputs=reads, outputs=(name,), scalars=scalars(cascade, [einsum]),
        stores=(store,),
        knobs=(Knob("BLOCK", BLOCK, "a power of two"), Knob("RBLOCK", RBLOCK, "a power of two")),
        uses_dot=False,
        description=_describe(einsum, kept))


def _describe(einsum: Einsum, kept: tuple[str, ...]) -> str:
    parts = [f"one kernel for {einsum.tensor}: grid over BLOCK points of ({', '.join(kept)})"]
    if einsum.iterative is not None:
        parts.append(f"the steps of {einsum.iter_var} in order")
    if einsum.reduced:
        parts.append(f"tiles of RBLOCK points of ({', '.join(einsum.reduced)})")
    return "; ".join(parts)
