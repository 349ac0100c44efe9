"""The attention schedule's decisions (docs/codegen.md, the fused schedule): which rank
is streamed in key tiles, which ranks the grid covers, which are held whole, and the role
and layout of every tensor, read off the IR and the pass analysis of the streamed rank.
schedule/lower_attention.py lowers them to the kernel IR.
"""

from __future__ import annotations

from ..analysis import Report
from ..analysis.buffers import analyse_buffers
from ..analysis.passes import analyse_passes
from ..analysis.presence import (Condition, absent_tensors, einsum_conditions,
                                 expression_conditions, point_conditions)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..transform.algebra import substitute
from .bounds import either_bound, either_row_bound, monotone_bound, stream_bound
from .kernel import loaded_inputs, scalars
from .masks import range_comparisons
from .model import (Bound, DotPlan, Form, Group, KernelSchedule, Knob, Loop, LoopKind, Pass,
                    Role, Store, TensorPlan)
from .skipping import masked_steps_are_identities
from .stages import NotFusable

BLOCK_P = 16    # the row knob's default: rows per program
BLOCK_M = 16    # the key tile's default where the spec does not fix it (a split does)


class AttentionRoles:
    """The attention schedule's decisions for a cascade: the streamed rank (and its
    split), the grid's batch and row ranks, the feature ranks held whole, and each
    tensor's role and layout. NotFusable with the reason where the cascade does not fit."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        if not cascade.splits:
            for einsum in cascade.einsums:     # checked again below; here before analysis
                if einsum.iterative is not None:
                    raise NotFusable(f"the recurrence {einsum.tensor} is not over the key tiles")
        # The passes of every rank (to choose the primary one) and the buffers of that
        # one: the part of `analyze` the schedule reads (the cut search calls this often).
        ranks = analyse_passes(cascade)
        # The streamed rank is the report's primary one among the ranks no output has:
        # the outputs are per-row values (a backward's dQ[p, e] has E as many passes as
        # M, and only M can be streamed).
        outputs = {r for name in cascade.outputs for r in cascade.tensors[name].ranks}
        rank = Report(cascade, "float16", {r: passes for r, passes in ranks.items()
                                           if r not in outputs}, {}, None).primary_rank
        if rank is None or rank not in ranks:
            raise NotFusable("no rank is streamed")
        self.passes = ranks[rank]
        buffers = analyse_buffers(cascade, self.passes, 2)
        self.stream = cascade.ranks[rank].var
        # A split of the streamed rank: its outer part is the loop, its inner part the
        # tile (FuseMax's Cascade 5); recurrences over the outer part are loop-carried.
        self.loop: str | None = None
        self.tile_tunable = False
        splits = [s for s in cascade.splits if s.parent == rank]
        if len(cascade.splits) > len(splits) or len(splits) > 1:
            raise NotFusable("splits other than one split of the streamed rank")
        if splits:
            split = splits[0]
            if not isinstance(split.factor, int) or split.factor < 1:
                raise NotFusable(f"split factor {split.factor}: a tile needs a whole "
                                 f"number known when the kernel is generated")
            if self.passes.passes != 1:
                raise NotFusable(f"{self.passes.passes} passes over a split rank")
            self.loop = cascade.ranks[split.outer].var
            self.stream = cascade.ranks[split.inner].var
            self.tile = split.factor      # the lanes of a step; padded below
            self.tile_block = f"{self.stream}_BLOCK"
            # A rewrite's split: the key tile is a knob (every tile gives the same result,
            # ir/cascade.py Split.tunable); a spec's own split fixes it.
            self.tile_tunable = split.tunable
        for einsum in cascade.einsums:
            if einsum.iterative is not None and einsum.iter_var != self.loop:
                raise NotFusable(f"the recurrence {einsum.tensor} is not over the key tiles")
        parallel = [cascade.ranks[r].var for r in buffers.parallel]
        if not parallel:
            raise NotFusable("no parallel rank to spread programs over")
        self.row = parallel[-1]
        self.batch = parallel[:-1]
        # Ranks no Einsum iterates over (a stage's, the queries of the keys' stage)
        # get no tile: a BLOCK of their size would be a compilation per size.
        used = {v for einsum in cascade.einsums for v in einsum.variables}
        self.features = [r.var for r in cascade.ranks.values()
                         if r.var not in parallel and r.var not in (self.stream, self.loop)
                         and r.name != rank and r.var in used]
        self.absent = absent_tensors(cascade)
        self.kinds: dict[str, Role] = {}
        self.layouts: dict[str, tuple[str, ...]] = {}
        # A per-row value that may be absent: the conditions of its row alone (over
        # the batch and row ranks) under which it is present (`_row_presence`).
        self.row_presence: dict[str, tuple[Condition, ...]] = {}
        for einsum in cascade.einsums:
            self._classify(einsum)
        # output -> the conditions it is stored under (absent -> 0)
        self.row_masks = {o: list(self.row_presence[o]) for o in cascade.outputs
                          if self.row_presence.get(o)}
        for output in cascade.outputs:
            if self.kinds[output] not in (Role.ROW, Role.ACCUMULATE, Role.DOT_ACCUMULATE):
                raise NotFusable(f"output {output} is not a per-row value")
        for einsum in cascade.einsums:
            self._check_reads(einsum)
        self.group = self._grouped_heads()
        self.factor = self.tile if self.loop is not None else None
        if self.loop is not None and not self.tile_tunable:
            self.tile = padded_tile(self.factor, any(kind.uses_dot
                                                     for kind in self.kinds.values()))

    @property
    def padded(self) -> bool:
        """A spec's split whose factor is no tile of its own (below tl.dot's 16, or not a
        power of two): each step holds `tile` lanes, those at m0 >= factor masked."""
        return self.loop is not None and self.tile != self.factor

    # ---------------------------------------------------------------- classification
    def _classify(self, einsum: Einsum) -> None:
        if self.loop is not None:
            return self._classify_split(einsum)
        name = einsum.tensor
        left, extra = self._left(einsum)
        reduced = set(einsum.reduced)
        if self.stream in left:
            if extra:
                raise NotFusable(f"{name} has a feature rank beside the streamed one")
            if name in self.absent and any(c.kind == "absent" and not c.read.indices
                                           for c in self._conditions(einsum)):
                raise NotFusable(f"{name}: absent scalar reads")
            kind = self._tile_kind(einsum)
        elif self.stream in reduced:
            if reduced != {self.stream}:
                raise NotFusable(f"{name} reduces the streamed rank with another")
            kind = self._reduction_kind(einsum, extra, Role.DOT_ACCUMULATE, Role.ACCUMULATE)
        else:
            if reduced:
                raise NotFusable(f"{name} reduces a feature rank outside the stream")
            kind = Role.ROW
            self.layouts[name] = (self.row,) + tuple(extra)
        if not kind.on_key_tile and name in self.absent:
            self._row_presence(einsum)
        self.kinds[name] = kind

    def _left(self, einsum: Einsum) -> tuple[list[str], list[str]]:
        """The left variables other than batch ones, and the (at most one) feature rank
        among them; every tensor must have every parallel rank."""
        if not set(self.batch) <= set(einsum.indices) or self.row not in einsum.indices:
            raise NotFusable(f"{einsum.tensor} does not have every parallel rank "
                             f"({', '.join(self.batch + [self.row])})")
        left = [v for v in einsum.indices if v not in self.batch]
        extra = [v for v in left if v not in (self.row, self.stream, self.loop)]
        if len(extra) > 1:
            raise NotFusable(f"{einsum.tensor} has more than one feature rank")
        return left, extra

    def _reduction_kind(self, einsum: Einsum, extra: list[str], dot: str, plain: str) -> str:
        """A reduction over the key tile into a per-row value: a tl.dot with a key tile
        when it keeps a feature rank (a sum), else a plain tl.sum / tl.max / tl.min."""
        self.layouts[einsum.tensor] = (self.row,) + tuple(extra)
        if extra and einsum.reduce_op == "sum":
            return dot
        if extra:
            raise NotFusable(f"{einsum.tensor}: a max/min over the keys with a feature rank")
        return plain

    def _tile_kind(self, einsum: Einsum) -> str:
        """A tensor over (row, key tile): elementwise, or a contraction over a feature."""
        reduced = set(einsum.reduced)
        self.layouts[einsum.tensor] = (self.row, self.stream)
        if not reduced:
            return Role.STREAM
        if len(reduced) == 1 and einsum.reduce_op == "sum" and reduced <= set(self.features):
            return Role.STREAM_DOT
        raise NotFusable(f"{einsum.tensor}: a reduction this schedule does not tile")

    def _classify_split(self, einsum: Einsum) -> None:
        """Kinds with the stream split into a loop (outer) and a tile (inner):
        stream / stream-dot: a tile over (row, inner) for the current outer step;
        tile-reduce / tile-dot: a reduction over the tile, once per step;
        tile-row: a per-row value of the current step;  carried: a recurrence over the
        outer part;  row: before or after the loop."""
        name = einsum.tensor
        left, extra = self._left(einsum)
        reduced = set(einsum.reduced)
        if self.loop in reduced:
            raise NotFusable(f"{name} reduces over the key tiles (not a recurrence)")
        if einsum.iterative is not None:
            kind = Role.CARRIED
            self.layouts[name] = (self.row,) + tuple(extra)
        elif self.stream in left:
            if self.loop not in left or extra:
                raise NotFusable(f"{name}: a tile needs the outer part and no feature rank")
            kind = self._tile_kind(einsum)
        elif self.stream in reduced:
            if reduced != {self.stream} or self.loop not in left:
                raise NotFusable(f"{name} reduces the tile together with another rank")
            kind = self._reduction_kind(einsum, extra, Role.TILE_DOT, Role.TILE_REDUCE)
        else:
            if reduced:
                raise NotFusable(f"{name} reduces a feature rank outside the stream")
            kind = Role.TILE_ROW if self.loop in left else Role.ROW
            self.layouts[name] = (self.row,) + tuple(extra)
        if not kind.on_key_tile and name in self.absent:
            self._row_presence(einsum)
        self.kinds[name] = kind

    # ---------------------------------------------------------------- grouped heads
    def _grouped_heads(self) -> Group | None:
        """The query heads a program packs with its rows (model.Group), or None: a batch
        variable h that the key-side inputs (the reads of an input over the stream and
        not the row) read only as `h * KH // H` and everything else only as h itself,
        in no condition and no arithmetic; and no row that may be absent."""
        if self.row_presence:
            return None
        for var in self.batch:
            ranks = set()
            if all(self._head_reads(expr, var, ranks) for einsum in self.cascade.einsums
                   for expr in (einsum.body, einsum.filter, einsum.init)
                   if expr is not None) and len(ranks) == 1:
                (rank,) = ranks
                group = self.cascade.ranks[rank].var
                used = {v for e in self.cascade.einsums for v in e.variables}
                if group in used:
                    group = self.cascade.fresh_name(group, used)
                return Group(var, group, rank, self.cascade.var_rank(var))
        return None

    def _head_reads(self, expr: ir.Expr, var: str, ranks: set[str]) -> bool:
        """Whether `var` appears in `expr` only as a read's own index, or as the group
        `var * R // extent` of a key-side input (R added to `ranks`)."""
        if isinstance(expr, ir.Index):
            return expr.var != var
        if not isinstance(expr, ir.Read):
            return all(self._head_reads(arg, var, ranks) for arg in ir.children(expr))
        tensor = self.cascade.tensors[expr.tensor]
        used = set(ir.index_vars(expr))
        key_side = tensor.is_input and self.stream in used and self.row not in used
        for index in expr.indices:
            if index == ir.Index(var) and not key_side:
                continue
            rank = self._group_rank(index, var)
            if rank is not None and key_side:
                ranks.add(rank)
            elif var in ir.index_vars(index):
                return False
        return True

    def _group_rank(self, index: ir.Expr, var: str) -> str | None:
        """R of `var * R // extent` (extent: var's rank), else None."""
        extent = ir.Dim(self.cascade.var_rank(var))
        if isinstance(index, ir.Op) and index.op == "//" and index.args[1] == extent:
            product = index.args[0]
            if isinstance(product, ir.Op) and product.op == "*" and \
                    product.args[0] == ir.Index(var) and isinstance(product.args[1], ir.Dim):
                return product.args[1].rank
        return None

    def grouped(self, index: ir.Expr) -> ir.Expr:
        """A read's index with the group `h * KH // H` as the program's group variable."""
        group = self.group
        if group is not None and self._group_rank(index, group.var) == group.rank:
            return ir.Index(group.group)
        return index

    # ---------------------------------------------------------------- registers
    def _check_reads(self, einsum: Einsum) -> None:
        """Every intermediate `einsum` reads (in its body, filter or initial value) is a
        value the registers hold (`register_name`): decided here, for every backend that
        follows this schedule, rather than found while a kernel is written."""
        for expr in (einsum.body, einsum.filter, einsum.init):
            for node in () if expr is None else ir.walk(expr):
                if isinstance(node, ir.Read) and not self.cascade.tensors[node.tensor].is_input:
                    self.register_name(node)

    def register_name(self, read: ir.Read) -> str:
        """The register value a read of an intermediate is: the tensor's own, or (a
        recurrence over the key tiles' steps read at the step) `X_at`, its value before
        this step. Registers hold a value at the reader's own point only: every other
        coordinate must be the tensor's own variable there (its layout may order them
        anew), and a recurrence is read at the step, the step after or its final value.
        NotFusable otherwise."""
        einsum = self.cascade.einsum(read.tensor)
        name = read.tensor
        for position, (index, var) in enumerate(zip(read.indices, einsum.indices)):
            if position == einsum.iterative:
                step = ir.Index(self.loop)
                if index == step:
                    name = f"{read.tensor}_at"
                elif index not in (ir.Op("+", (step, ir.Const(1))),
                                   ir.Dim(self.cascade.var_rank(self.loop))):
                    raise NotFusable(f"{read.tensor} is read at step {ir.to_text(index)}")
            elif index != ir.Index(var):
                raise NotFusable(f"{read.tensor} is read at shifted positions")
        return name

    def register_axes(self, tensor: str, layout: tuple[str, ...],
                      name: str | None = None) -> tuple[bool, ...]:
        """How the register value of `tensor` (`name`: its value before the step) enters
        a tile of `layout`: () as it is, else the axes that broadcast it (a per-row value
        into the row's tiles). NotFusable where a tile of that layout cannot hold it."""
        own = self.layouts[tensor]
        if own == layout:
            return ()
        if own == layout[:len(own)] or \
                (own == (self.row,) and len(layout) == 2 and layout[0] == self.row):
            return (True, False)
        raise NotFusable(f"{name or tensor} is read in another layout ({', '.join(layout)})")

    def absence_flag(self, tensor: str) -> str:
        """The mask a kernel tests for `tensor`'s presence: a key tile's `_ok`, computed
        beside it. No other value's absence is a condition a kernel tests (a per-row
        value's is its row presence, `resolve`): NotFusable."""
        if self.kinds.get(tensor) not in (Role.STREAM, Role.STREAM_DOT):
            raise NotFusable(f"a condition on the absence of {tensor}")
        return f"{tensor}_ok"

    # ---------------------------------------------------------------- absent rows
    def _row_presence(self, einsum: Einsum) -> None:
        """Per-row values live in registers without masks of their own. One that may
        be absent only on conditions of its own row (its batch and row coordinates:
        `K[b, h // (H // KH), m, e]` leaves the kv heads when KH does not divide H) is
        computed anyway; the conditions are its row's presence: its readers' masks say
        them in its place (a reduction over the keys then sees no term of that row, as
        for a fully masked row) and an output is stored under them (absent -> 0).
        Exact because the conditions hold for the whole row or for none of it: where
        they hold nothing changes, where they do not every value of the row that reads
        it is absent too or skips it. Any other absence stays unfused."""
        name = einsum.tensor
        if einsum.init is not None and \
                expression_conditions(self.cascade, einsum.init, self.absent):
            raise NotFusable(f"{name}: a recurrence whose initial value may be absent")
        allowed = set(self.batch) | {self.row}
        points = point_conditions(einsum, self._conditions(einsum))
        for condition in points:
            if not self._of_the_row(condition, allowed):
                raise NotFusable(f"{name}: a per-row value that may be absent")
        self.row_presence[name] = tuple(dict.fromkeys(points))

    @staticmethod
    def _of_the_row(condition: Condition, allowed: set[str]) -> bool:
        """A filter, range or split condition (and every condition inside it) over the
        batch and row variables alone: the same for every key, step and feature."""
        return condition.kind in ("filter", "range", "split") and \
            condition.variables <= allowed and \
            all(AttentionRoles._of_the_row(c, allowed) for part in condition.parts
                for c in part)

    def _conditions(self, einsum: Einsum) -> list[Condition]:
        return self.resolve(einsum, einsum_conditions(self.cascade, einsum, self.absent))

    def resolve(self, einsum: Einsum, conditions: list[Condition]) -> list[Condition]:
        """`einsum`'s presence conditions with the absence of a per-row value replaced
        by that value's row presence (`_row_presence`), so that every mask is made of
        conditions a kernel can test. NotFusable where that would not be exact."""
        found: list[Condition] = []
        for condition in conditions:
            found += self._resolved(einsum, condition)
        return found

    def _resolved(self, einsum: Einsum, condition: Condition) -> list[Condition]:
        if condition.kind == "absent":
            name = condition.read.tensor
            if name not in self.row_presence and name != einsum.tensor:
                return [condition]
            self._row_read(einsum, condition)
            # A recurrence reads itself at the step before: present at step 0 (its init),
            # and at later steps exactly where its other conditions hold.
            return [] if name == einsum.tensor else list(self.row_presence[name])
        parts = tuple(tuple(self.resolve(einsum, list(part))) for part in condition.parts)
        if condition.kind != "where":
            return [condition] if parts == condition.parts else \
                [Condition(condition.kind, condition.variables, condition.expr,
                           condition.read, parts)]
        # where(c, a, b) needs c and the branch it picks: the conditions of c alone, when
        # those of either branch are among them (at every point, reduced or not: the
        # gradient's `where(T != T, 1, 1)`, present where T is); else its presence
        # depends on c's value.
        cond, *branches = parts
        if any(not set(branch) <= set(cond) for branch in branches):
            raise NotFusable(f"{einsum.tensor}: whether a value is present depends on "
                             f"the condition of a where(...)")
        return list(cond)

    def _row_read(self, einsum: Einsum, condition: Condition) -> None:
        """A read of a per-row value that may be absent says its row presence only at the
        value's own coordinates (a recurrence: at the step after, or its final value),
        and only where the read does not drop terms of a reduction over a rank the
        value has (its absence there would leave the sum present, as 0)."""
        read = condition.read
        source = self.cascade.einsum(read.tensor)
        if condition.variables & set(einsum.reduced):
            raise NotFusable(f"{einsum.tensor} reduces {read.tensor}, a per-row value that "
                             f"may be absent")
        for position, (index, var) in enumerate(zip(read.indices, source.indices)):
            if position == source.iterative:
                step = ir.Index(self.loop)
                final = ir.Dim(self.cascade.var_rank(self.loop))
                if index in (ir.Op("+", (step, ir.Const(1))), final) or \
                        (index == step and read.tensor == einsum.tensor):
                    continue
            elif index == ir.Index(var):
                continue
            raise NotFusable(f"{einsum.tensor} reads {read.tensor}, a per-row value that "
                             f"may be absent, at other points than its own")

    # ---------------------------------------------------------------- masks
    def said_by_live_keys(self, condition: Condition) -> bool:
        """The split's `m1 * M0 + m0 < M`, and the range of a read at the key itself
        (`V[.., m1 * M0 + m0, ..]`): what the live keys of a tile say already."""
        if condition.kind == "split":
            return True
        if condition.kind != "range" or self.loop is None:
            return False
        return condition.expr == ir.Op("and", tuple(self.split_key_in_rank()))

    def key(self) -> ir.Expr:
        """The streamed key as an index: `m`, or a split's `m1 * M0 + m0`."""
        if self.loop is None:
            return ir.Index(self.stream)
        inner = self.cascade.var_rank(self.stream)
        return ir.Op("+", (ir.Op("*", (ir.Index(self.loop), ir.Dim(inner))),
                           ir.Index(self.stream)))

    def split_key_in_rank(self) -> list[ir.Expr]:
        """`0 <= key` and `key < M` (the key `m1 * M0 + m0` of a split, or `m`): a key
        in its rank."""
        key = self.key()
        root = ir.Dim(self.cascade.root_rank(self.cascade.var_rank(self.stream)))
        return [ir.Op("<=", (ir.Const(0), key)), ir.Op("<", (key, root))]

    def beyond_lanes(self, conditions: list[Condition]) -> tuple[Condition, ...]:
        """The conditions a point of a key tile must meet beyond its lanes (live rows,
        live keys), as a set: what the live keys say is left out, a range `0 <= i < n`
        is its two comparisons, and each condition appears once (the causal kernel's
        `m1 * M0 + m0 < M` was tested three times in one mask)."""
        found = []
        for condition in conditions:
            if self.said_by_live_keys(condition):
                continue
            found += range_comparisons(condition)
        return tuple(dict.fromkeys(found))

    # ---------------------------------------------------------------- the schedule
    def pass_plan(self) -> list[tuple[int, list[Einsum], list[Einsum]]]:
        """Per pass over the keys: its number, the reductions it finishes, and the key
        tiles it computes (again) for them. A split stream has one pass: its loop."""
        cascade = self.cascade
        if self.loop is not None:
            reductions = [e for e in cascade.einsums
                          if self.kinds[e.tensor] in (Role.TILE_REDUCE, Role.TILE_DOT)]
            return [(1, reductions, [e for e in cascade.einsums
                                     if self.kinds[e.tensor].on_key_tile])]
        plan = []
        for number in range(1, self.passes.passes + 1):
            accumulators = [e for e in cascade.einsums
                            if self.passes.pass_of.get(e.tensor) == number and
                            self.kinds[e.tensor] in (Role.ACCUMULATE, Role.DOT_ACCUMULATE)]
            plan.append((number, accumulators, self.key_tiles_for(accumulators)))
        return plan

    def key_tiles_for(self, accumulators: list[Einsum]) -> list[Einsum]:
        """The key tiles the accumulators read, directly or through other key tiles."""
        needed: set[str] = set()
        stack = [r for acc in accumulators for r in acc.reads]
        while stack:
            name = stack.pop()
            if name in needed or not (name in self.kinds and self.kinds[name].on_key_tile):
                continue
            needed.add(name)
            stack.extend(self.cascade.einsum(name).reads)
        return [e for e in self.cascade.einsums if e.tensor in needed]

    # ---------------------------------------------------------------- proved bounds
    def keyed(self, condition: ir.Expr) -> ir.Expr:
        """A condition with the key written as the tile's index variable, so that
        `stream_bound` reads a bound off it: a split's key m1 * M0 + m0 as a plain `m0`."""
        if self.loop is None:
            return condition
        inner = ir.Dim(self.cascade.var_rank(self.stream))
        key = ir.Op("-", (ir.Index(self.stream), ir.Op("*", (ir.Index(self.loop), inner))))
        return substitute(condition, {self.stream: key})

    def leaf_conditions(self, einsum: Einsum, points: bool = False) -> list[Condition]:
        """The conditions on `einsum`'s terms (`points`: on its points), with the absence
        of a key tile replaced by the conditions its `_ok` mask is made of."""
        conditions = self._conditions(einsum)
        if points:
            conditions = point_conditions(einsum, conditions)
        found = []
        for condition in conditions:
            if condition.kind == "absent" and \
                    self.kinds.get(condition.read.tensor) in (Role.STREAM, Role.STREAM_DOT):
                found += self.leaf_conditions(self.cascade.einsum(condition.read.tensor),
                                              points=True)
            else:
                found.append(condition)
        return found

    def masking_offsets(self, reductions: list[Einsum]) -> tuple[Bound, ...]:
        """The bounds of the affine filters `key <= row + offset` ('upper') and
        `key >= row + offset` ('lower') that mask every term of every reduction in
        `reductions`: the keys a row outside them sees add nothing to the reductions."""
        if not reductions:
            return ()
        candidates = None
        for reduction in reductions:
            masked_by = {c.expr for c in self.leaf_conditions(reduction) if c.kind == "filter"}
            candidates = masked_by if candidates is None else candidates & masked_by
        found = []
        keys = ir.Dim(self.cascade.root_rank(self.cascade.var_rank(self.stream)))
        for condition in sorted(candidates or (), key=str):
            keyed = self.keyed(condition)
            bound = stream_bound(keyed, self.stream, self.row)
            if bound is not None:
                found.append(Bound(*bound))
                continue
            # a clamped window: key >= f(row) with f never decreasing (neighborhood); a
            # bound the same for every row (a KV cache's valid length: key < LEN[b])
            bound = monotone_bound(keyed, self.stream, self.row, keys, frozenset(self.batch),
                                   frozenset(t.name for t in self.cascade.inputs))
            if bound is not None:
                found.append(Bound(bound[0], 0, bound[1]))
                continue
            # a window or the first keys, the sinks: two ranges of key tiles
            bound = either_bound(keyed, self.stream, self.row)
            if bound is not None:
                found.append(Bound(bound[0], bound[1], sinks=bound[2]))
                continue
            # the keys up to a diagonal, or all of them for the first rows (dK/dV's sinks)
            bound = either_row_bound(keyed, self.stream, self.row)
            if bound is not None:
                found.append(Bound(bound[0], bound[1], open_rows=bound[2]))
        return tuple(found)

    def split_skipping(self, reductions: list[Einsum]) -> tuple[tuple[Bound, ...], str]:
        """The bounds of a split stream's one loop, and why steps are (not) skipped: a
        step outside them may be left out only when a fully masked step provably changes
        nothing carried (schedule/skipping.py)."""
        bounds = self.masking_offsets(reductions)
        if not bounds:
            return (), "no affine filter masks every per-step reduction"
        why_not = masked_steps_are_identities(self.cascade, self.kinds, self.loop)
        if why_not is not None:
            return (), why_not
        return bounds, "a fully masked step changes nothing carried (proved)"

    # ---------------------------------------------------------------- dots
    def dot_plan(self, einsum: Einsum) -> DotPlan:
        """A contraction as one tl.dot: a key tile's scores over a feature (QK = Q K^T:
        row tile times key tile), or a sum over the keys of a key tile times a key tile
        over a feature (AV += A V). NotFusable where its factors do not split so."""
        left, right, after = (self._score_operands(einsum)
                              if self.kinds[einsum.tensor] is Role.STREAM_DOT
                              else self._accumulator_operands(einsum))
        rounded = sum(not self._exact_operand(side) for side in (left, right))
        return DotPlan(einsum.tensor, tuple(left), tuple(right), tuple(after), rounded)

    def _tile_variables(self, factor: ir.Expr) -> set[str]:
        return set(ir.index_vars(factor)) - set(self.batch) - {self.loop}

    def _score_operands(self, einsum: Einsum) -> tuple[list, list, list]:
        """sum over a feature of (row-side factors) * (key-side factors) * scalars."""
        (feature,) = einsum.reduced
        row_side, key_side, other = [], [], []
        for factor in ir.product_factors(einsum.body):
            variables = self._tile_variables(factor)
            if variables <= {self.row, feature} and feature in variables:
                row_side.append(factor)
            elif variables <= {self.stream, feature} and feature in variables:
                key_side.append(factor)
            elif feature not in variables:
                other.append(factor)
            else:
                raise NotFusable(f"{einsum.tensor}: a factor over both sides of the product")
        if not row_side or not key_side:
            raise NotFusable(f"{einsum.tensor}: not a product of a row tile and a key tile")
        return row_side, key_side, other

    def _accumulator_operands(self, einsum: Einsum) -> tuple[list, list, list]:
        """sum over the keys of (key tile factors) * (factors over key and feature)."""
        feature = self.layouts[einsum.tensor][1]
        tile_side, key_side = [], []
        for factor in ir.product_factors(einsum.body):
            variables = self._tile_variables(factor)
            if variables <= {self.row, self.stream}:
                tile_side.append(factor)
            elif variables <= {self.stream, feature}:
                key_side.append(factor)
            else:
                raise NotFusable(f"{einsum.tensor}: not a stream tile times a key tile")
        if not key_side:
            raise NotFusable(f"{einsum.tensor}: no key tile to contract with")
        return tile_side, key_side, []

    def _exact_operand(self, factors: list) -> bool:
        """An operand that is a single read of an input: exact in the inputs' dtype (an
        earlier stage's float32 buffer is not: it is rounded to the dot's precision)."""
        if len(factors) != 1 or not isinstance(factors[0], ir.Read):
            return False
        tensor = self.cascade.tensors.get(factors[0].tensor)
        return tensor is not None and tensor.is_input and not tensor.buffer

    def _buffered(self, dots) -> bool:
        """Whether a dot reads an earlier stage's buffer: float32 values, which a float16
        tile could not hold (above 65504: inf)."""
        return any(self.cascade.tensors[read.tensor].buffer for dot in dots
                   for factor in (*dot.left, *dot.right) for read in ir.reads(factor))

    # ---------------------------------------------------------------- the schedule
    def kernel_schedule(self, name: str) -> KernelSchedule:
        """The decisions as data, before anything is printed: roles, loops, passes with
        their proved bounds, the contractions computed as dots (and their rounded
        operands), why a split's steps are (not) skipped."""
        cascade = self.cascade
        plan = self.pass_plan()
        # What the kernel computes: every per-row value and reduction, and the key tiles
        # some pass needs (a split stream computes every tile value in its one loop).
        tiles = {e.tensor for _, _, needed in plan for e in needed}
        live = [e for e in cascade.einsums
                if not self.kinds[e.tensor].on_key_tile or e.tensor in tiles]
        uses_dot = any(self.kinds[e.tensor].uses_dot for e in live)
        least = "a power of two >= 16" if uses_dot else "a power of two"
        tile = f"{self.stream}_BLOCK"
        skipping = None
        if self.loop is not None:
            outer = cascade.var_rank(self.loop)
            loops = (Loop(self.loop, outer, LoopKind.SPLIT_STEPS, tile, (self.loop,)),)
            if self.tile_tunable:
                key_knob = Knob(tile, self.tile, least)
            else:
                factor = f"the split factor {cascade.var_rank(self.stream)} = {self.factor}"
                if self.padded:
                    factor += f", padded to {self.tile} lanes (those at {self.stream} >= " \
                              f"{self.factor} masked)"
                key_knob = Knob(tile, self.tile, f"{factor} of the cascade", fixed=True)
            ((_, reductions, _),) = plan
            bounds, skipping = self.split_skipping(reductions)
            passes = (Pass(1, tuple(e.tensor for e in reductions),
                           tuple(e.tensor for e in plan[0][2]), bounds),)
            # The one loop computes each per-step value in dataflow order.
            in_order = [e for e in cascade.einsums if self.kinds[e.tensor].uses_dot]
        else:
            loops = tuple(Loop(self.stream, cascade.var_rank(self.stream), LoopKind.KEY_TILES,
                               tile, (self.stream,)) for _ in range(self.passes.passes))
            key_knob = Knob(tile, BLOCK_M, least)
            passes = tuple(Pass(number, tuple(e.tensor for e in reductions),
                                tuple(e.tensor for e in tiles),
                                self.masking_offsets(reductions))
                           for number, reductions, tiles in plan)
            # Each pass computes its key tiles, then its accumulators.
            in_order = [e for _, reductions, needed in plan for e in needed + reductions
                        if self.kinds[e.tensor].uses_dot]
        dots = tuple(self.dot_plan(e) for e in dict.fromkeys(in_order))
        splits = None
        if self.loop is None and len(passes) == 1 and not passes[0].bounds and \
                set(cascade.outputs) <= set(passes[0].accumulates) and \
                all(cascade.einsum(t).reduce_op == "sum" for t in passes[0].accumulates):
            # Sums of the keys, stored as they are: key ranges add up (linear
            # attention's K^T V): the programs of a row tile may split the keys.
            splits = f"{self.stream}_SPLITS"
        return KernelSchedule(
            name=name, form=Form.SPLIT if self.loop is not None else Form.ATTENTION,
            batch=tuple(self.batch), row=self.row, loops=loops, held=tuple(self.features),
            tensors=tuple(TensorPlan(e.tensor, self.kinds[e.tensor],
                                     self.layouts[e.tensor]) for e in cascade.einsums),
            passes=passes, inputs=loaded_inputs(cascade, live), outputs=tuple(cascade.outputs),
            scalars=scalars(cascade, live),
            stores=tuple(Store(o, frozenset(self.row_masks.get(o, ())))
                         for o in cascade.outputs),
            knobs=(Knob(f"{self.row}_BLOCK", BLOCK_P, least), key_knob),
            uses_dot=uses_dot, dots=dots, skipping=skipping, splits=splits,
            buffered_dots=self._buffered(dots), group=self.group)


def padded_tile(factor: int, uses_dot: bool) -> int:
    """The lanes of a step of a spec's split by `factor`: the factor itself where it is a
    tile (a power of two, at least 16 where tl.dot takes it), else the next such size.
    Landmark attention's blocks of 50 keys, or FuseMax's fixture splitting by 4, then run
    fused at the cost of the masked lanes (docs/codegen.md)."""
    tile = 1 << max(factor - 1, 0).bit_length()
    return max(tile, 16) if uses_dot else tile
