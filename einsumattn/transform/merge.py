"""The merge: partial states over disjoint ranges of the streamed rank, combined.

A 1-pass cascade streams its key rank M once, carrying a state: the reductions over M
(sigmoid attention's sum of sigmoid(qk) v, linear attention's K^T V) or, after rule 3,
the running max and the rescaled running sums over the key tiles. Splitting M into
ranges, computing each range's state on its own, and combining the states gives the
result of one sequential pass, if the combine is right. That is FlashDecoding's split-KV,
ring attention's merge and torch's context parallelism, each written by hand for
softmax. Here it is read off the cascade and proved:

    partial   the derived cascade over a range of M (positions start .. start + count of
              the range; masks and scores see global positions), its outputs the state
              at the end of the range
    combine   merge(a, b) of the states of two adjacent ranges, a before b
    finish    the Einsums after the loop, reading the state: the spec's outputs

The combine of each part of the state is read off the Einsum that carries it:

    sum[m] ...                    a + b        (and max, min: max(a, b), min(a, b))
    R[x+1] = max(R[x], L[x])       max(a, b)    a running max (rule 3's RG), -inf empty
    R[x+1] = R[x] + L[x]           a + b
    R[x+1] = L[x] + R[x] * C[x]    a * exp(Ga - G) + b * exp(Gb - G), where C is rule 3's
                                   rescale factor exp(G[x] - G[x+1]) of a running max G:
                                   a rescaled sum holds sum exp(s - G) w; the combined
                                   max G = max(Ga, Gb) rescales both (0 for an empty one)

and then proved with sympy, on the Einsums themselves (the combine cascade, and the loop
body evaluated on a symbolic tile of two present keys, or of none):

    identity     merge(e, a) = a = merge(a, e), e the empty state (the inits)
    associative  merge(merge(a, b), c) = merge(a, merge(b, c))
    sequential   step(merge(a, s), u) = merge(a, step(s, u)) for every tile u

The last, by induction over the tiles of b's range starting from s = e, says that the
sequential pass over a then b ends in merge(state(a), state(b)); associativity says any
tree of merges (split-KV's, a ring's) gives that state. Max and min are resolved by
taking each order of their arguments in turn (x1 >= x2 >= ... as x1 - d1 - ... with
d >= 0). A cascade whose state is none of these forms, that still takes more than one
pass, whose outputs are indexed by the streamed rank (linear attention's causal
recurrence: each output reads the state before it, a prefix combine), or that reads
keys at shifted positions (a shard would need its neighbour's keys) is refused, with
the reason.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..ir import Cascade, Einsum, Tensor
from ..ir import expr as ir
from ..ir.memo import per_cascade
from ..ir.printer import einsum_text
from .algebra import rebuild
from .edit import assemble
from .online import NEG_INF
from .states import (COMMUTATIVE, MERGE, Loop, Merge, Proof, StatePart, combine_cascade,
                     partial_cascade, positioned, reads_of, trimmed)
from .steps import Blocked

def derive_merge(cascade: Cascade, *, tile: int | None = None) -> Merge | Blocked:
    """The merge of `cascade`'s partial states over ranges of its streamed rank (the
    analysis's primary rank), derived from the cascade `rewrite` derives; or why not.
    Derived once per cascade and tile (analyze, compile --merge and the CLI's summary
    line each ask for it)."""
    from . import DEFAULT_TILE

    return _derive_merge(cascade, tile or DEFAULT_TILE)


@per_cascade
def _derive_merge(cascade: Cascade, tile: int) -> Merge | Blocked:
    from . import rewrite
    from ..analysis import analyze
    from ..analysis.passes import analyse_passes

    rank = analyze(cascade).primary_rank
    if rank is None:
        return Blocked(MERGE, cascade.name, "no rank is reduced: nothing streams")
    recurs = any(e.iter_var is not None and cascade.var_rank(e.iter_var) == rank
                 for e in cascade.einsums)
    if recurs and any(rank in cascade.tensors[o].ranks for o in cascade.outputs):
        from .prefix import derive_prefix

        return derive_prefix(cascade, rank, tile)
    for output in cascade.outputs:
        if rank in cascade.tensors[output].ranks:
            why = ("each output reads the state of the steps before it, which needs a "
                   "prefix combine of the states (LASP-2), not a merge") if recurs else \
                  (f"a range of {rank} holds only some of the outputs, and they read "
                   f"what the whole of {rank} reduces to")
            return Blocked(MERGE, output, f"the output {output} is indexed by {rank}: "
                                          f"{why}")
    ranged = positioned(cascade, rank)
    if isinstance(ranged, Blocked):
        return ranged
    located, start, count, offsets = ranged
    derived = rewrite(located, tile=tile).cascade
    passes = analyse_passes(derived)[rank].passes
    if passes > 1:
        return Blocked(MERGE, cascade.name,
                       f"{rank} still takes {passes} passes after the rewrites: a range's "
                       f"state is read by a later pass over the same range")
    loop = _loop_of(derived, rank)
    if isinstance(loop, Blocked):
        return loop
    combine = combine_cascade(derived, loop.parts)
    proofs = Proof(derived, loop, combine).run()
    if isinstance(proofs, Blocked):
        return proofs
    before_finish = [e for e in derived.einsums if e not in loop.after]
    return Merge(rank, loop.parts, partial_cascade(derived, before_finish, loop.parts), combine,
                 _finish_cascade(derived, loop), start, count, offsets,
                 _log_sum_exp(derived, loop), proofs)


# ------------------------------------------------------------------ the loop
def _loop_of(derived: Cascade, rank: str) -> Loop | Blocked:
    from ..analysis.passes import rank_variables, traverses

    variables = rank_variables(derived, rank)
    split = next((s for s in derived.splits if s.parent == rank), None)
    outer = derived.ranks[split.outer].var if split else None
    inner = derived.ranks[split.inner].var if split else derived.ranks[rank].var
    body = [e for e in derived.einsums if traverses(e, variables)]
    names = {e.tensor for e in body}
    downstream = set(names)
    after = []
    for einsum in derived.einsums:
        if einsum.tensor not in names and set(einsum.reads) & downstream:
            downstream.add(einsum.tensor)
            after.append(einsum)
    stateful = {e.tensor for e in body if e.iterative is not None}
    for einsum in body:
        if set(einsum.reads) & stateful:
            stateful.add(einsum.tensor)
    parts: dict[str, StatePart] = {}
    # An output that is itself a reduction over the rank (sigmoid attention's AV)
    # is state that the finish returns as it is.
    readers = [*after, *(Einsum(name, (), ir.Read(name, ()))
                         for name in derived.outputs if name in names)]
    for einsum in body:
        if einsum.iterative is not None:
            part = _recurrence_part(derived, einsum, outer, parts)
            if isinstance(part, Blocked):
                return part
            parts[einsum.tensor] = part
    for einsum in readers:
        for read in einsum.accesses():
            if read.tensor not in names or read.tensor in parts:
                if read.tensor in parts and \
                        derived.tensors[read.tensor].iterative is not None and \
                        not _at_end(derived, read, split):
                    return Blocked(MERGE, einsum.tensor,
                                   f"{ir.to_text(read)} is not the state at the end")
                continue
            producer = derived.einsum(read.tensor)
            if producer.reduce_op not in ("sum", "max", "min") or \
                    not set(variables) & set(producer.reduced) or \
                    set(variables) & set(producer.indices):
                return Blocked(MERGE, read.tensor,
                               f"{einsum.tensor} reads {read.tensor}, which is not "
                               f"a reduction over {rank}")
            if set(producer.reads) & stateful:
                return Blocked(MERGE, read.tensor,
                               f"{read.tensor} sums values rescaled by a running "
                               f"state")
            parts[read.tensor] = StatePart(read.tensor, producer.reduce_op,
                                           derived.tensors[read.tensor].ranks,
                                           read.tensor)
    if not parts:
        return Blocked(MERGE, derived.name, f"nothing is carried over {rank}")
    return Loop(rank, body, after, tuple(parts.values()), outer, inner, stateful)


def _at_end(derived: Cascade, read: ir.Read, split) -> bool:
    """Whether a read of a recurrence is at its last position (the tile count)."""
    position = derived.tensors[read.tensor].iterative
    index = read.indices[position]
    return split is not None and isinstance(index, ir.Dim) and index.rank == split.outer


def _recurrence_part(derived: Cascade, einsum: Einsum, outer: str | None,
                     parts: dict[str, StatePart]) -> StatePart | Blocked:
    """The kind of a recurrence over the tiles, read off its update (module docstring)."""
    name = einsum.tensor
    if outer is None or einsum.iter_var != outer:
        return Blocked(MERGE, name, f"{name} recurs over {einsum.iter_var}, not over "
                                    f"the tiles of the streamed rank")
    ranks = tuple(r for i, r in enumerate(derived.tensors[name].ranks)
                  if i != einsum.iterative)
    end = derived.fresh_name(f"{name}_end")

    def own(node: ir.Expr) -> bool:
        return isinstance(node, ir.Read) and node.tensor == name and \
            node.indices[einsum.iterative] == ir.Index(outer)

    def other(node: ir.Expr) -> ir.Expr | None:
        args = node.args if isinstance(node, ir.Op) and len(node.args) == 2 else ()
        if len(args) == 2 and own(args[0]):
            return args[1]
        if len(args) == 2 and own(args[1]):
            return args[0]
        return None

    body, init = einsum.body, einsum.init
    rest = other(body)
    empty = {"max": NEG_INF, "min": ir.Const(math.inf), "+": ir.Const(0.0)}
    if isinstance(body, ir.Op) and body.op in ("max", "min", "+") and rest is not None \
            and init == empty[body.op] and name not in reads_of(rest):
        kind = "sum" if body.op == "+" else body.op
        return StatePart(name, kind, ranks, end)
    if isinstance(body, ir.Op) and body.op == "+" and init == ir.Const(0.0):
        for local, scaled in (body.args, body.args[::-1]):
            factor = other(scaled) if isinstance(scaled, ir.Op) and scaled.op == "*" \
                else None
            if factor is None or name in reads_of(local) or not isinstance(factor, ir.Read):
                continue
            shift = _rescaled_by(derived, factor.tensor, parts)
            if shift is not None:
                return StatePart(name, "rescaled", ranks, end, shift)
    return Blocked(MERGE, name, f"its update {einsum_text(derived, einsum).splitlines()[-1]}"
                                f" is none of a running max, min or sum, or a sum "
                                f"rescaled by a running max")


def _rescaled_by(derived: Cascade, factor: str, parts: dict[str, StatePart]) -> str | None:
    """The running max whose change `factor` rescales by: the one max of the state its
    Einsum reads (rule 3's `where(G[x] == -inf, 0, exp(G[x] - S[x]))`, a spec's own
    `exp(G[x] - G[x+1])`); the proof checks the rest."""
    maxima = {read.tensor for read in derived.einsum(factor).accesses()
              if read.tensor in parts and parts[read.tensor].kind == "max"}
    for name in derived.einsum(factor).reads:  # through rule 3's shift S
        if name not in parts and not derived.tensors[name].is_input:
            maxima |= {read.tensor for read in derived.einsum(name).accesses()
                       if read.tensor in parts and parts[read.tensor].kind == "max"}
    return maxima.pop() if len(maxima) == 1 else None


# ------------------------------------------------------------------ the cascades
def _finish_cascade(derived: Cascade, loop: Loop) -> Cascade:
    """The Einsums after the loop, reading the parts as inputs (a recurrence's value at
    the end as the part itself), and what they read from before the loop."""
    by_name = {part.name: part for part in loop.parts}

    def at_end(node: ir.Expr):
        if isinstance(node, ir.Read) and node.tensor in by_name and \
                derived.tensors[node.tensor].iterative is not None:
            position = derived.tensors[node.tensor].iterative
            return replace(node, indices=tuple(i for n, i in enumerate(node.indices)
                                               if n != position))
        return None

    after = [replace(e, body=rebuild(e.body, at_end),
                     filter=None if e.filter is None else rebuild(e.filter, at_end))
             for e in loop.after]
    needed = {name for e in after for name in e.reads}
    before = []
    body_names = {e.tensor for e in loop.body}
    for einsum in reversed(derived.einsums):
        if einsum.tensor in needed and einsum.tensor not in body_names and \
                einsum not in loop.after:
            before.insert(0, einsum)
            needed |= set(einsum.reads)
    tensors = {t.name: t for t in derived.inputs if t.name in needed}
    tensors.update({part.name: Tensor(part.name, part.ranks, True) for part in loop.parts})
    base = replace(derived, tensors=tensors, einsums=())
    result = assemble(base, [*before, *after])
    return trimmed(result, f"{derived.name}_finish")


def _log_sum_exp(derived: Cascade, loop: Loop) -> tuple[str, str] | None:
    """(G, S) when a rescaled sum S of the state adds exactly exp(x - shift) per key (the
    softmax denominator), so that G + log(S) is the log-sum-exp of the scores."""
    for part in loop.parts:
        if part.kind != "rescaled" or part.ranks != next(
                p.ranks for p in loop.parts if p.name == part.shift):
            continue
        update = derived.einsum(part.name).body
        local = next(a for a in update.args if part.name not in reads_of(a))
        if not isinstance(local, ir.Read):
            continue
        tile_sum = derived.einsum(local.tensor)
        if tile_sum.reduce_op != "sum" or not isinstance(tile_sum.body, ir.Read):
            continue
        term = derived.einsum(tile_sum.body.tensor).body
        if isinstance(term, ir.Op) and term.op == "exp" and tile_sum.filter is None:
            return part.shift, part.name
    return None


__all__ = ["MERGE", "COMMUTATIVE", "Merge", "StatePart", "derive_merge"]
