"""Partial states over ranges of a streamed rank: what they are, and the laws that make
a combine of them right (transform/merge.py derives the merge of the 1-pass cascade's
state, transform/prefix.py the prefix combine of a linear recurrence's; docs/merge.md).

- `StatePart`, `Merge`: the derived pieces, as data.
- `positioned`: a cascade over a range of the rank, masks and scores at global positions.
- `combine_cascade`: the combine of two ranges' states as a cascade, from the parts' kinds.
- `Proof`: identity, associativity, the sequential law (and commutativity) on symbols.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace

import sympy

from ..ir import Cascade, Einsum, ParamDecl, Tensor
from ..ir import expr as ir
from ..ir.printer import einsum_text
from .algebra import Algebra, is_zero, rebuild
from .edit import assemble, splits_in_use
from .online import NEG_INF
from .steps import Blocked

MERGE = "merge of partial states"
COMMUTATIVE = "merge(a, b) = merge(b, a)"
_EMPTY = {"sum": 0.0, "max": -math.inf, "min": math.inf, "rescaled": 0.0, "affine": 0.0,
          "product": 1.0}


@dataclass(frozen=True)
class StatePart:
    """One tensor of the state. `name` is the state's name in `combine` and `finish`
    (the Einsum that carries it in the derived cascade); `end` the partial cascade's
    output holding its value at the end of the range."""

    name: str
    kind: str                  # one of _EMPTY's keys
    ranks: tuple[str, ...]
    end: str
    # A rescaled sum: the running max it is relative to; an affine state (prefix.py):
    # the product of the decays that scales it on a later range.
    shift: str | None = None

    @property
    def empty(self) -> float:
        """Its value over an empty range (the recurrence's init, the reduction's
        identity)."""
        return _EMPTY[self.kind]

    def describe(self) -> str:
        where = f"[{', '.join(r.lower() for r in self.ranks)}]" if self.ranks else ""
        if self.kind == "rescaled":
            return f"{self.name}{where}: a sum rescaled by the running max {self.shift}"
        if self.kind == "affine":
            return (f"{self.name}{where}: a linear recurrence's state from 0, decayed by "
                    f"{self.shift} on a later range")
        if self.kind == "product":
            return f"{self.name}{where}: the product of the range's decays"
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
    # "merge": finish(state of the whole rank) gives the outputs. "prefix" (prefix.py,
    # outputs indexed by the rank): finish(state entering a range, the range's inputs)
    # gives the range's outputs, its recurrences starting from the inputs `entering`
    # names (input -> part).
    kind: str = "merge"
    entering: dict = field(default_factory=dict)

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
        what = "the recurrence on the range from a zero state" if self.kind == "prefix" \
            else "the 1-pass cascade on the range"
        lines = [f"state over a range of {self.rank} (partial: {what}; params {self.start} "
                 f"= its first position, {self.count} = {self.rank}):"]
        lines += [f"  positions of {rank} offset by {param} (a range of it too)"
                  for rank, param in self.offsets.items()]
        lines += [f"  {part.describe()}" for part in self.parts]
        if self.lse:
            lines.append(f"  log-sum-exp = {self.lse[0]} + log({self.lse[1]})")
        lines.append("merge(A, B), A's range before B's:")
        lines += [f"  {line}" for e in self.combine.einsums
                  for line in einsum_text(self.combine, e).splitlines()]
        if self.kind == "prefix":
            lines.append("finish(state entering a range, its inputs): the range again, "
                         + ", ".join(f"{part} from {name}" for name, part
                                     in self.entering.items()))
        else:
            lines.append("finish(state):" if self.finish.einsums else
                         "finish(state): the state is the output")
            lines += [f"  {line}" for e in self.finish.einsums
                      for line in einsum_text(self.finish, e).splitlines()]
        lines += [f"proved: {proof}" for proof in self.proofs]
        return lines


# ------------------------------------------------------------------ positions
def positioned(cascade: Cascade, rank: str):
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
class Loop:
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


def reads_of(expr: ir.Expr) -> set[str]:
    return {read.tensor for read in ir.reads(expr)}



# ------------------------------------------------------------------ the cascades
def partial_cascade(cascade: Cascade, einsums: list[Einsum], parts) -> Cascade:
    """`einsums` of `cascade` (up to the end of the loop), its outputs the state: a
    recurrence's value at its last position (`part.end`), a reduction as it is."""
    einsums = list(einsums)
    for part in parts:
        tensor = cascade.tensors[part.name]
        if tensor.iterative is None:
            continue
        indices = tuple(ir.Dim(cascade.ranks[r].name) if n == tensor.iterative else
                        ir.Index(cascade.ranks[r].var) for n, r in enumerate(tensor.ranks))
        einsums.append(Einsum(part.end, tuple(cascade.ranks[r].var for r in part.ranks),
                              ir.Read(part.name, indices)))
    result = assemble(replace(cascade, outputs=tuple(part.end for part in parts)), einsums,
                      removable={e.tensor for e in cascade.einsums})
    return trimmed(result, f"{cascade.name}_partial")


def _state_read(derived: Cascade, name: str, ranks: tuple[str, ...]) -> ir.Read:
    return ir.Read(name, tuple(ir.Index(derived.ranks[r].var) for r in ranks))


def combine_sides(combine: Cascade) -> list[tuple[str, str]]:
    """The combine's inputs (A_x, B_x) for each part, in the parts' order (as
    combine_cascade declares them)."""
    inputs = [t.name for t in combine.inputs]
    return list(zip(inputs[0::2], inputs[1::2]))


def combine_cascade(derived: Cascade, parts: tuple[StatePart, ...]) -> Cascade:
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
        if part.kind == "affine":   # b's decays scale a's state
            decayed = _state_read(derived, sides[part.shift][1], part.ranks)
            body = ir.Op("+", (ir.Op("*", (decayed, a)), b))
        elif part.kind == "product":
            body = ir.Op("*", (a, b))
        elif part.kind == "rescaled":
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
                    ir.Op("==", (old, NEG_INF)), ir.Const(0.0),
                    ir.Op("exp", (ir.Op("-", (old, new)),))))))
    for einsum in einsums:
        tensors[einsum.tensor] = Tensor(einsum.tensor, tuple(
            derived.var_rank(v) for v in einsum.indices), False)
    used = {r for t in tensors.values() for r in t.ranks}
    ranks = {r: derived.ranks[r] for r in derived.ranks if r in used}
    return Cascade(f"{derived.name}_merge", ranks, (), {}, tensors, tuple(einsums),
                   tuple(part.name for part in parts))


def trimmed(cascade: Cascade, name: str) -> Cascade:
    """Only the ranks, splits and params the cascade still uses."""
    tensors = cascade.tensors.values()
    splits = splits_in_use(cascade.splits, tensors)
    used = {r for t in tensors for r in t.ranks} | \
        {r for s in splits for r in (s.parent, s.outer, s.inner)}
    params = set()
    for einsum in cascade.einsums:
        used |= {cascade.var_rank(v) for v in einsum.variables}
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
    used |= {s.factor for s in splits if isinstance(s.factor, str) and
             s.factor in cascade.ranks}
    params |= {s.factor for s in splits if isinstance(s.factor, str) and
               s.factor in cascade.params}
    pending_ranks = list(used)
    while pending_ranks:  # the sizes the used ranks are computed from
        rank = cascade.ranks[pending_ranks.pop()]
        found = {s.name for s in getattr(rank.size, "free_symbols", ())}
        if rank.definition is not None:
            found |= {n.rank for n in ir.walk(rank.definition) if isinstance(n, ir.Dim)}
        for other in found & set(cascade.ranks) - used:
            used.add(other)
            pending_ranks.append(other)
    ranks = {r: v for r, v in cascade.ranks.items() if r in used}
    return replace(cascade, name=name, ranks=ranks, splits=splits,
                   params={p: d for p, d in cascade.params.items() if p in params})


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


_PROVED: dict = {}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBERED = re.compile("\N{MATHEMATICAL LEFT ANGLE BRACKET}[0-9]+"
                       "\N{MATHEMATICAL RIGHT ANGLE BRACKET}")


class _NotProvable(Exception):
    """A law of the merge that sympy cannot show; its text names the law and the part."""


class Proof:
    """The three laws of the module docstring, on symbols: a state is a dict part ->
    sympy value; `step` runs the loop body once on a tile of two keys (or none)."""

    def __init__(self, derived: Cascade, loop: Loop, combine: Cascade) -> None:
        self.derived, self.loop, self.combine = derived, loop, combine
        self.symbols: dict = {}
        # A tile may have no present key only where a filter (a mask) can remove keys:
        # otherwise every tile of a range holds at least one (only the last is padded).
        self.tiles = (2, 0) if any(e.filter is not None for e in loop.body) else (2,)
        # The Einsums the state's update reads, directly or through others.
        self.needed = {part.name for part in loop.parts}
        for einsum in reversed(loop.body):
            if einsum.tensor in self.needed:
                self.needed |= set(einsum.reads)

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
        for part, (side_a, side_b) in zip(self.loop.parts, combine_sides(self.combine)):
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
            if name not in self.needed:
                continue  # an output of the loop (a prefix's), not its state
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
        # The proof is a function of the Einsums it evaluates (the loop's state and what
        # it reduces over the tile, in the order they run; a value of the keys alone is
        # a symbol named after its tensor, whatever computes it), the combine's, and
        # the parts, up to the names of tensors, ranks, variables and params: proved
        # once per process for each such text with its names numbered in order of
        # appearance (analyze, compile and check each derive it; softmax variants
        # that differ only in their scores, or only in their names, share one).
        loop = self.loop
        texts = [*(einsum_text(self.derived, e) for e in loop.body
                   if e.tensor in self.needed and (e.tensor in loop.stateful or
                                                   loop.inner in e.reduced)),
                 *(einsum_text(self.combine, e) for e in self.combine.einsums),
                 *(f"{p.name} {p.kind} {p.shift}" for p in loop.parts),
                 f"{loop.inner} {loop.outer}"]
        names = {*self.derived.tensors, *self.derived.params, *self.derived.ranks,
                 *self.combine.tensors, *self.combine.ranks,
                 *(v for c in (self.derived, self.combine) for e in c.einsums
                   for v in e.variables)}
        numbered: dict[str, str] = {}

        def number(match) -> str:
            word = match.group(0)
            if word not in names:
                return word
            return numbered.setdefault(word, f"\N{MATHEMATICAL LEFT ANGLE BRACKET}"
                                             f"{len(numbered)}\N{MATHEMATICAL RIGHT ANGLE BRACKET}")
        key = (tuple(_WORD.sub(number, text) for text in texts), self.tiles)
        if key not in _PROVED:
            try:
                found = self._run()
            except _NotProvable as why:
                found = f"the merge cannot be proved: {why}"
            # kept with the names numbered; given back in this cascade's names
            _PROVED[key] = _WORD.sub(number, found) if isinstance(found, str) else \
                tuple(_WORD.sub(number, line) for line in found)
        named = {n: word for word, n in numbered.items()}
        found = _PROVED[key]

        def renamed(text: str) -> str:
            return _NUMBERED.sub(lambda m: named.get(m.group(0), m.group(0)), text)
        if isinstance(found, str):
            return Blocked(MERGE, self.derived.name, renamed(found))
        return tuple(renamed(line) for line in found)

    def _run(self) -> tuple[str, ...]:
        names = ", ".join(part.name for part in self.loop.parts)
        a, b, c, s = (self.state(label) for label in "abcs")
        empty = self.state("e", empty=True)
        for got, expected, law in ((self.merge(empty, a), a, "merge(e, a) = a"),
                                   (self.merge(a, empty), a, "merge(a, e) = a"),
                                   (self.merge(self.merge(a, b), c),
                                    self.merge(a, self.merge(b, c)), "associative")):
            self._equal(got, expected, law)
        # (e, s) is left out: merge(e, x) = x for every finite x (the identity law, on
        # symbols), and both sides are then step(s, u), finite. The cases with an empty
        # right side are not implied: its running max is -inf, no real symbol.
        for left, right in ((a, s), (a, empty), (empty, empty)):
            for keys in self.tiles:
                got = self.step(self.merge(left, right), keys, "u")
                expected = self.merge(left, self.step(right, keys, "u"))
                self._equal(got, expected, "step(merge(a, s), u) = merge(a, step(s, u))")
        proved = [f"merge(e, a) = a = merge(a, e), e the empty state ({names} at their "
                  f"inits)",
                  "merge(merge(a, b), c) = merge(a, merge(b, c))",
                  f"step(merge(a, s), u) = merge(a, step(s, u)) for {self._steps()}, "
                  f"a and s empty or not: the pass over A then B ends in "
                  f"merge(state(A), state(B))"]
        # Not needed for a merge in order of the ranges; a ring merges in order of
        # arrival, which is another order on every machine but the first.
        flipped = self.merge(b, a)
        if all(_identical(got, flipped[name]) for name, got in self.merge(a, b).items()):
            proved.append(f"{COMMUTATIVE}: ranges may be merged in any order")
        return tuple(proved)

    def _steps(self) -> str:
        if not self.loop.inner:   # a recurrence over the rank itself
            return "a step u"
        keys = " or ".join(str(k) if k else "no" for k in self.tiles)
        return f"a tile u of {keys} present keys"

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


__all__ = ["MERGE", "COMMUTATIVE", "Merge", "StatePart", "Loop", "Proof", "positioned",
           "combine_sides",
           "combine_cascade", "partial_cascade", "trimmed", "reads_of"]
