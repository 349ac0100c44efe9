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

import itertools
import math
from dataclasses import dataclass, replace

import sympy

from ..ir import Cascade, Einsum, ParamDecl, Tensor
from ..ir import expr as ir
from ..ir.printer import einsum_text
from .algebra import Algebra, is_zero, rebuild
from .edit import assemble, splits_in_use
from .steps import Blocked

MERGE = "merge of partial states"
COMMUTATIVE = "merge(a, b) = merge(b, a)"
_KINDS = ("sum", "max", "min", "rescaled")
_EMPTY = {"sum": 0.0, "max": -math.inf, "min": math.inf, "rescaled": 0.0}
_NEG_INF = ir.Op("neg", (ir.Const(math.inf),))


@dataclass(frozen=True)
class StatePart:
    """One tensor of the state. `name` is the state's name in `combine` and `finish`
    (the Einsum that carries it in the derived cascade); `end` the partial cascade's
    output holding its value at the end of the range."""

    name: str
    kind: str                  # one of _KINDS
    ranks: tuple[str, ...]
    end: str
    shift: str | None = None   # a rescaled sum: the running max it is relative to

    @property
    def empty(self) -> float:
        """Its value over an empty range (the recurrence's init, the reduction's
        identity)."""
        return _EMPTY[self.kind]

    def describe(self) -> str:
        where = f"[{', '.join(r.lower() for r in self.ranks)}]" if self.ranks else ""
        if self.kind == "rescaled":
            return f"{self.name}{where}: a sum rescaled by the running max {self.shift}"
        return f"{self.name}{where}: a {self.kind}"


@dataclass(frozen=True)
class Merge:
    """The merge of a cascade's partial states over ranges of `rank` (module docstring).

    `partial` takes the spec's inputs over a range of `rank` (its extent the range's
    length) and the params `start` (the range's first position) and `count` (the rank's
    whole size; a spec param's default that reads the rank's size reads it), and for a
    rank whose positions meet `rank`'s (the queries) an offset in `offsets` (0 unless
    its positions are a range too).
    `combine` takes `A_<name>` and `B_<name>` for each part and returns the parts;
    `finish` takes the parts and the inputs it lists, and returns the spec's outputs."""

    rank: str
    parts: tuple[StatePart, ...]
    partial: Cascade
    combine: Cascade
    finish: Cascade
    start: str
    count: str
    offsets: dict[str, str]   # another rank whose positions meet `rank`'s -> its offset
    lse: tuple[str, str] | None   # (running max, its sum of exp): log-sum-exp = G + log S
    proofs: tuple[str, ...]

    @property
    def commutative(self) -> bool:
        """Whether merge(a, b) = merge(b, a) was proved: ranges merge in any order."""
        return any(proof.startswith(COMMUTATIVE) for proof in self.proofs)

    def params_for(self, piece: Cascade, count: int, start: int = 0) -> dict:
        """The params `piece` (partial or finish) needs beside the spec's for the range
        starting at `start` of a rank of `count` positions."""
        values = {self.start: start, self.count: count}
        return {name: value for name, value in values.items() if name in piece.params}

    def lines(self) -> list[str]:
        """What `einsumattn analyze` prints."""
        lines = [f"state over a range of {self.rank} (partial: the 1-pass cascade on the "
                 f"range; params {self.start} = its first position, {self.count} = "
                 f"{self.rank}):"]
        lines += [f"  positions of {rank} offset by {param} (a range of it too)"
                  for rank, param in self.offsets.items()]
        lines += [f"  {part.describe()}" for part in self.parts]
        if self.lse:
            lines.append(f"  log-sum-exp = {self.lse[0]} + log({self.lse[1]})")
        lines.append("merge(A, B), A's range before B's:")
        lines += [f"  {line}" for e in self.combine.einsums
                  for line in einsum_text(self.combine, e).splitlines()]
        lines.append("finish(state):" if self.finish.einsums else
                     "finish(state): the state is the output")
        lines += [f"  {line}" for e in self.finish.einsums
                  for line in einsum_text(self.finish, e).splitlines()]
        lines += [f"proved: {proof}" for proof in self.proofs]
        return lines


def derive_merge(cascade: Cascade, *, tile: int | None = None) -> Merge | Blocked:
    """The merge of `cascade`'s partial states over ranges of its streamed rank (the
    analysis's primary rank), derived from the cascade `rewrite` derives; or why not."""
    from . import DEFAULT_TILE, rewrite
    from ..analysis import analyze
    from ..analysis.passes import analyse_passes

    rank = analyze(cascade).primary_rank
    if rank is None:
        return Blocked(MERGE, cascade.name, "no rank is reduced: nothing streams")
    recurs = any(e.iter_var is not None and cascade.var_rank(e.iter_var) == rank
                 for e in cascade.einsums)
    for output in cascade.outputs:
        if rank in cascade.tensors[output].ranks:
            why = ("each output reads the state of the steps before it, which needs a "
                   "prefix combine of the states (LASP-2), not a merge") if recurs else \
                  (f"a range of {rank} holds only some of the outputs, and they read "
                   f"what the whole of {rank} reduces to")
            return Blocked(MERGE, output, f"the output {output} is indexed by {rank}: "
                                          f"{why}")
    positioned = _positioned(cascade, rank)
    if isinstance(positioned, Blocked):
        return positioned
    located, start, count, offsets = positioned
    derived = rewrite(located, tile=tile or DEFAULT_TILE).cascade
    passes = analyse_passes(derived)[rank].passes
    if passes > 1:
        return Blocked(MERGE, cascade.name,
                       f"{rank} still takes {passes} passes after the rewrites: a range's "
                       f"state is read by a later pass over the same range")
    loop = _Loop.of(derived, rank)
    if isinstance(loop, Blocked):
        return loop
    combine = _combine_cascade(derived, loop.parts)
    proofs = _Proof(derived, loop, combine).run()
    if isinstance(proofs, Blocked):
        return proofs
    return Merge(rank, loop.parts, _partial_cascade(derived, loop), combine,
                 _finish_cascade(derived, loop), start, count, offsets,
                 _log_sum_exp(derived, loop), proofs)


# ------------------------------------------------------------------ positions
def _positioned(cascade: Cascade, rank: str):
    """The cascade over a range of `rank`: every position of it used as a value (a mask
    `m <= p`, a bias `p - m`) becomes `m + start`, and its size used as a value becomes
    `count`, two new params; inputs keep being read at the local `m`. A rank whose
    position is compared with or added to `rank`'s (the queries' `p` in `m <= p`) gets
    an offset of its own, `p_start` (0 by default), so that its positions can be a
    range too (context parallelism shards the queries). Returns (cascade, start, count,
    {partner rank: its offset param}) or a Blocked."""
    var = cascade.ranks[rank].var
    for other in cascade.ranks.values():
        if other.definition is not None and any(
                isinstance(n, ir.Dim) and n.rank == rank for n in ir.walk(other.definition)):
            return Blocked(MERGE, other.name, f"the dim {other.name} is sized by {rank}: a "
                                              f"range of {rank} would resize it")
    start = cascade.fresh_name(f"{var}_start")
    count = cascade.fresh_name(f"{var}_count", {start})
    taken = {start, count}
    offsets: dict[str, str] = {}
    for partner in _position_partners(cascade, var):
        offsets[partner] = cascade.fresh_name(f"{partner}_start", taken)
        taken.add(offsets[partner])
    shifted = {var: start, **offsets}

    def local(node: ir.Expr):
        if isinstance(node, ir.Index) and node.var in shifted:
            return ir.Op("+", (node, ir.Param(shifted[node.var])))
        if isinstance(node, ir.Dim) and node.rank == rank:
            return ir.Param(count)
        if isinstance(node, ir.Read):
            return node  # coordinates stay local: the range's own tensors
        return None

    einsums = []
    for einsum in cascade.einsums:
        for read in einsum.accesses():
            shift = next((v for index in read.indices for v in ir.index_vars(index)
                          if v in shifted and not isinstance(index, ir.Index)), None)
            if cascade.tensors[read.tensor].is_input and shift is not None:
                return Blocked(MERGE, einsum.tensor,
                               f"{read.tensor} is read at {ir.to_text(read)}, beside "
                               f"{shift}: a range would need positions of its neighbour "
                               f"(a halo)")
        einsums.append(replace(einsum, body=rebuild(einsum.body, local),
                               filter=None if einsum.filter is None else
                               rebuild(einsum.filter, local)))
    # A default that reads the rank's size (sigmoid attention's bias = -log(M)) reads
    # `count`: the whole rank's, never the range's. `count` itself has no default (M
    # would be the range's length there).
    params = {name: replace(decl, default=None if decl.default is None else
                            rebuild(decl.default, local))
              for name, decl in cascade.params.items()}
    params[start] = ParamDecl(start, ir.Const(0))
    params[count] = ParamDecl(count, None)
    for offset in offsets.values():
        params[offset] = ParamDecl(offset, ir.Const(0))
    located = replace(cascade, params=params, einsums=tuple(einsums))
    return located, start, count, {cascade.var_rank(v): p for v, p in offsets.items()}


_POSITION_OPS = frozenset({"<", "<=", ">", ">=", "==", "!=", "+", "-"})


def _position_partners(cascade: Cascade, var: str) -> list[str]:
    """The index variables compared with, added to or subtracted from `var` outside
    reads (`p` in `m <= p` and in ALiBi's `m - p`), in order of appearance."""
    found: dict[str, None] = {}

    def positions(node: ir.Expr) -> list[str]:
        if isinstance(node, ir.Index):
            return [node.var]
        if isinstance(node, ir.Op) and node.op in _POSITION_OPS | {"*", "neg"}:
            return [v for a in node.args for v in positions(a)]
        return []

    for einsum in cascade.einsums:
        for expr in (einsum.body, einsum.filter):
            for node in ir.walk(expr) if expr is not None else ():
                if isinstance(node, ir.Op) and node.op in _POSITION_OPS:
                    used = positions(node)
                    if var in used:
                        found.update(dict.fromkeys(v for v in used if v != var))
    return list(found)


# ------------------------------------------------------------------ the loop
@dataclass
class _Loop:
    """The derived cascade's Einsums that traverse the streamed rank (`body`, in order),
    those after it (`after`), its state, and the variables: `outer` the tile counter of
    rule 3's split (None when the rank is not split), `inner` the key within a tile (the
    rank's own variable when it is not split)."""

    rank: str
    body: list[Einsum]
    after: list[Einsum]
    parts: tuple[StatePart, ...]
    outer: str | None
    inner: str
    stateful: set[str]

    @classmethod
    def of(cls, derived: Cascade, rank: str) -> "_Loop | Blocked":
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
                    if read.tensor in parts and not _at_end(derived, read, split):
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
        return cls(rank, body, after, tuple(parts.values()), outer, inner, stateful)


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
    empty = {"max": _NEG_INF, "min": ir.Const(math.inf), "+": ir.Const(0.0)}
    if isinstance(body, ir.Op) and body.op in ("max", "min", "+") and rest is not None \
            and init == empty[body.op] and name not in _reads(rest):
        kind = "sum" if body.op == "+" else body.op
        return StatePart(name, kind, ranks, end)
    if isinstance(body, ir.Op) and body.op == "+" and init == ir.Const(0.0):
        for local, scaled in (body.args, body.args[::-1]):
            factor = other(scaled) if isinstance(scaled, ir.Op) and scaled.op == "*" \
                else None
            if factor is None or name in _reads(local) or not isinstance(factor, ir.Read):
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


def _reads(expr: ir.Expr) -> set[str]:
    return {read.tensor for read in ir.reads(expr)}


# ------------------------------------------------------------------ the cascades
def _state_read(derived: Cascade, name: str, ranks: tuple[str, ...]) -> ir.Read:
    return ir.Read(name, tuple(ir.Index(derived.ranks[r].var) for r in ranks))


def _combine_cascade(derived: Cascade, parts: tuple[StatePart, ...]) -> Cascade:
    """merge(A, B) as a cascade: inputs A_<part> and B_<part>, outputs the parts."""
    by_name = {part.name: part for part in parts}
    tensors: dict[str, Tensor] = {}
    einsums: list[Einsum] = []
    taken = {part.name for part in parts}

    def name(base: str) -> str:
        fresh, number = base, 2
        while fresh in taken:
            fresh, number = f"{base}{number}", number + 1
        taken.add(fresh)
        return fresh

    sides = {part.name: (name(f"A_{part.name}"), name(f"B_{part.name}")) for part in parts}
    for part in parts:
        for side in sides[part.name]:
            tensors[side] = Tensor(side, part.ranks, True)
    weights: dict[str, tuple[str, str]] = {}
    for part in parts:
        if part.kind == "rescaled" and part.shift not in weights:
            weights[part.shift] = (name(f"WA_{part.shift}"), name(f"WB_{part.shift}"))
    for part in parts:
        a, b = (_state_read(derived, side, part.ranks) for side in sides[part.name])
        if part.kind == "rescaled":
            wa, wb = (_state_read(derived, w, by_name[part.shift].ranks)
                      for w in weights[part.shift])
            body = ir.Op("+", (ir.Op("*", (a, wa)), ir.Op("*", (b, wb))))
        else:
            body = ir.Op({"sum": "+", "max": "max", "min": "min"}[part.kind], (a, b))
        einsums.append(Einsum(part.name, tuple(derived.ranks[r].var for r in part.ranks),
                              body))
        if part.name in weights:  # the weights of the sums this max rescales
            new = _state_read(derived, part.name, part.ranks)
            for side, weight in zip(sides[part.name], weights[part.name]):
                old = _state_read(derived, side, part.ranks)
                einsums.append(Einsum(weight, einsums[-1].indices, ir.Op("where", (
                    ir.Op("==", (old, _NEG_INF)), ir.Const(0.0),
                    ir.Op("exp", (ir.Op("-", (old, new)),))))))
    for einsum in einsums:
        tensors[einsum.tensor] = Tensor(einsum.tensor, tuple(
            derived.var_rank(v) for v in einsum.indices), False)
    used = {r for t in tensors.values() for r in t.ranks}
    ranks = {r: derived.ranks[r] for r in derived.ranks if r in used}
    return Cascade(f"{derived.name}_merge", ranks, (), {}, tensors, tuple(einsums),
                   tuple(part.name for part in parts))


def _finish_cascade(derived: Cascade, loop: _Loop) -> Cascade:
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
    return _trimmed(result, f"{derived.name}_finish")


def _partial_cascade(derived: Cascade, loop: _Loop) -> Cascade:
    """The derived cascade up to the end of the loop, its outputs the state."""
    einsums = [e for e in derived.einsums if e not in loop.after]
    for part in loop.parts:
        if part.end != part.name:
            tensor = derived.tensors[part.name]
            indices = tuple(ir.Dim(derived.ranks[r].name) if n == tensor.iterative else
                            ir.Index(derived.ranks[r].var)
                            for n, r in enumerate(tensor.ranks))
            einsums.append(Einsum(part.end, tuple(derived.ranks[r].var for r in part.ranks),
                                  ir.Read(part.name, indices)))
    outputs = tuple(part.end for part in loop.parts)
    result = assemble(replace(derived, outputs=outputs), einsums,
                      removable={e.tensor for e in derived.einsums})
    return _trimmed(result, f"{derived.name}_partial")


def _trimmed(cascade: Cascade, name: str) -> Cascade:
    """Only the ranks, splits and params the cascade still uses."""
    tensors = cascade.tensors.values()
    splits = splits_in_use(cascade.splits, tensors)
    used = {r for t in tensors for r in t.ranks} | \
        {r for s in splits for r in (s.parent, s.outer, s.inner)}
    params = set()
    for einsum in cascade.einsums:
        for expr in (einsum.body, einsum.filter, einsum.init):
            if expr is not None:
                for node in ir.walk(expr):
                    if isinstance(node, ir.Param):
                        params.add(node.name)
                    if isinstance(node, ir.Dim):
                        used.add(node.rank)
    pending = list(params)
    while pending:  # what the defaults of the params in use read
        default = cascade.params[pending.pop()].default
        for node in ir.walk(default) if default is not None else ():
            if isinstance(node, ir.Dim):
                used.add(node.rank)
            if isinstance(node, ir.Param) and node.name not in params:
                params.add(node.name)
                pending.append(node.name)
    for rank in list(used):  # the sizes the used ranks are computed from
        size = cascade.ranks[rank].size
        used |= {r for r in cascade.ranks
                 if r in {s.name for s in getattr(size, "free_symbols", ())}}
    ranks = {r: v for r, v in cascade.ranks.items() if r in used}
    return replace(cascade, name=name, ranks=ranks, splits=splits,
                   params={p: d for p, d in cascade.params.items() if p in params})


def _log_sum_exp(derived: Cascade, loop: _Loop) -> tuple[str, str] | None:
    """(G, S) when a rescaled sum S of the state adds exactly exp(x - shift) per key (the
    softmax denominator), so that G + log(S) is the log-sum-exp of the scores."""
    for part in loop.parts:
        if part.kind != "rescaled" or part.ranks != next(
                p.ranks for p in loop.parts if p.name == part.shift):
            continue
        update = derived.einsum(part.name).body
        local = next(a for a in update.args if part.name not in _reads(a))
        if not isinstance(local, ir.Read):
            continue
        tile_sum = derived.einsum(local.tensor)
        if tile_sum.reduce_op != "sum" or not isinstance(tile_sum.body, ir.Read):
            continue
        term = derived.einsum(tile_sum.body.tensor).body
        if isinstance(term, ir.Op) and term.op == "exp" and tile_sum.filter is None:
            return part.shift, part.name
    return None


# ------------------------------------------------------------------ the proof
class _Symbolic(Algebra):
    """IR -> sympy with `where` and comparisons interpreted (Piecewise, relations), and
    reads looked up in `values` by (tensor, key); a read not there is a fresh real."""

    def __init__(self, values: dict, key) -> None:
        super().__init__()
        self.values = values
        self.key = key

    def read(self, node: ir.Read) -> sympy.Expr:
        return self.values[self.key(node)]

    def function(self, op: str, args: list) -> sympy.Expr:
        relations = {"==": sympy.Eq, "!=": sympy.Ne, "<": sympy.Lt, "<=": sympy.Le,
                     ">": sympy.Gt, ">=": sympy.Ge}
        if op in relations:
            return relations[op](*args)
        if op == "where":
            return sympy.Piecewise((args[1], args[0]), (args[2], True))
        return super().function(op, args)


class _NotProvable(Exception):
    pass


class _Proof:
    """The three laws of the module docstring, on symbols: a state is a dict part ->
    sympy value; `step` runs the loop body once on a tile of two keys (or none)."""

    def __init__(self, derived: Cascade, loop: _Loop, combine: Cascade) -> None:
        self.derived, self.loop, self.combine = derived, loop, combine
        self.symbols: dict = {}
        # A tile may have no present key only where a filter (a mask) can remove keys:
        # otherwise every tile of a range holds at least one (only the last is padded).
        self.tiles = (2, 0) if any(e.filter is not None for e in loop.body) else (2,)

    def symbol(self, key) -> sympy.Symbol:
        if key not in self.symbols:
            label = "_".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            self.symbols[key] = sympy.Symbol(f"{label}", real=True)
        return self.symbols[key]

    def state(self, label: str, empty: bool = False) -> dict:
        return {part.name: sympy.sympify(part.empty) if empty else
                self.symbol((label, part.name)) for part in self.loop.parts}

    # -- merge, on the combine cascade's own Einsums
    def merge(self, a: dict, b: dict) -> dict:
        values: dict = {}
        inputs = [t.name for t in self.combine.inputs]
        for part, side_a, side_b in zip(self.loop.parts, inputs[0::2], inputs[1::2]):
            values[side_a], values[side_b] = a[part.name], b[part.name]
        algebra = _Symbolic(values, lambda read: read.tensor)
        for einsum in self.combine.einsums:
            values[einsum.tensor] = algebra.to_sympy(einsum.body)
        return {part.name: values[part.name] for part in self.loop.parts}

    # -- one tile of the loop body
    def step(self, state: dict, keys: int, tile: str) -> dict:
        """The state after one more tile of `keys` present keys (0 or 2): the loop's
        Einsums evaluated in order; a value of the keys alone that reads no state (the
        scores, V) is a symbol per key of the tile, the same on both sides of a law."""
        loop, derived = self.loop, self.derived
        new: dict = {}
        instance: list = [None]

        def key(read: ir.Read):
            tensor = derived.tensors.get(read.tensor)
            if read.tensor in state and tensor is not None and tensor.iterative is not None:
                index = read.indices[tensor.iterative]
                return ("<old>" if index == ir.Index(loop.outer) else "<new>", read.tensor)
            per_key = any(loop.inner in ir.index_vars(i) for i in read.indices)
            return (read.tensor, instance[0] if per_key else None)

        proof = self

        class Lookup(dict):
            def __missing__(self, found):
                where, name = found
                if where == "<old>":
                    return state[name]
                if where == "<new>":
                    return new[name]
                return proof.symbol((tile, where, name))

        values = Lookup()
        algebra = _Symbolic(values, key)
        for einsum in loop.body:
            name = einsum.tensor
            reduced_inner = loop.inner in einsum.reduced
            if name not in loop.stateful and not reduced_inner:
                continue  # a value of the keys alone: the symbols stand for it
            if einsum.filter is not None:
                raise _NotProvable(f"{name} has a filter of its own")
            if set(einsum.reduced) - {loop.inner, loop.outer}:
                raise _NotProvable(f"{name} reduces over another rank")
            if loop.inner in einsum.indices:
                for k in range(keys):
                    instance[0] = k
                    values[(name, k)] = algebra.to_sympy(einsum.body)
                instance[0] = None
                continue
            if reduced_inner:
                terms = []
                for k in range(keys):
                    instance[0] = k
                    terms.append(algebra.to_sympy(einsum.body))
                instance[0] = None
                value = _reduce(einsum.reduce_op, terms)
            else:
                value = algebra.to_sympy(einsum.body)
            if name in state and einsum.iterative is not None:
                new[name] = value
            elif name in state:  # a reduction over the rank, carried as is
                new[name] = _reduce(einsum.reduce_op, [state[name], value])
            else:
                values[(name, None)] = value
        return {part.name: new[part.name] for part in loop.parts}

    def run(self) -> tuple[str, ...] | Blocked:
        try:
            return self._run()
        except _NotProvable as why:
            return Blocked(MERGE, self.derived.name, f"the merge cannot be proved: {why}")

    def _run(self) -> tuple[str, ...]:
        names = ", ".join(part.name for part in self.loop.parts)
        a, b, c, s = (self.state(label) for label in "abcs")
        empty = self.state("e", empty=True)
        for got, expected, law in ((self.merge(empty, a), a, "merge(e, a) = a"),
                                   (self.merge(a, empty), a, "merge(a, e) = a"),
                                   (self.merge(self.merge(a, b), c),
                                    self.merge(a, self.merge(b, c)), "associative")):
            self._equal(got, expected, law)
        for left in (a, empty):
            for right in (s, empty):
                for keys in self.tiles:
                    got = self.step(self.merge(left, right), keys, "u")
                    expected = self.merge(left, self.step(right, keys, "u"))
                    self._equal(got, expected, "step(merge(a, s), u) = "
                                               "merge(a, step(s, u))")
        proved = [f"merge(e, a) = a = merge(a, e), e the empty state ({names} at their "
                  f"inits)",
                  "merge(merge(a, b), c) = merge(a, merge(b, c))",
                  f"step(merge(a, s), u) = merge(a, step(s, u)) for a tile u of "
                  f"{' or '.join(str(k) if k else 'no' for k in self.tiles)} present keys, "
                  f"a and s empty or not: the pass over A then B ends in "
                  f"merge(state(A), state(B))"]
        # Not needed for a merge in order of the ranges; a ring merges in order of
        # arrival, which is another order on every machine but the first.
        flipped = self.merge(b, a)
        if all(_identical(got, flipped[name]) for name, got in self.merge(a, b).items()):
            proved.append(f"{COMMUTATIVE}: ranges may be merged in any order")
        return tuple(proved)

    def _equal(self, got: dict, expected: dict, law: str) -> None:
        for part in self.loop.parts:
            if not _identical(got[part.name], expected[part.name]):
                raise _NotProvable(f"{law} fails for {part.name}")


def _reduce(op: str, terms: list) -> sympy.Expr:
    if op == "sum":
        return sympy.Add(*terms)
    if op == "max":
        return sympy.Max(*terms) if terms else -sympy.oo
    if op == "min":
        return sympy.Min(*terms) if terms else sympy.oo
    raise _NotProvable(f"a {op} reduction")


def _identical(left: sympy.Expr, right: sympy.Expr) -> bool:
    """left == right for every value of the symbols: directly, or else in each order of
    the arguments of the max and min it contains."""
    if left == right:  # also -oo = -oo, where the difference is nan
        return True
    if not (left.is_finite is not False and right.is_finite is not False):
        return False
    difference = left - right
    if is_zero(_resolved(difference)):
        return True
    ordered = sorted({s for node in sympy.preorder_traversal(difference)
                      if isinstance(node, (sympy.Max, sympy.Min))
                      for s in node.free_symbols}, key=str)
    if not ordered or len(ordered) > 6:
        return False
    top = sympy.Symbol("top_", real=True)
    gaps = [sympy.Symbol(f"gap{n}_", nonnegative=True) for n in range(len(ordered))]
    for order in itertools.permutations(ordered):
        values = {symbol: top - sum(gaps[:n]) for n, symbol in enumerate(order)}
        if not is_zero(_resolved(difference.xreplace(values))):
            return False
    return True


def _resolved(value: sympy.Expr) -> sympy.Expr:
    """Piecewise branches whose conditions sympy decides, taken."""
    return sympy.piecewise_fold(value).doit() if value.has(sympy.Piecewise) else value


__all__ = ["MERGE", "Merge", "StatePart", "derive_merge"]
