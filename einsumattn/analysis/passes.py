"""Pass lower bounds per rank (FuseMax, Nayak et al. MICRO 2024, section III).

"A pass over a fiber of a rank is a traversal of every element of it. Each time an
element must be revisited after visiting every other element of that fiber, there is an
additional pass."

For a rank R, an Einsum *traverses* R when its iteration space (left or reduced
variables) holds an index variable of R or of a part of R's split. A value is *complete
only after a pass* when it comes from a full reduction of R (an Einsum that traverses R
and keeps no variable of R on its left), or from the final value of a recurrence over a
part of R (`RD[p, M1]`), or from any Einsum that reads such a value. We compute, in
dataflow order:

    ready(T)  = passes over R that must have finished before T's values exist
                (0 for inputs)
    need(E)   = max over the tensors P that E reads of ready(P)
                (a final-value read of a recurrence over R counts pass(P))
    pass(E)   = need(E) + 1                 if E traverses R
    ready(E)  = pass(E) if E fully reduces R, else need(E)

and passes(R) = max pass(E). This is DESIGN.md's working rule, with `ready` carrying a
completed reduction through Einsums that do not traverse R (X = f(GM); Y reads X and R
is still a read-read dependency). A reduction over one part of a split (m0) that keeps
the other (m1) is not a full reduction of M; a recurrence keeps its iterative variable
on the left, so it is never a full reduction of that rank: it streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.memo import per_cascade


@dataclass(frozen=True)
class Dependency:
    """A read-read dependency: `consumer` traverses `rank` again after `producer` has
    finished a full traversal of it. `via` lists the tensors the value passes through."""

    rank: str
    producer: str
    consumer: str
    via: tuple[str, ...]
    kind: str  # 'reduction' | 'final value'
    fibers: tuple[str, ...]  # the rank-indexed tensors the consumer re-reads
    new_pass: int

    def explain(self) -> str:
        what = (f"{self.producer} fully reduces {self.rank}" if self.kind == "reduction"
                else f"{self.producer}'s final value needs all of {self.rank}")
        path = f" (through {', '.join(self.via)})" if self.via else ""
        if len(self.fibers) == 1:
            again = f"re-reads {self.fibers[0]}'s {self.rank} fiber"
        elif self.fibers:
            again = f"re-reads the {self.rank} fibers of {', '.join(self.fibers)}"
        else:
            again = f"traverses {self.rank} again"
        return (f"{what}; {self.consumer} uses it{path} and {again}, "
                f"so it runs in pass {self.new_pass}")


@dataclass
class RankPasses:
    """The pass structure of one rank."""

    rank: str
    variables: tuple[str, ...]      # the index variables that traverse it
    passes: int
    pass_of: dict[str, int]          # Einsum (by tensor) -> pass, for those traversing it
    ready: dict[str, int]            # tensor -> passes finished before its values exist
    dependencies: list[Dependency] = field(default_factory=list)
    full_reductions: tuple[str, ...] = ()

    def einsums_in_pass(self, number: int) -> list[str]:
        return [name for name, p in self.pass_of.items() if p == number]


def rank_variables(cascade: Cascade, rank: str) -> tuple[str, ...]:
    """The index variables that traverse `rank`: its own and its split parts' (recursively)."""
    result = [cascade.ranks[rank].var]
    for split in cascade.splits:
        if split.parent == rank:
            result += rank_variables(cascade, split.outer)
            result += rank_variables(cascade, split.inner)
    return tuple(result)


def traverses(einsum: Einsum, variables: tuple[str, ...]) -> bool:
    return not set(variables).isdisjoint(einsum.variables)


def fully_reduces(einsum: Einsum, variables: tuple[str, ...]) -> bool:
    return traverses(einsum, variables) and set(variables).isdisjoint(einsum.indices)


def analysed_ranks(cascade: Cascade) -> list[str]:
    """Ranks worth a pass count: those some Einsum fully reduces, the ranks of splits,
    and the ranks recurrences iterate over; in declaration order."""
    # Each variable belongs to its rank's family and to those of the ranks split into
    # it: one look at each Einsum's variables finds every rank it traverses or reduces
    # (asking per rank and Einsum was quadratic in their numbers).
    families: dict[str, set[str]] = {}
    for rank in cascade.ranks:
        for var in rank_variables(cascade, rank):
            families.setdefault(var, set()).add(rank)
    traversed: set[str] = set()
    chosen: set[str] = set()
    for einsum in cascade.einsums:
        touched = set().union(*(families.get(v, ()) for v in einsum.variables))
        kept = set().union(*(families.get(v, ()) for v in einsum.indices))
        traversed |= touched
        chosen |= touched - kept
    for split in cascade.splits:
        chosen.update((split.parent, split.outer, split.inner))
    for einsum in cascade.einsums:
        if einsum.iter_var is not None:
            chosen.add(cascade.var_rank(einsum.iter_var))
    return [r for r in cascade.ranks if r in chosen and r in traversed]


@per_cascade
def analyse_rank(cascade: Cascade, rank: str) -> RankPasses:
    """The passes over `rank` (memoized: the result is shared, read it only)."""
    variables = rank_variables(cascade, rank)
    family = frozenset(variables)
    inputs = [t.name for t in cascade.inputs]
    ready: dict[str, int] = dict.fromkeys(inputs, 0)
    pass_of: dict[str, int] = {}
    # For each tensor, the dependency that set its `ready` level: (producer, kind, path).
    origin: dict[str, tuple[str, str, tuple[str, ...]] | None] = dict.fromkeys(inputs)
    full: list[str] = []
    dependencies: list[Dependency] = []
    # Tensors that can raise a reader's level: ready after a pass, or streaming (a final
    # value read). An Einsum that neither traverses the rank nor reads one of them is
    # ready at 0 at once: the common case, and the cut search of the fused schedule
    # asks for every rank of many sub-cascades.
    raising: set[str] = set()

    for einsum in cascade.einsums:
        walks = not (family.isdisjoint(einsum.indices) and family.isdisjoint(einsum.reduced))
        if not walks and raising.isdisjoint(einsum.reads):
            ready[einsum.tensor] = 0
            origin[einsum.tensor] = None
            continue
        need, cause = 0, None
        for read in einsum.accesses():
            producer = read.tensor
            if producer == einsum.tensor:
                continue  # a recurrence reading its own earlier positions
            level, why = ready[producer], origin[producer]
            if why is not None:
                why = (why[0], why[1], why[2] + (producer,) if why[0] != producer
                       else why[2])
            if producer in pass_of and pass_of[producer] > level and \
                    _final_value_read(cascade, einsum, read, variables):
                level, why = pass_of[producer], (producer, "final value", ())
            if level > need:
                need, cause = level, why
        if walks:
            pass_of[einsum.tensor] = need + 1
            raising.add(einsum.tensor)
            # Record only the dependencies that force the pass: the value reaches this
            # Einsum without passing through another Einsum that streams over the rank
            # (SD is in pass 2 because SN is; the dependency is GM -> SN).
            if need > 0 and cause is not None and not any(t in pass_of for t in cause[2]):
                producer, kind, via = cause
                fibers = tuple(dict.fromkeys(
                    r.tensor for r in einsum.accesses()
                    if r.tensor != einsum.tensor and _indexed_by(cascade, r.tensor, rank)))
                dependencies.append(Dependency(rank, producer, einsum.tensor, via, kind,
                                               fibers, need + 1))
        if walks and family.isdisjoint(einsum.indices):  # a full reduction of the rank
            full.append(einsum.tensor)
            ready[einsum.tensor] = pass_of[einsum.tensor]
            origin[einsum.tensor] = (einsum.tensor, "reduction", ())
        else:
            ready[einsum.tensor] = need
            origin[einsum.tensor] = cause
        if ready[einsum.tensor] > 0:
            raising.add(einsum.tensor)
    passes = max(pass_of.values(), default=0)
    return RankPasses(rank, variables, passes, pass_of, ready, dependencies, tuple(full))


def _indexed_by(cascade: Cascade, tensor: str, rank: str) -> bool:
    """Whether a tensor has `rank` or a part of its split among its ranks."""
    family = {cascade.var_rank(v) for v in rank_variables(cascade, rank)}
    return bool(family & set(cascade.tensors[tensor].ranks))


def _final_value_read(cascade: Cascade, einsum: Einsum, read: ir.Read,
                      variables: tuple[str, ...]) -> bool:
    """A read of a recurrence over (a part of) the rank at a position that does not move
    with the reader's own traversal: `RD[p, M1]` after the loop, not `RD[p, m1+1]`."""
    producer = cascade.tensors[read.tensor]
    if producer.is_input or producer.iterative is None:
        return False
    iter_var = cascade.einsum(read.tensor).iter_var
    if iter_var not in variables:
        return False
    position_vars = set(ir.index_vars(read.indices[producer.iterative]))
    return not position_vars & set(variables)


def analyse_passes(cascade: Cascade) -> dict[str, RankPasses]:
    """The passes of every analysed rank (a new dict of the shared, memoized results)."""
    return dict(_analyse_passes(cascade))


@per_cascade
def _analyse_passes(cascade: Cascade) -> dict[str, RankPasses]:
    return {rank: analyse_rank(cascade, rank) for rank in analysed_ranks(cascade)}
