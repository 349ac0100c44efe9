"""The Cascade IR: ranks, tensors and Einsums, checked and in dataflow order.

A `Cascade` is the single source of truth for every later stage: analyses read it,
rewrites return a new one, code generators read a schedule derived from it. It is built
from a syntax tree by `einsumattn.ir.build` and never refers back to the text, except
for spans used in messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import sympy

from ..diagnostics import Source, Span
from .expr import Expr, Read, index_vars, reads
from .graph import Digraph


@dataclass(frozen=True)
class Rank:
    """A rank (dimension). `size` is symbolic: a Symbol for a rank bound at call time, an
    Integer for a fixed one, an expression in other sizes for the parts of a split and
    for a dim sized by other dims (`dims P = M, G = H // KH`: M, floor(H/KH))."""

    name: str
    size: sympy.Expr
    fixed: int | None = None
    split_of: str | None = None  # the parent rank, for the two parts of a split
    span: Span | None = field(default=None, compare=False, repr=False)
    # A dim sized by other dims: its definition as written (Dim, integer Const and the
    # ops + - * // neg), which binding evaluates and the printer prints back. Its size
    # is computed, never bound from an input (LANGUAGE.md 1.1).
    definition: Expr | None = None

    @property
    def sized(self) -> bool:
        """Whether the rank's size is computed from other dims (`dims P = M`)."""
        return self.definition is not None

    @property
    def var(self) -> str:
        """The index variable that ranges over this rank: its lower-case name."""
        return self.name.lower()


@dataclass(frozen=True)
class Split:
    """`split M -> M1, M0 by 64`: m = m1*M0 + m0, M0 = factor, M1 = ceil(M / M0)."""

    parent: str
    outer: str
    inner: str
    factor: int | str  # an integer, or the name of a dim or param
    span: Span | None = field(default=None, compare=False, repr=False)
    # A split a rewrite made to tile the rank (the online max-shift's key tiles): M0 is
    # then a knob of the schedule, a symbol every analysis and proof treats as any
    # positive size, bound per call (by the kernel's key tile), `factor` its default.
    # Every value gives the same result: the parts partition the rank.
    tunable: bool = False


@dataclass(frozen=True)
class ParamDecl:
    name: str
    default: Expr | None  # None: the param is required
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Tensor:
    """A tensor: an input or the result of one Einsum. An iterative tensor's extent at
    its iterative position is the rank's size + 1 (positions 0..X)."""

    name: str
    ranks: tuple[str, ...]
    is_input: bool
    iterative: int | None = None
    span: Span | None = field(default=None, compare=False, repr=False)
    # An input of a stage kernel that an earlier stage computed (schedule/stages.py):
    # float32 in memory, its values not bounded by the inputs' dtype.
    buffer: bool = False
    # An input the forward saved that is at least every value of the named tensor over
    # the rank its max reduced (a log-sum-exp statistic, transform/backward.py rule 3:
    # max + log(sum of exp(x - max)) >= max, the sum being at least its max's term 1):
    # an exponential shifted by it follows a max-shift (schedule/shifts.py).
    bounds: str | None = None

    @property
    def is_scalar(self) -> bool:
        return not self.ranks


@dataclass(frozen=True)
class Einsum:
    """One Einsum: tensor[indices] = reduce_op[reduced] body where filter.

    `indices` are the left side's index variables in order; for a recurrence, the
    variable at position `iterative` is x in `T[..., x+1, ...]`, and `init` gives
    position 0. With no reduction, `reduce_op` is None and `reduced` is empty."""

    tensor: str
    indices: tuple[str, ...]
    body: Expr
    reduce_op: str | None = None
    reduced: tuple[str, ...] = ()
    filter: Expr | None = None
    iterative: int | None = None
    init: Expr | None = None
    explicit_reduction: bool = field(default=False, compare=False)
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def iter_var(self) -> str | None:
        return None if self.iterative is None else self.indices[self.iterative]

    @property
    def variables(self) -> tuple[str, ...]:
        """The iteration space: left variables, then reduced ones."""
        return self.indices + self.reduced

    def accesses(self) -> list[Read]:
        """Every tensor read of the body, filter and init, in order."""
        # Computed once per Einsum (it is immutable): the analyses ask for every rank,
        # and walking the expressions each time made them quadratic in the ranks.
        found = self.__dict__.get("_accesses")
        if found is None:
            found = tuple(read for expr in (self.body, self.filter, self.init)
                          if expr is not None for read in reads(expr))
            object.__setattr__(self, "_accesses", found)
        return list(found)

    @property
    def reads(self) -> list[str]:
        """Tensors read by the body, filter and init, in order of first appearance."""
        found = self.__dict__.get("_reads")
        if found is None:
            found = tuple(dict.fromkeys(read.tensor for read in self.accesses()))
            object.__setattr__(self, "_reads", found)
        return list(found)

    @property
    def used_vars(self) -> list[str]:
        seen: dict[str, None] = {}
        for expr in (self.body, self.filter):
            if expr is not None:
                for var in index_vars(expr):
                    seen.setdefault(var, None)
        return list(seen)


@dataclass(frozen=True)
class Cascade:
    """A checked cascade. Frozen: a stage that changes it builds a new one
    (`dataclasses.replace`, `Cascade(...)`), so analyses can be memoized on the object
    (ir/memo.py). The dicts it holds are never changed after `build` either."""

    # eq compares fields; hashing by value would hash the dicts: no hash.
    __hash__ = None

    name: str
    ranks: dict[str, Rank]
    splits: tuple[Split, ...]
    params: dict[str, ParamDecl]
    tensors: dict[str, Tensor]
    einsums: tuple[Einsum, ...]  # in dataflow (topological) order
    outputs: tuple[str, ...]
    source: Source | None = field(default=None, repr=False)
    # The `attention NAME` statement (None when the name is the file's stem): where a
    # name that cannot name the generated module is reported.
    name_span: Span | None = field(default=None, compare=False, repr=False)
    # Lookup tables, rebuilt when `ranks` or `einsums` changed: analyses look variables
    # and Einsums up per access, and a scan each time made them quadratic in the ranks.
    _rank_by_var: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _einsum_position: dict = field(default_factory=dict, init=False, repr=False,
                                   compare=False)
    # Results of the analyses memoized on this cascade (ir/memo.py).
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # Producer -> consumer, derived from the tensors and Einsums (never passed in, so a
    # `dataclasses.replace` that changes the Einsums cannot keep a stale one).
    graph: Digraph = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "graph", dataflow_graph(self.tensors.values(),
                                                         self.einsums))

    # --------------------------------------------------------------- lookups
    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors.values() if t.is_input)

    def einsum(self, tensor: str) -> Einsum:
        position = self._einsum_position.get(tensor)
        if position is None or position >= len(self.einsums) or \
                self.einsums[position].tensor != tensor:
            object.__setattr__(self, "_einsum_position",
                               {e.tensor: i for i, e in enumerate(self.einsums)})
            position = self._einsum_position.get(tensor)
            if position is None:
                raise KeyError(tensor)
        return self.einsums[position]

    def rank_of_var(self, var: str) -> Rank:
        rank = self._rank_by_var.get(var)
        if rank is None or self.ranks.get(rank.name) is not rank:
            object.__setattr__(self, "_rank_by_var", {r.var: r for r in self.ranks.values()})
            rank = self._rank_by_var.get(var)
            if rank is None:
                raise KeyError(var)
        return rank

    def var_rank(self, var: str) -> str:
        return self.rank_of_var(var).name

    def split_of(self, rank: str) -> Split | None:
        """The split that `rank` is a part of, if any."""
        for split in self.splits:
            if rank in (split.outer, split.inner):
                return split
        return None

    def root_rank(self, rank: str) -> str:
        """The unsplit rank that `rank` is (a part of)."""
        split = self.split_of(rank)
        while split is not None:
            rank = split.parent
            split = self.split_of(rank)
        return rank

    def fresh_name(self, base: str, taken: set[str] = frozenset()) -> str:
        """`base`, or `base2`, `base3`, ... : a name no tensor, rank, param or variable
        has (nor any in `taken`), in either case."""
        used = set(self.tensors) | set(self.ranks) | set(self.params) | \
            {r.var for r in self.ranks.values()} | set(taken)
        name, number = base, 2
        while name in used or name.lower() in used:
            name, number = f"{base}{number}", number + 1
        return name

    def extent(self, tensor: str, position: int) -> sympy.Expr:
        """The symbolic extent of a tensor at a position (size + 1 for an iterative one)."""
        t = self.tensors[tensor]
        size = self.ranks[t.ranks[position]].size
        return size + 1 if t.iterative == position else size

    def has_input_over(self, ranks, *, more: bool = False) -> bool:
        """Whether an input (not an earlier stage's buffer) has every rank in `ranks`
        (and, with `more`, others too): a tensor over `ranks` is then no larger than
        that input, a value of it per row or per key rather than per pair."""
        ranks = set(ranks)
        return any(ranks < set(t.ranks) if more else ranks <= set(t.ranks)
                   for t in self.inputs if not t.buffer)

    def consumers(self, tensor: str) -> list[str]:
        return list(self.graph.successors(tensor))

    def producers(self, tensor: str) -> list[str]:
        return [p for p in self.graph.predecessors(tensor) if p != tensor]


def at_default_tiles(cascade: Cascade) -> Cascade:
    """The cascade with each tunable split's tile fixed at its default: what its `.attn`
    text states (the language has no tunable split; the text computes the same values)."""
    tunable = [s for s in cascade.splits if s.tunable]
    if not tunable:
        return cascade
    ranks = dict(cascade.ranks)
    for split in tunable:
        inner, outer = ranks[split.inner], ranks[split.outer]
        ranks[split.inner] = Rank(inner.name, sympy.Integer(split.factor), split.factor,
                                  inner.split_of, inner.span)
        ranks[split.outer] = Rank(outer.name, sympy.ceiling(ranks[split.parent].size /
                                                            split.factor),
                                  outer.fixed, outer.split_of, outer.span)
    splits = tuple(replace(s, tunable=False) for s in cascade.splits)
    return Cascade(cascade.name, ranks, splits, cascade.params, cascade.tensors,
                   cascade.einsums, cascade.outputs, cascade.source, cascade.name_span)


def dataflow_graph(tensors: Iterable[Tensor], einsums: Iterable[Einsum]) -> Digraph:
    """Producer -> consumer graph over tensors. A recurrence's read of itself is a
    self-loop; every other cycle is rejected when the IR is built."""
    graph = Digraph()
    for tensor in tensors:
        graph.add_node(tensor.name)
    for einsum in einsums:
        for name in einsum.reads:
            graph.add_edge(name, einsum.tensor)
    return graph
