"""Buffer bounds implied by the passes over a rank.

A tensor produced before a pass boundary and read after it must stay live across the
boundary. If it is indexed by the streamed rank R, its minimum live footprint is a whole
fiber of R: buffer it on chip, or spill it to memory and read it again (traffic that
grows with R). Footprints are counted per *program*: one point of each batch-like
parallel rank, and a tile of the innermost parallel rank (P0 query rows for attention),
the way a GPU kernel assigns work. Within a pass, the working state counts what one
step of the traversal holds: the current tile of a split's inner part (M0), one element
of an unsplit streamed rank, the current and next positions of a recurrence, and the
accumulators of reductions over R. For a 1-pass cascade that state contains no size of
R: on-chip memory does not grow with the sequence.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import sympy

from ..ir import Cascade
from ..ir.build import size_symbol
from ..ir import expr as ir
from .formulas import maximum, tidy
from ..ir.memo import per_cascade
from .passes import RankPasses, analyse_rank


@dataclass(frozen=True)
class LiveTensor:
    name: str
    footprint: sympy.Expr      # elements per program
    spill_bytes: sympy.Expr    # extra traffic if spilled instead: write once, read per pass
    passes_reading: tuple[int, ...]


@dataclass(frozen=True)
class Boundary:
    after_pass: int
    live: tuple[LiveTensor, ...]
    reread_inputs: tuple[tuple[str, sympy.Expr], ...]  # (input, bytes read again)

    @property
    def footprint(self) -> sympy.Expr:
        return sympy.Add(*(t.footprint for t in self.live))

    @property
    def spill_bytes(self) -> sympy.Expr:
        return sympy.Add(*(t.spill_bytes for t in self.live))


@dataclass(frozen=True)
class Footprints:
    """The formulas of a rank's buffers."""

    boundaries: tuple[Boundary, ...]
    pass_state: dict[int, sympy.Expr]
    onchip_state: sympy.Expr
    rank_symbols: frozenset        # the sizes of the streamed rank and its parts


@dataclass(eq=False)
class RankBuffers:
    """What one program of a pass over `rank` holds. The ranks and tiles of a program
    are computed at once; the footprint formulas when first read (by `derive`): the
    fused schedule asks only for the parallel ranks, of every stage it tries, and the
    formulas' `Max` over the passes costs sympy proofs."""

    rank: str
    parallel: tuple[str, ...]          # ranks one program handles a point or a tile of
    tile: dict[str, sympy.Expr]        # parallel rank -> points per program
    derive: Callable[[], Footprints] = field(repr=False)

    @functools.cached_property
    def _footprints(self) -> Footprints:
        return self.derive()

    @property
    def boundaries(self) -> list[Boundary]:
        return list(self._footprints.boundaries)

    @property
    def pass_state(self) -> dict[int, sympy.Expr]:
        return dict(self._footprints.pass_state)

    @property
    def onchip_state(self) -> sympy.Expr:
        return self._footprints.onchip_state

    @property
    def grows_with_rank(self) -> bool:
        """Whether the on-chip state per program depends on the streamed rank's size."""
        return bool(self._footprints.rank_symbols & self.onchip_state.free_symbols)

    def __eq__(self, other) -> bool:
        if not isinstance(other, RankBuffers):
            return NotImplemented
        return (self.rank, self.parallel, self.tile, self._footprints) == \
            (other.rank, other.parallel, other.tile, other._footprints)

    __hash__ = None


def tile_symbol(cascade: Cascade, rank: str) -> sympy.Symbol:
    # P0 for P, as in FlashAttention's papers; M0_t where M0 is already a rank's name.
    name = f"{rank}0" if not rank[-1].isdigit() else f"{rank}_t"
    if name in cascade.ranks:
        name = f"{rank}_t"
    return size_symbol(name)


def analyse_buffers(cascade: Cascade, passes: RankPasses, bytes_per_element: int) -> RankBuffers:
    """The buffers implied by `passes` (memoized when `passes` is the cascade's own,
    memoized analysis of its rank: the result is shared, read it only)."""
    if analyse_rank(cascade, passes.rank) is passes:
        return _memoized_buffers(cascade, passes.rank, bytes_per_element)
    return _buffers(cascade, passes, bytes_per_element)


@per_cascade
def _memoized_buffers(cascade: Cascade, rank: str, bytes_per_element: int) -> RankBuffers:
    return _buffers(cascade, analyse_rank(cascade, rank), bytes_per_element)


def _buffers(cascade: Cascade, passes: RankPasses, bytes_per_element: int) -> RankBuffers:
    rank = passes.rank
    family = {cascade.var_rank(v) for v in passes.variables}
    streaming = [e for e in cascade.einsums if e.tensor in passes.pass_of]
    # Sequential ranks are loops around the traversal, one point per step: the other
    # parts of the same split (M1 while analysing M0), and ranks recurrences iterate.
    sequential = {cascade.var_rank(e.iter_var) for e in cascade.einsums
                  if e.iter_var is not None} - family
    part = rank
    while cascade.split_of(part) is not None:
        split = cascade.split_of(part)
        if split.inner == part:
            sequential.add(split.outer)  # analysing M0: M1 is the loop around each tile
        sequential.add(split.parent)
        part = split.parent

    # Parallel ranks: on the left of every Einsum that streams over the rank.
    common = None
    for einsum in streaming:
        ranks = [cascade.var_rank(v) for v in einsum.indices]
        common = ranks if common is None else [r for r in common if r in ranks]
    parallel = tuple(r for r in (common or []) if r not in family and r not in sequential)
    tile = {r: sympy.Integer(1) for r in parallel}
    if parallel:
        tile[parallel[-1]] = tile_symbol(cascade, parallel[-1])
    derive = functools.partial(_footprints, cascade, passes, bytes_per_element,
                               frozenset(family), frozenset(sequential), dict(tile))
    return RankBuffers(rank, parallel, tile, derive)


def _footprints(cascade: Cascade, passes: RankPasses, bytes_per_element: int,
                family: frozenset[str], sequential: frozenset[str],
                tile: dict[str, sympy.Expr]) -> Footprints:
    """The footprint formulas of the passes over a rank, for programs that hold `tile`
    of the parallel ranks (`family`: the rank and its split parts; `sequential`: ranks
    looped around the traversal)."""
    streaming = [e for e in cascade.einsums if e.tensor in passes.pass_of]

    def size(r: str) -> sympy.Expr:
        return cascade.ranks[r].size

    def extent(var: str, fiber: bool) -> sympy.Expr:
        """Points of one variable held per program: a whole fiber of the rank, or one
        step of the traversal (the inner tile of a split, else one element)."""
        r = cascade.var_rank(var)
        if r in tile:
            return tile[r]
        if r in sequential:
            return sympy.Integer(1)
        if r in family:
            split = cascade.split_of(r)
            inner_tile = split is not None and split.inner == r
            return size(r) if fiber or inner_tile else sympy.Integer(1)
        return size(r)

    def access_footprint(indices, iterative: int | None, fiber: bool) -> sympy.Expr:
        # One product at the end: multiplying in one factor at a time re-sorts the
        # product each time (quadratic in the number of ranks).
        factors = []
        for position, index in enumerate(indices):
            if position == iterative:
                factors.append(sympy.Integer(2 if not fiber else 1))  # current and next
                continue
            factors += [extent(var, fiber) for var in ir.index_vars(index)]
        return sympy.Mul(*factors)

    def output_footprint(tensor: str, fiber: bool) -> sympy.Expr:
        einsum = cascade.einsum(tensor)
        return access_footprint([ir.Index(v) for v in einsum.indices], einsum.iterative,
                                fiber)

    def input_footprint(tensor: str, fiber: bool) -> sympy.Expr:
        """The largest access of an input by the streaming Einsums."""
        found = [access_footprint(read.indices, None, fiber) for e in streaming
                 for read in e.accesses() if read.tensor == tensor]
        return maximum(*found) if found else sympy.Integer(0)

    def footprint(tensor: str, fiber: bool) -> sympy.Expr:
        return input_footprint(tensor, fiber) if cascade.tensors[tensor].is_input \
            else output_footprint(tensor, fiber)

    def total(tensor: str) -> sympy.Expr:
        t = cascade.tensors[tensor]
        return sympy.Mul(*(size(r) + (1 if i == t.iterative else 0)
                           for i, r in enumerate(t.ranks)))

    # When each tensor becomes available, and which passes read it.
    produced: dict[str, int] = {t.name: 0 for t in cascade.inputs}
    for einsum in cascade.einsums:
        produced[einsum.tensor] = passes.pass_of.get(einsum.tensor, passes.ready[einsum.tensor])
    readers: dict[str, set[int]] = {name: set() for name in cascade.tensors}
    for einsum in streaming:
        for name in einsum.reads:
            if name != einsum.tensor:
                readers[name].add(passes.pass_of[einsum.tensor])

    boundaries: list[Boundary] = []
    for k in range(1, passes.passes):
        live, reread = [], []
        for name, reading in readers.items():
            later = tuple(sorted(p for p in reading if p > k))
            if not later or produced[name] > k:
                continue
            if cascade.tensors[name].is_input:
                if produced[name] == 0 and min(reading) <= k:
                    reread.append((name, total(name) * bytes_per_element))
                continue
            spill = total(name) * bytes_per_element * (1 + len(later))
            live.append(LiveTensor(name, footprint(name, fiber=True), spill, later))
        boundaries.append(Boundary(k, tuple(live), tuple(reread)))

    states, pass_state = [], {}
    for number in range(1, passes.passes + 1):
        members = [e for e in streaming if passes.pass_of[e.tensor] == number]
        names = dict.fromkeys(e.tensor for e in members)
        for einsum in members:
            for name in einsum.reads:
                if cascade.tensors[name].is_input:
                    names.setdefault(name, None)
        state = sympy.Add(*(footprint(n, fiber=False) for n in names))
        # Buffers live during this pass: those crossing the boundary into it or out of it.
        carried = {t.name: t.footprint for b in boundaries
                   if b.after_pass in (number - 1, number) for t in b.live}
        pass_state[number] = tidy(state)
        states.append(tidy(state + sympy.Add(*carried.values())))
    # One Max at the end: each Max compares its arguments, and comparing against the
    # initial 0 asks sympy to prove a long sum of sizes nonnegative.
    onchip_state = maximum(*states) if states else sympy.Integer(0)
    # A tunable split's tile is a knob, not a size of the rank: state of M0 elements
    # per program does not grow with M.
    tiles = {size_symbol(s.inner) for s in cascade.splits if s.tunable}
    rank_symbols = ({size_symbol(r) for r in family} | {
        s for r in family for s in cascade.ranks[r].size.free_symbols}) - tiles
    return Footprints(tuple(boundaries), pass_state, onchip_state, frozenset(rank_symbols))

