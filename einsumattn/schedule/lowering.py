"""Schedules lowered to the kernel IR (schedule/kernel_ir.py), once, for every target's
printer: here the unfused schedule (schedule/unfused.py), one kernel per Einsum, and the
loop schedule (schedule/loops.py); the attention schedule's lowering is
schedule/lower_attention.py, which shares `Lowering` and `program_statements` with
these. A fused schedule lowered is a `LoweredKernel`.

An unfused kernel's programs take BLOCK points of the Einsum's left side (flattened,
int64); a reduction loops over the reduced points in tiles of RBLOCK (the block is then
BLOCK x RBLOCK: the left coordinates `v_2`, the reduced ones `v_r`); a recurrence
computes its init, then its steps in order with a barrier between them. Every read is a
`Load` whose coordinates are clamped into the tensor where they could leave it, and
whether the value is present is a separate `Mask`, from analysis/presence.py's
conditions: the same rules as the torch backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.presence import (Condition, einsum_conditions, in_range_by_construction,
                                 point_conditions)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from .kernel_ir import (Accumulate, Arange, Barrier, Cast, Choice, Comment, Coordinate,
                        Dot, Exp2, Expand, Full, IndexBlock, Integer, Kernel, Let, Load, Loop,
                        Mask, ProgramId, Reduce, Store, Test, Unflatten, Unsupported, Var,
                        Zeros)
from .loops import LoopRoles
from .model import KernelSchedule, Role
from .shifts import LOG2E, distributed
from .stages import NotFusable


@dataclass(frozen=True)
class Offset:
    """A kernel argument the host computes: a proved bound's offset from the row with
    params in it (a window W: `1 - W`), rounded outwards ('floor' for a lower bound,
    'ceil' for an upper one), so a fractional param visits more tiles, never fewer."""
    name: str
    rounding: str
    value: object       # sympy.Expr in the spec's sizes and params


@dataclass(frozen=True)
class LoweredKernel:
    """A fused schedule lowered to the kernel IR: its schedule (with the description of
    what the statements do), the statements, and the kernel arguments the host computes
    beyond the schedule's (its `Offset`s, in the order the statements first use them,
    and the compile-time flags of schedule/scales.py)."""
    schedule: KernelSchedule
    body: tuple
    offsets: tuple[Offset, ...] = ()
    flags: tuple = ()


def product(factors: list[ir.Expr]) -> ir.Expr:
    """a * b * c (1 for no factor)."""
    if not factors:
        return ir.Const(1)
    product = factors[0]
    for factor in factors[1:]:
        product = ir.Op("*", (product, factor))
    return product


class Lowering:
    """What the lowerings share (and schedule/lower_attention.py's tiles): expressions with
    the kernel's names for index variables and sizes and a Load (or a register value)
    for each read, and conditions as mask terms. `at` is where an expression stands (a
    schedule's names and lanes, or a tile layout)."""

    cascade: Cascade

    def index(self, var: str, at):
        raise NotImplementedError

    def dim(self, node: ir.Dim, at):
        """A size as the kernel knows it (by default, the argument of its name)."""
        return node

    def read(self, node: ir.Read, at, flag: bool = False):
        raise NotImplementedError

    def read_in_index(self, node: ir.Read):
        """A read inside a coordinate: what the schedule does not express."""
        raise NotImplementedError

    def scalar(self, condition: Condition, at) -> bool:
        """Whether a condition has one value per program."""
        raise NotImplementedError

    def branches(self, conditions: list[Condition], at) -> Mask:
        """The mask of a `where`'s condition or branch."""
        raise NotImplementedError

    def _size(self, var: str) -> ir.Dim:
        """The size of an index variable's rank."""
        return ir.Dim(self.cascade.var_rank(var))

    def expr(self, expr: ir.Expr, at, in_index: bool = False):
        if isinstance(expr, ir.Index):
            return self.index(expr.var, at)
        if isinstance(expr, ir.Dim):
            return self.dim(expr, at)
        if isinstance(expr, ir.Read):
            if in_index:
                self.read_in_index(expr)
            return self.read(expr, at)
        if isinstance(expr, ir.Op):
            return ir.Op(expr.op, tuple(self.expr(a, at, in_index) for a in expr.args))
        return expr

    def coordinates(self, node: ir.Read, at, extent) -> tuple[Coordinate, ...]:
        """A read's coordinates, each clamped into `extent(position)` where it could
        leave it."""
        return tuple(
            Coordinate(self.expr(index, at, in_index=True),
                       None if in_range_by_construction(self.cascade, node.tensor, position,
                                                        index)
                       else extent(position))
            for position, index in enumerate(node.indices))

    def condition(self, condition: Condition, at):
        if condition.kind in ("filter", "range", "split"):
            inner = [c for part in condition.parts for c in part]
            return Test(self.expr(condition.expr, at), integer=condition.kind != "filter",
                        scalar=self.scalar(condition, at),
                        inner=Mask(tuple(self.condition(c, at) for c in inner)))
        if condition.kind == "absent":
            return self.read(condition.read, at, flag=True)
        cond, if_true, if_false = (self.branches(list(part), at) for part in condition.parts)
        return Choice(cond, self.expr(condition.expr.args[0], at), if_true, if_false)


class _Unfused(Lowering):
    """The statements of one Einsum's kernel; an expression stands at (names, lanes)."""

    def __init__(self, cascade: Cascade, einsum: Einsum, schedule: KernelSchedule,
                 absent: set[str]):
        self.cascade = cascade
        self.einsum = einsum
        self.schedule = schedule
        self.absent = absent
        self.kept = schedule.tensors[0].layout
        self.reduced = einsum.reduced
        self.body: list = []

    # ---------------------------------------------------------------- names and sizes
    def _points(self, variables) -> ir.Expr:
        return product([self._size(v) for v in variables])

    def _extent(self, tensor: str, position: int) -> ir.Expr:
        """A coordinate's extent: the rank, one more for a recurrence's iterative rank."""
        t = self.cascade.tensors[tensor]
        rank = ir.Dim(t.ranks[position])
        return ir.Op("+", (rank, ir.Const(1))) if t.iterative == position else rank

    def _names(self, two_d: bool) -> dict[str, str]:
        names = {v: (f"{v}_2" if two_d else v) for v in self.kept}
        names.update({v: f"{v}_r" for v in self.reduced})
        if self.einsum.iter_var is not None:
            names[self.einsum.iter_var] = "step"
        return names

    # ---------------------------------------------------------------- expressions
    def index(self, var: str, at):
        names, _ = at
        return ir.Index(names.get(var, var))

    def read_in_index(self, node: ir.Read):
        raise Unsupported(f"a tensor read inside an index ({ir.to_text(node)})")

    def read(self, node: ir.Read, at, flag: bool = False) -> Load:
        _, lanes = at
        coordinates = self.coordinates(node, at, lambda p: self._extent(node.tensor, p))
        block_vars = set(self.kept) | set(self.einsum.reduced)
        # One address (a scalar tensor, or a read at the recurrence's step only): it is
        # valid (coordinates are clamped), needs no mask, and broadcasts.
        one = not node.indices or not set(ir.index_vars(node)) & block_vars
        return Load(node.tensor, coordinates, None if one else lanes, flag)

    def scalar(self, condition: Condition, at) -> bool:
        return not condition.variables

    def branches(self, conditions: list[Condition], at) -> Mask:
        return self._mask(conditions, *at)

    def _expr(self, expr: ir.Expr, names: dict[str, str], lanes: Var):
        return self.expr(expr, (names, lanes))

    def _mask(self, conditions: list[Condition], names: dict[str, str], lanes: Var) -> Mask:
        return Mask(tuple(self.condition(c, (names, lanes)) for c in conditions))

    # ---------------------------------------------------------------- statements
    def lower(self) -> tuple:
        einsum = self.einsum
        self.body.append(Comment(f"{lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}"))
        if einsum.iterative is not None:
            self.body.append(Comment(f"a recurrence over {self._size(einsum.iter_var).rank}: "
                                     f"the steps run in order inside each program"))
        points = self._points(self.kept)
        self.body += [
            Let("pid", Cast(ProgramId(0), "int64")),
            Let("flat", ir.Op("+", (ir.Op("*", (Var("pid"), Var("BLOCK"))),
                                     Arange("BLOCK")))),
            Let("live", Integer(ir.Op("<", (Var("flat"), points)))),
            Unflatten("flat", tuple((v, self._size(v)) for v in self.kept), "rest")]
        if einsum.iterative is not None:
            init = Einsum(einsum.tensor, self.kept, einsum.init)
            self.body += self._compute(init, "init", ir.Const(0))
            step = ir.Op("+", (Var("step"), ir.Const(1)))
            self.body.append(Loop("step", Integer(ir.Const(0)),
                                  Integer(self._size(einsum.iter_var)),
                                  None, (Barrier("the previous step's stores"),
                                         *self._compute(einsum, "value", step))))
        else:
            self.body += self._compute(einsum, "value", None)
        return tuple(self.body)

    def _compute(self, einsum: Einsum, target: str, iterative_at: ir.Expr | None) -> list:
        """Statements computing `einsum` at this program's points into `target`, stored
        at the iterative position `iterative_at` (a recurrence's init and steps)."""
        stepping = iterative_at is not None and iterative_at != ir.Const(0)
        space = self.kept + einsum.reduced + ((einsum.iter_var,) if stepping else ())
        conditions = einsum_conditions(self.cascade, einsum, self.absent, space)
        points = point_conditions(einsum, conditions)
        names1 = self._names(False)
        live = Var("live")
        out = self.einsum.tensor
        offset = self._store_offset(iterative_at, names1)
        found = []
        if einsum.reduce_op is None:
            value = self._expr(einsum.body, names1, live)
            found.append(Let(target, ir.Op("+", (value, Zeros(("BLOCK",))))))
        else:
            names2 = self._names(True)
            lanes = Var("lanes")
            identity = ir.REDUCTION_IDENTITY[einsum.reduce_op]
            found += [Let(f"{v}_2", Expand(Var(v), (True, False))) for v in self.kept]
            found.append(Let(target, Full(("BLOCK",), identity)))
            r_points = self._points(einsum.reduced)
            tile = (Let("rflat", Expand(ir.Op("+", (Var("r0"), Cast(Arange("RBLOCK"), "int64"))),
                                        (False, True))),
                    Let("lanes", Mask((Expand(live, (True, False)),
                                       Integer(ir.Op("<", (Var("rflat"), r_points)))))),
                    Unflatten("rflat", tuple((f"{v}_r", self._size(v)) for v in einsum.reduced),
                              "rest_r"),
                    Let("ok", Mask((lanes, self._mask(conditions, names2, lanes)))),
                    Let("term", self._expr(einsum.body, names2, lanes)),
                    Accumulate(target, einsum.reduce_op,
                               Reduce(einsum.reduce_op,
                                      ir.Op("where", (Var("ok"), Var("term"),
                                                      ir.Const(identity))), axis=1)))
            found.append(Loop("r0", Integer(ir.Const(0)), Integer(r_points), Var("RBLOCK"),
                              tile))
        found.append(Store(out, offset, Var(target), live))
        if out in self.absent:
            flags = Cast(Mask((self._mask(points, names1, live), live)), "int8")
            found.append(Store(out, offset, flags, live, flag=True))
        return found

    def _store_offset(self, iterative_at: ir.Expr | None, names: dict[str, str]) -> Integer:
        terms = []
        for position, var in enumerate(self.einsum.indices):
            stride = Var(f"{self.einsum.tensor}_s{position}")
            at = iterative_at if position == self.einsum.iterative else Var(names[var])
            terms.append(ir.Op("*", (at, stride)))
        # A scalar output (or a recurrence with no other variable): make the address a
        # block (every lane but the first is masked off) so it matches the stored block.
        if not self.kept:
            terms.append(ir.Op("*", (ir.Const(0), Var("flat"))))
        return Integer(ir.total(terms))


def lower_unfused(cascade: Cascade, einsum: Einsum, schedule: KernelSchedule,
                  absent: set[str], args: tuple[str, ...]) -> Kernel:
    """The kernel IR of one Einsum's kernel in the unfused schedule (`args`: its
    arguments, in the order the host passes them)."""
    body = _Unfused(cascade, einsum, schedule, absent).lower()
    knobs = tuple(knob.name for knob in schedule.knobs)
    return Kernel(schedule.name, tuple(args), knobs, 1, body)


# ------------------------------------------------------------------------ the loop schedule


def program_statements(cascade: Cascade, batch: list[str], row: str, block: str) -> list:
    """The program's coordinates: its point of each batch rank (grid axis 1, row-major)
    and its tile of `block` points of the row rank (grid axis 0), in int64."""
    return [Let("batch", Cast(ProgramId(1), "int64")),
            Unflatten("batch", tuple((v, ir.Dim(cascade.var_rank(v))) for v in batch), "rest"),
            Let(row, ir.Op("+", (ir.Op("*", (Cast(ProgramId(0), "int64"), Var(block))),
                                 Arange(block))))]


def _axes(own, layout: tuple[str, ...]) -> tuple[bool, ...]:
    """Expand's axes for a block over the dimensions `own` in `layout` (none if equal)."""
    return () if tuple(own) == tuple(layout) else tuple(d in own for d in layout)


class _Loops(Lowering):
    """The statements of the loop schedule's kernel (schedule/loops.py's LoopRoles); an
    expression stands in a tile layout."""

    def __init__(self, roles: LoopRoles, schedule: KernelSchedule):
        self.f = roles
        self.cascade = roles.cascade
        self.schedule = schedule

    # ---------------------------------------------------------------- expressions
    def index(self, var: str, layout: tuple[str, ...]):
        f = self.f
        if f.chunk is not None and var == f.chunk.var:
            # the chunk form: step t of the split rank is t1*T0 + t0
            return ir.Op("+", (ir.Op("*", (ir.Index(f.chunk.step), ir.Dim(f.chunk.inner))),
                               self.index(f.chunk.within, layout)))
        if var in (f.row, *f.held) and var in layout:
            return IndexBlock(var, _axes((var,), layout))
        if var in f.loop and f.lanes in layout:
            return IndexBlock(var, _axes((f.lanes,), layout))
        return ir.Index(var)

    def read_in_index(self, node: ir.Read):
        raise NotFusable(f"a tensor read inside an index ({ir.to_text(node)})")

    def expr(self, expr: ir.Expr, at, in_index: bool = False):
        """The chunk form's decays (LoopRoles.decay) as exp2 with log2(e) folded into
        each term of the exponent: the GPU's ex2 flushes results below 2**-126 to 0,
        where tl.exp keeps them subnormal at the cost of extra instructions (1951 ->
        1653 in GLA's chunk loop, sm_90a). A decay multiplies a value into a sum, so
        the flush changes it by less than 2**-126 times that value (docs/codegen.md)."""
        if isinstance(expr, ir.Op) and expr.op == "exp" and not in_index and \
                self.f.decay(expr.args[0]):
            return Exp2(distributed(super().expr(expr.args[0], at), LOG2E))
        return super().expr(expr, at, in_index)

    def read(self, node: ir.Read, layout: tuple[str, ...], flag: bool = False):
        """An intermediate is its register value (before the step: `_at`), reshaped into
        `layout`; an input is loaded."""
        f = self.f
        tensor = self.cascade.tensors[node.tensor]
        if not tensor.is_input:
            name = node.tensor
            producer = self.cascade.einsum(name)
            if producer.iterative is not None and \
                    node.indices[producer.iterative] == ir.Index(f.step):
                name += "_at"
            value = Var(f"{name}_ok" if flag else name)
            dims = f.layouts[node.tensor]
            if f.chunk is not None:
                value, dims = self._viewed(node, producer, value, flag)
            axes = _axes(dims, layout)
            # (a value picked down to one per program broadcasts as it is)
            return Expand(value, axes) if axes and dims else value
        coordinates = self.coordinates(node, layout,
                                       lambda position: ir.Dim(tensor.ranks[position]))
        dims = f.layout(set(ir.index_vars(node)) - set(f.batch) - {f.step})
        # Masked on the tile dimensions the address has (a K[d] tile is loaded once, not
        # once per row), and broadcast where it is used; none for one address per program.
        return Load(node.tensor, coordinates, self._live(dims, layout) if dims else None)

    def _viewed(self, node: ir.Read, producer: Einsum, value, flag: bool):
        """A register tile read by the chunk form (LoopRoles.chunk_read): a held rank
        read at another rank as large takes its name (the tile is the same, broadcast
        along the other axis), one read at a fixed point is picked out of the tile (a
        masked sum along it). The value and the dimensions it then has, in order."""
        f = self.f
        dims = list(f.layouts[node.tensor])
        picked = False
        for index, var in zip(node.indices, producer.indices):
            kind = f.chunk_read(var, index) if var in dims else None
            if kind == "renamed":
                dims[dims.index(var)] = index.var
                continue
            if kind != "picked":          # its own point (t % T0: the reader's step)
                continue
            at = tuple(dims)
            test = Mask((Test(self.expr(ir.Op("==", (ir.Index(var), index)), at),
                              integer=True),))
            if flag and not picked:   # flags are 1.0 and 0.0 while they are picked
                value = ir.Op("where", (Mask((test, value)), ir.Const(1.0), ir.Const(0.0)))
            else:
                value = ir.Op("where", (test, value, ir.Const(0.0)))
            value = Reduce("sum", value, dims.index(var))
            dims.remove(var)
            picked = True
        if list(dims) != [d for d in f.order if d in dims]:
            raise NotFusable(f"{ir.to_text(node)} reads {node.tensor}'s tile transposed")
        if flag and picked:
            value = Test(ir.Op("!=", (value, ir.Const(0.0))), integer=False, scalar=not dims)
        return value, tuple(dims)

    def scalar(self, condition: Condition, layout: tuple[str, ...]) -> bool:
        return not self.f.layout(condition.variables - set(self.f.batch) - {self.f.step})

    def branches(self, conditions: list[Condition], layout: tuple[str, ...]) -> Mask:
        return self._all(conditions, layout)

    def _expr(self, expr: ir.Expr, layout: tuple[str, ...]):
        return self.expr(expr, layout)

    def _live(self, dims, layout: tuple[str, ...]) -> Mask:
        return Mask(tuple(Expand(Var(f"{d}_live"), _axes((d,), layout)) for d in dims))

    def _all(self, conditions: list[Condition], layout: tuple[str, ...]) -> Mask:
        return Mask((self._live(layout, layout),
                     *(self.condition(c, layout) for c in conditions)))

    # ---------------------------------------------------------------- statements
    def lower(self) -> tuple:
        f, cascade = self.f, self.cascade
        body = program_statements(cascade, f.batch, f.row, f"{f.row}_BLOCK")
        body.append(Let(f"{f.row}_live", Integer(ir.Op("<", (Var(f.row), self._size(f.row))))))
        for var in f.held:
            body.append(Let(var, Cast(Arange(f"{var}_BLOCK"), "int64")))
            body.append(Let(f"{var}_live", Integer(ir.Op("<", (Var(var), self._size(var))))))
        body += self._steps() if f.step is not None else self._tiles()
        for output in cascade.outputs:
            if f.kinds[output] in (Role.ROW, Role.REDUCE):
                body.append(self._store(output))
        return tuple(body)

    def _zeros(self, layout: tuple[str, ...]) -> Zeros:
        return Zeros(tuple(f"{d}_BLOCK" for d in layout))

    def _steps(self) -> list:
        f, cascade = self.f, self.cascade
        before = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.ROW
                  and e.tensor not in f.after_loop]
        after = [e for e in cascade.einsums if e.tensor in f.after_loop]
        carried = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.CARRIED]
        found = [s for einsum in before for s in self._compute(einsum)]
        steps = cascade.var_rank(f.step)
        found.append(Comment(f"{f.step} steps over {steps} in order; "
                             f"{', '.join(e.tensor for e in carried) or 'nothing'} carried "
                             f"in registers"))
        for einsum in carried:
            layout = f.layouts[einsum.tensor]
            found.append(Let(einsum.tensor, ir.Op("+", (self._expr(einsum.init, layout),
                                                        self._zeros(layout)))))
        # A state that may be absent (the chunk form's, past the sequence's end) carries
        # its presence flags beside it; its init is present.
        flagged = [e.tensor for e in carried if e.tensor in f.absent]
        found += [Let(f"{name}_ok", self._live(f.layouts[name], f.layouts[name]))
                  for name in flagged]
        loop = [Let(f"{e.tensor}_at", Var(e.tensor), note=f"at step {f.step}") for e in carried]
        loop += [Let(f"{name}_at_ok", Var(f"{name}_ok")) for name in flagged]
        for einsum in cascade.einsums:
            if f.kinds[einsum.tensor] in (Role.CARRIED, Role.STEP):
                loop += self._compute(einsum)
                if einsum.tensor in cascade.outputs:
                    loop.append(self._store(einsum.tensor))
        found.append(Loop(f.step, Integer(ir.Const(0)), Integer(ir.Dim(steps)), None,
                          tuple(loop)))
        found += [s for einsum in after for s in self._compute(einsum)]
        return found

    def _tiles(self) -> list:
        f, cascade = self.f, self.cascade
        rows = [e for e in cascade.einsums if f.kinds[e.tensor] == Role.ROW]
        found = [s for e in rows if f.ready[e.tensor] == 0 for s in self._compute(e)]
        size = product([self._size(v) for v in f.loop])
        block = f"{f.lanes}_BLOCK"
        for number, accumulators, stored, needed in f.pass_plan():
            found.append(Comment(f"pass {number} over ({', '.join(f.loop)}) in tiles of "
                                 f"{block}"))
            for acc in accumulators:
                found.append(Let(acc.tensor, Full(tuple(f"{d}_BLOCK" for d in
                                                        f.layouts[acc.tensor]),
                                                  ir.REDUCTION_IDENTITY[acc.reduce_op])))
            tile = [Let(f.lanes, ir.Op("+", (Var("start"), Cast(Arange(block), "int64")))),
                    Let(f"{f.lanes}_live", Integer(ir.Op("<", (Var(f.lanes), size)))),
                    Unflatten(f.lanes, tuple((v, self._size(v)) for v in f.loop),
                              f"{f.lanes}_rest")]
            tile += [s for einsum in needed for s in self._compute(einsum)]
            tile += [s for acc in accumulators for s in self._compute(acc, accumulate=True)]
            tile += [self._store(output) for output in stored]
            found.append(Loop("start", Integer(ir.Const(0)), Integer(size), Var(block),
                              tuple(tile)))
            found += [s for acc in accumulators for s in self._presence(acc)]
            found += [s for e in rows if f.ready[e.tensor] == number
                      for s in self._compute(e)]
        return found

    def _compute(self, einsum: Einsum, accumulate: bool = False) -> list:
        """One tensor in registers (and its `_ok` mask when it may be absent). A reduction
        masks absent terms and reduces the tile's reduced axes; with `accumulate`, it
        combines into the value from earlier tiles."""
        f, name = self.f, einsum.tensor
        layout = f.layouts[name]
        found = [Comment(f"{lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}")]
        plan = f.dot_plan(einsum)
        if plan is not None and not accumulate:
            found.append(Let(name, self._dot(einsum, plan)))
        elif einsum.reduce_op is None:
            found.append(Let(name, ir.Op("+", (self._expr(einsum.body, layout),
                                               self._zeros(layout)))))
        else:
            space = f.space(einsum)
            value = ir.Op("where", (self._all(f.conditions(einsum), space),
                                    self._expr(einsum.body, space),
                                    ir.Const(ir.REDUCTION_IDENTITY[einsum.reduce_op])))
            for axis in sorted((space.index(d) for d in space if d not in layout),
                               reverse=True):
                value = Reduce(einsum.reduce_op, value, axis)
            found.append(Accumulate(name, einsum.reduce_op, value) if accumulate
                         else Let(name, value))
        if not accumulate:
            found += self._presence(einsum)
        return found

    def _dot(self, einsum: Einsum, plan) -> ir.Expr:
        """A sum as one tl.dot (LoopRoles.dot_plan): each operand the product of its
        factors where its conditions and lanes hold (else 0), in its own 2-D layout
        (transposed where the held order has the reduced rank second on the left, or
        first on the right); the factors and conditions without the reduced rank
        applied to the product."""
        f = self.f
        layout = f.layouts[einsum.tensor]
        (reduced,) = f.reduced_tile(einsum)
        conditions = {"left": [], "right": [], "after": []}
        for condition in f.conditions(einsum):
            conditions[f.dot_side(einsum, f.tile_dims(condition.variables))].append(condition)

        def operand(side: str, dims: set[str]):
            at = tuple(d for d in f.order if d in dims)
            value = self._expr(ir.product(list(getattr(plan, side))), at)
            return ir.Op("where", (self._all(conditions[side], at), value,
                                   ir.Const(0.0))), at
        left, left_at = operand("left", {layout[0], reduced})
        right, right_at = operand("right", {reduced, layout[1]})
        product = Dot(left, right, transposed=right_at[0] != reduced, rounded=plan.rounded,
                      left_transposed=left_at[0] == reduced,
                      converted=(plan.exact, plan.exact))   # exact: float32 operands
        if plan.after:
            product = ir.Op("*", (product, self._expr(ir.product(list(plan.after)), layout)))
        if conditions["after"]:
            product = ir.Op("where", (self._all(conditions["after"], layout), product,
                                      ir.Const(0.0)))
        return product

    def _presence(self, einsum: Einsum) -> list:
        """`T_ok` for a tensor that may be absent: its point conditions."""
        f, name = self.f, einsum.tensor
        if name not in f.absent:
            return []
        points = point_conditions(einsum, f.conditions(einsum))
        return [Let(f"{name}_ok", self._all(points, f.layouts[name]))]

    def _store(self, name: str) -> Store:
        f = self.f
        einsum = self.cascade.einsum(name)
        layout = f.layouts[name]
        offset = ir.total([ir.Op("*", (self._index_at(var, layout), Var(f"{name}_s{position}")))
                       for position, var in enumerate(einsum.indices)])
        value = ir.Op("where", (Var(f"{name}_ok"), Var(name), ir.Const(0.0))) \
            if name in f.absent else Var(name)
        mask = self._live(layout, layout)
        if f.chunk is not None and f.chunk.var in einsum.indices:
            # the last chunk's steps past the end are not the output's
            end = ir.Op("<", (ir.Index(f.chunk.var), self._size(f.chunk.var)))
            mask = Mask((mask, Test(self.expr(end, layout), integer=True)))
        return Store(name, Integer(offset), value, mask)

    def _index_at(self, var: str, layout: tuple[str, ...]):
        index = self.index(var, layout)
        return Var(var) if isinstance(index, ir.Index) else index


def lower_loops(cascade: Cascade) -> LoweredKernel:
    """The loop schedule of a cascade (schedule/loops.py's LoopRoles) lowered to the
    kernel IR, its schedule described; NotFusable (Crossing where a value would cross
    program tiles) where the cascade does not fit."""
    roles = LoopRoles(cascade)
    schedule = roles.kernel_schedule(f"{cascade.name}_fused")
    grid = ", ".join(roles.batch + [f"{roles.row} tiles"])
    held = f"; {', '.join(roles.held)} held whole in a tile" if roles.held else ""
    description = (f"one fused kernel {schedule.name}: grid over {grid}{held}; "
                   f"{_loops_described(roles)}")
    return LoweredKernel(schedule.with_(description=description),
                         _Loops(roles, schedule).lower())


def _loops_described(roles: LoopRoles) -> str:
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
