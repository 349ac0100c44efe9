"""The schedule as data: frozen, typed records of what each fused kernel computes and
how, decided before any code is printed. Emitters read these; tests, `einsumattn check`
and the benchmarks read them from the generated module's SCHEDULE (`as_data`).

A kernel's schedule names its grid (the batch ranks, one point each, and the row rank,
in tiles of a knob), its loops (variable, extent, kind, tile), the ranks held whole on
chip, the role and layout of every tensor, the passes with what each recomputes and
accumulates, the proved bounds of the key loops, the masks at its stores as sets of
conditions, and its knobs with their defaults and constraints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from ..ir.expr import to_text


class Role(enum.Enum):
    """What a tensor is inside a fused kernel."""

    ROW = "row"                        # a per-row value in registers (before/after loops)
    STREAM = "stream"                  # a tile over (rows, key tile), elementwise
    STREAM_DOT = "stream-dot"          # a tile over (rows, key tile): tl.dot over a feature
    ACCUMULATE = "accumulate"          # reduced over the keys across tiles (tl.sum/max/min)
    DOT_ACCUMULATE = "dot-accumulate"  # summed over the keys with a key tile (tl.dot)
    TILE_REDUCE = "tile-reduce"        # split stream: reduced over this step's tile
    TILE_DOT = "tile-dot"              # split stream: this step's tile times a key tile
    TILE_ROW = "tile-row"              # split stream: a per-row value of this step
    CARRIED = "carried"                # a recurrence carried in registers across steps
    STEP = "step"                      # loop schedule: a value of one recurrence step
    REDUCE = "reduce"                  # loop schedule: reduced over the flattened tiles
    POINTS = "points"                  # unfused: a value at the program's points, stored

    @property
    def on_key_tile(self) -> bool:
        """A tile over the keys of the current tile (recomputed where it is needed)."""
        return self in (Role.STREAM, Role.STREAM_DOT)

    @property
    def uses_dot(self) -> bool:
        return self in (Role.STREAM_DOT, Role.DOT_ACCUMULATE, Role.TILE_DOT)

    @property
    def accumulates(self) -> bool:
        """Reduced across the tiles of a loop into a per-row value."""
        return self in (Role.ACCUMULATE, Role.DOT_ACCUMULATE, Role.REDUCE)


class Form(enum.Enum):
    """Which fused schedule a kernel follows."""

    ATTENTION = "attention"   # passes over key tiles (schedule/lower_attention.py)
    SPLIT = "split"           # one loop over the outer part of a split key rank
    TILES = "tiles"           # the loop schedule: flattened tiles (schedule/loops.py)
    STEPS = "steps"           # the loop schedule: recurrence steps in order
    EINSUM = "einsum"         # the unfused schedule: one Einsum (backends/triton_unfused.py)


class LoopKind(enum.Enum):
    KEY_TILES = "key tiles"                 # tiles of the streamed rank, one loop per pass
    SPLIT_STEPS = "split steps"             # the outer part of a split, its inner part the tile
    RECURRENCE_STEPS = "recurrence steps"   # one step at a time, in order
    FLAT_TILES = "flat tiles"               # ranks flattened and taken in tiles


@dataclass(frozen=True)
class Knob:
    """A tuning knob of a kernel: its default and what values it takes. `fixed`: the
    spec decides it (a split's factor), so a tuner must leave it."""

    name: str
    default: int
    constraint: str
    fixed: bool = False


@dataclass(frozen=True)
class Loop:
    var: str                  # the loop's variable
    extent: str               # the rank it runs over (a product of ranks when flattened)
    kind: LoopKind
    tile: str | None = None   # the knob its tile is, if it moves by tiles
    over: tuple[str, ...] = ()  # the index variables it covers (several when flattened)


class Bound(NamedTuple):
    """A proved bound of a key loop for a row tile: the keys a row p sees satisfy
    key <= p + offset ('upper') or key >= p + offset ('lower'). `offset` is a sympy
    expression in the spec's sizes and params (a window W: `1 - W`), an integer without
    them. Or, with `function` (an IR expression of the row that never decreases as the
    row grows: a clamped window's start), key <= function(p) or key >= function(p), and
    `offset` 0 (schedule/bounds.py's monotone_bound). A lower bound with `sinks` (a sympy
    expression of sizes and params) also lets every row see the keys below it: `key >=
    p + offset or key < sinks` (bounds.py's either_bound), two ranges of key tiles. An
    upper bound with `open_rows` (the same kind of expression) holds only for the rows
    from it on: a row below it sees every key (`key <= p + offset or p < open_rows`,
    either_row_bound: the sinks as the backward's dK/dV kernel sees them)."""

    side: str
    offset: object      # sympy.Expr (schedule/bounds.py's stream_bound)
    function: object = None
    sinks: object = None
    open_rows: object = None


@dataclass(frozen=True)
class DotPlan:
    """A contraction computed as one matrix product (tl.dot): the factors (IR
    expressions) of its left operand (the row side; for an accumulator over the keys, the
    key tile's scores), of its right operand (the key side), and the factors multiplied
    into the product afterwards. `rounded`: how many of the two operands are computed
    values, which enter the dot rounded to the inputs' precision (an operand that is one
    read of an input is exact); the check's tolerance reads it (verify.py)."""

    tensor: str
    left: tuple
    right: tuple
    after: tuple = ()
    rounded: int = 0
    # A sum under a mask (one operand only its 0/1 conditions: the chunk form's prefix
    # sums of log-gates): run in float32, nothing rounded.
    exact: bool = False


@dataclass(frozen=True)
class Pass:
    number: int
    accumulates: tuple[str, ...]    # the reductions finished by this pass
    recomputes: tuple[str, ...]     # the key tiles it computes again (nothing is buffered)
    bounds: tuple[Bound, ...] = ()  # empty: every tile


@dataclass(frozen=True)
class Store:
    """An output's store: the conditions under which a point is written as its value
    (else 0), beside the tile's own lanes. A frozenset: each condition once."""

    tensor: str
    absent_unless: frozenset = frozenset()


@dataclass(frozen=True)
class TensorPlan:
    name: str
    role: Role
    layout: tuple[str, ...]   # its tile's dimensions, in order


@dataclass(frozen=True)
class Group:
    """Query heads packed into the row tile (GQA): the batch variable `var` (h) is read
    by every key-side input only as its group, `var * KH // H` (`rank` KH), so the
    programs run over the groups (`group`, kh, on grid axis 1 in place of h) and each
    row tile holds the rows of every query head of its group: its K and V tiles are
    loaded once per group, not once per head. Row r of the packed rows is query row
    r // G of head first(kh) + r % G, G = ceil(H / KH) the largest group, first(kh) =
    ceil(kh H / KH) (uneven groups leave the rows past their last head dead)."""

    var: str            # the query-head variable, h
    group: str          # the program's group variable, kh
    rank: str           # the group's rank, KH
    extent: str         # the query heads' rank, H

    def programs(self, batch) -> tuple[str, ...]:
        """The batch variables the programs run over: the group in the head's place."""
        return tuple(self.group if v == self.var else v for v in batch)


@dataclass(frozen=True)
class KernelSchedule:
    name: str
    form: Form
    batch: tuple[str, ...]           # grid axis 1: one point of each
    row: str                         # grid axis 0: tiles of the row knob
    loops: tuple[Loop, ...]
    held: tuple[str, ...]            # ranks held whole in a tile
    tensors: tuple[TensorPlan, ...]  # in dataflow order
    passes: tuple[Pass, ...]
    inputs: tuple[str, ...]          # the inputs the kernel loads
    outputs: tuple[str, ...]
    scalars: tuple[str, ...]         # the sizes and params it receives
    stores: tuple[Store, ...]
    knobs: tuple[Knob, ...]
    uses_dot: bool
    dots: tuple[DotPlan, ...] = ()   # the contractions computed as tl.dot, in emission order
    skipping: str | None = None      # why key tiles are (not) skipped, split form
    # Grid axis 2: programs per row tile along the key rank, this knob's number of them
    # (chosen per call), each summing a range of the keys into the outputs (atomic adds):
    # where the kernel's one pass only sums and stores its sums. None: one program.
    splits: str | None = None
    # Split-KV (schedule/split_kv.py): this knob's number of programs per row tile split
    # the steps, a partial kernel storing their states and a merge kernel finishing;
    # chosen per call (one: this kernel alone). None: no split-KV form.
    kv_splits: str | None = None
    # A dot reads an earlier stage's float32 buffer: with float16 inputs the kernel's
    # dots run in float32 (the module's _buffer_dot), bfloat16 holds float32's range.
    buffered_dots: bool = False
    # The query heads of a group packed with the rows (GQA): None for one head a program.
    group: Group | None = None
    # Triton launch options the schedule pins ((name, value) pairs: num_warps) where the
    # configuration is not chosen per call (the chunk form's: schedule/loops.py).
    launch: tuple[tuple[str, int], ...] = ()
    description: str = ""
    _roles: dict = field(default=None, compare=False, repr=False)

    @property
    def carried(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors if t.role is Role.CARRIED)

    @property
    def rounded(self) -> tuple[tuple[str, int], ...]:
        """Einsum -> how many of its tl.dot operands are computed values (rounded to the
        inputs' precision in half-precision runs): the check's tolerance reads it."""
        return tuple((dot.tensor, dot.rounded) for dot in self.dots if dot.rounded)

    def dot(self, tensor: str) -> DotPlan:
        return next(dot for dot in self.dots if dot.tensor == tensor)

    @property
    def accumulated(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors if t.role.accumulates)

    def role(self, tensor: str) -> Role:
        if self._roles is None:
            object.__setattr__(self, "_roles", {t.name: t.role for t in self.tensors})
        return self._roles[tensor]

    def with_(self, **changes) -> "KernelSchedule":
        return replace(self, _roles=None, **changes)


@dataclass(frozen=True)
class Schedule:
    """The fused kernels of a cascade, in launch order, and why it was cut (None for
    one kernel) or why it does not fuse at all (`not_fused`; then no kernels)."""

    kernels: tuple[KernelSchedule, ...]
    cut: str | None = None
    not_fused: str | None = None
    unfused: tuple[KernelSchedule, ...] = ()   # the unfused schedule: one kernel per Einsum


def _condition_text(condition) -> str:
    """A presence condition in the spec's syntax (for the data, not for a kernel)."""
    if condition.kind == "absent":
        return f"{to_text(condition.read)} is present"
    return to_text(condition.expr)


def kernel_data(kernel: KernelSchedule, spell=str) -> dict:
    """A kernel's schedule as plain dicts, tuples, strings and numbers (what a generated
    module's SCHEDULE holds); `spell` turns a generated name into the spec's."""
    def names(items) -> tuple:
        return tuple(spell(item) for item in items)
    return {
        "name": kernel.name,
        "form": kernel.form.value,
        "grid": {"batch": names(kernel.batch), "row": spell(kernel.row),
                 "row_tile": kernel.knobs[0].name},
        "loops": tuple({"var": spell(loop.var), "extent": spell(loop.extent),
                        "kind": loop.kind.value, "tile": loop.tile, "over": names(loop.over)}
                       for loop in kernel.loops),
        "held": names(kernel.held),
        "tensors": {spell(t.name): {"role": t.role.value, "layout": names(t.layout)}
                    for t in kernel.tensors},
        "passes": tuple({"number": p.number, "accumulates": names(p.accumulates),
                         "recomputes": names(p.recomputes),
                         "bounds": tuple((b.side, spell(str(b.offset)) if b.function is None
                                          else spell(to_text(b.function)))
                                         + (() if b.sinks is None else
                                            ("or below", spell(str(b.sinks))))
                                         + (() if b.open_rows is None else
                                            ("but rows below", spell(str(b.open_rows))))
                                         for b in p.bounds)}
                        for p in kernel.passes),
        "inputs": names(kernel.inputs),
        "outputs": names(kernel.outputs),
        "scalars": names(kernel.scalars),
        "stores": {spell(s.tensor): tuple(sorted(spell(_condition_text(c))
                                                 for c in s.absent_unless))
                   for s in kernel.stores},
        "knobs": {k.name: {"default": k.default, "constraint": spell(k.constraint),
                           "fixed": k.fixed} for k in kernel.knobs},
        "uses_dot": kernel.uses_dot,
        "dots": len(kernel.dots),
        "rounded": {spell(name): count for name, count in kernel.rounded},
        "skipping": None if kernel.skipping is None else spell(kernel.skipping),
        "splits": kernel.splits,
        "kv_splits": kernel.kv_splits,
        "group": None if kernel.group is None else {
            "var": spell(kernel.group.var), "group": spell(kernel.group.group),
            "rank": spell(kernel.group.rank), "extent": spell(kernel.group.extent)},
        "describe": spell(kernel.description),
    }
