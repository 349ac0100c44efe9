"""Closed forms of online recurrences: a spec written in the online form (FuseMax's
Cascade 5, the recurrences of FlashAttention's loop, written by hand) back to the sums
over the whole key rank that it computes, so that the fast backward (backward.py)
derives FlashAttention-2's backward from it as from the textbook form.

Over a split M -> M1, M0 (m = m1*M0 + m0, the tile m1, its key m0):

    S[.., m1+1] = max(S[.., m1], X[.., m1]), S[.., 0] = -inf, X = max[m0] Y   (running max)
    R[.., m1+1] = A[.., m1] + R[.., m1] * exp(S[.., m1] - S[.., m1+1]), R[.., 0] = 0
    A[.., m1]   = sum[m0] a(S[.., m1+1])                                      (rescaled sum)

read only at their final values S[.., M1] and R[.., M1], are

    S[.., M1] = max[m] Y[.., m]                          =: S_all
    R[.., M1] = sum[m] a(S_all)                          =: R_all

with every tensor over (m1, m0) between the inputs and `a` computed again over m.

Proof. The running max: S[k] = max(-inf, X[0], ..., X[k-1]) by induction, and a max of
tile maxima over every tile is the max over every key. The rescaled sum: with
T[k] = R[k] exp(S[k]), the recurrence is T[k+1] = A[k] exp(S[k+1]) + T[k], T[0] = 0, so
R[K] = exp(-S[K]) sum_k A[k] exp(S[k+1]). The proof obligation, which sympy discharges,
is that each term of A times exp(s) is free of s (s: the read S[.., m1+1]): a(s) =
exp(-s) a0. Then A[k] exp(S[k+1]) exp(-S[K]) = sum[m0] a(S[K]) and R[K] = sum over every
tile and key of a(S_all). The tiles partition the keys (the split's m < M), so the sums
and the max are over m.

Applies where nothing on the way may be absent (no filter, no masked read: a row with no
key would make S_all -inf and the closed form NaN where the recurrence keeps 0) and the
rescale factor is exactly exp(S[m1] - S[m1+1]) (the online rewrite's own form, with its
-inf guards, is not this one: it is derived, never written).
"""

from __future__ import annotations

import sympy

from ..analysis.presence import absent_tensors, einsum_conditions
from ..ir import Cascade, Einsum, Split
from ..ir import expr as ir
from .algebra import Algebra, NotAlgebraic, is_zero, rebuild, replace_reads
from .edit import assemble, fresh_name, splits_in_use, with_body
from .factor import inline
from .online import NEG_INF
from .steps import Step

OFFLINE = "closed form of an online recurrence"


def closed_forms(cascade: Cascade) -> tuple[Cascade, list[Step]]:
    """`cascade` with the running maxima and rescaled sums of each split read only at
    their final values replaced by their closed forms (module docstring), and the steps
    applied (none: the cascade itself)."""
    steps: list[Step] = []
    for split in cascade.splits:
        found = _Closing(cascade, split).closed()
        if found is not None:
            cascade, step = found
            steps.append(step)
    return cascade, steps


class _Closing:
    def __init__(self, cascade: Cascade, split: Split):
        self.cascade = cascade
        self.split = split
        self.k = cascade.ranks[split.outer].var
        self.j = cascade.ranks[split.inner].var
        self.m = cascade.ranks[split.parent].var
        self.key = ir.Op("+", (ir.Op("*", (ir.Index(self.k), ir.Dim(split.inner))),
                               ir.Index(self.j)))
        self.absent = absent_tensors(cascade)
        self.copies: dict[str, str] = {}      # tensor over (k, j) -> its copy over m
        self.einsums: list[Einsum] = []       # the new Einsums, in order
        self.taken: set[str] = set()

    # ---------------------------------------------------------------- recognition
    def closed(self) -> tuple[Cascade, Step] | None:
        cascade = self.cascade
        maxes = {e.tensor: x for e in cascade.einsums
                 if (x := self._running_max(e)) is not None}
        sums = {e.tensor: found for e in cascade.einsums
                if (found := self._rescaled_sum(e, maxes)) is not None}
        if not sums or not self._read_at_the_end_only(set(sums)):
            return None
        finals: dict[str, str] = {}
        for name, x in maxes.items():
            if any(s == name for s, _ in sums.values()):
                finals[name] = self._max_all(name, x)
                if finals[name] is None:
                    return None
        identities = []
        for name, (shift, tile_sum) in sums.items():
            proved = self._homogeneous(tile_sum, shift)
            if proved is None:
                return None
            identities.append(proved)
            total = self._sum_all(name, tile_sum, shift, finals[shift])
            if total is None:
                return None
            finals[name] = total
        rewritten = [self._with_finals(e, finals) for e in cascade.einsums]
        new = assemble(cascade, rewritten + self.einsums,
                       removable={e.tensor for e in cascade.einsums})
        # The split and its two ranks go where nothing is left over them.
        splits = splits_in_use(new.splits, new.tensors.values())
        dropped = {r for s in new.splits if s not in splits for r in (s.outer, s.inner)}
        ranks = {name: rank for name, rank in new.ranks.items() if name not in dropped}
        new = Cascade(new.name, ranks, splits, new.params, new.tensors, new.einsums,
                      new.outputs, new.source)
        if any(name in new.tensors for name in sums):
            return None
        summary = (f"{', '.join(f'{n}[.., {self.split.outer}]' for n in finals)} are the "
                   f"max and sums over every key {self.m}: "
                   f"{', '.join(finals[n] for n in finals)}")
        return new, Step(OFFLINE, summary, tuple(finals.values()), "; ".join(identities))

    def _present(self, name: str) -> bool:
        """Whether every point of `name` over m is present: it may be absent only past
        the last key (the split's last tile reads m1*M0 + m0 >= M), which the copy over
        m does not have."""
        if name not in self.absent:
            return True
        return all(self._past_the_keys(c) for c in
                   einsum_conditions(self.cascade, self.cascade.einsum(name), self.absent))

    def _past_the_keys(self, condition) -> bool:
        if condition.kind in ("split", "range"):
            return condition.variables <= {self.k, self.j} and not any(condition.parts)
        if condition.kind == "absent":
            return self._present(condition.read.tensor)
        return False

    def _own(self, einsum: Einsum) -> ir.Read:
        """The recurrence read at the step before its left side (`R[.., m1]`)."""
        return ir.Read(einsum.tensor, tuple(ir.Index(v) for v in einsum.indices))

    def _recurrence(self, einsum: Einsum, init: ir.Expr) -> bool:
        return einsum.iterative is not None and einsum.iter_var == self.k and \
            einsum.reduce_op is None and einsum.filter is None and einsum.init == init and \
            self._present(einsum.tensor)

    def _running_max(self, einsum: Einsum) -> ir.Read | None:
        """X of `S[m1+1] = max(S[m1], X)` with S[0] = -inf, X a tile max `max[m0] Y`."""
        if not self._recurrence(einsum, NEG_INF):
            return None
        body = einsum.body
        if not (isinstance(body, ir.Op) and body.op == "max" and len(body.args) == 2):
            return None
        own = self._own(einsum)
        for a, x in (body.args, tuple(reversed(body.args))):
            if a == own and isinstance(x, ir.Read) and x.tensor != einsum.tensor:
                tile = self.cascade.tensors[x.tensor]
                if tile.is_input:
                    return None
                source = self.cascade.einsum(x.tensor)
                if source.reduce_op == "max" and source.reduced == (self.j,) and \
                        source.filter is None and x == self._own(source):
                    return x
        return None

    def _rescaled_sum(self, einsum: Einsum, maxes: dict) -> tuple[str, Einsum] | None:
        """(S, A's Einsum) of `R[m1+1] = A[m1] + R[m1] * exp(S[m1] - S[m1+1])`, R[0] = 0,
        A a tile sum `sum[m0] ...`."""
        if not self._recurrence(einsum, ir.Const(0)):
            return None
        body = einsum.body
        if not (isinstance(body, ir.Op) and body.op == "+"):
            return None
        own = self._own(einsum)
        for a, rest in (body.args, tuple(reversed(body.args))):
            if not (isinstance(rest, ir.Op) and rest.op == "*" and own in rest.args):
                continue
            (factor,) = [x for x in rest.args if x != own] or [None]
            shift = self._rescale_of(factor, einsum, maxes)
            if shift is None or not isinstance(a, ir.Read) or \
                    self.cascade.tensors[a.tensor].is_input:
                continue
            source = self.cascade.einsum(a.tensor)
            if source.reduce_op == "sum" and source.reduced == (self.j,) and \
                    source.filter is None and a == self._own(source) and \
                    self._present(source.tensor):
                return shift, source
        return None

    def _rescale_of(self, factor, einsum: Einsum, maxes: dict) -> str | None:
        """S where `factor` is exp(S[.., m1] - S[.., m1+1]) (or a read of a tensor that
        is), at the recurrence's own point."""
        if isinstance(factor, ir.Read) and not self.cascade.tensors[factor.tensor].is_input:
            source = self.cascade.einsum(factor.tensor)
            if source.reduce_op is not None or source.filter is not None or \
                    factor != self._own(source):
                return None
            factor = source.body
        if not (isinstance(factor, ir.Op) and factor.op == "exp"):
            return None
        (difference,) = factor.args
        if not (isinstance(difference, ir.Op) and difference.op == "-"):
            return None
        before, after = difference.args
        for shift in maxes:
            recurrence = self.cascade.einsum(shift)
            at = self._own(recurrence)
            if before == at and after == self._after(at, recurrence.iterative) and \
                    tuple(before.indices) == tuple(self._own(einsum).indices)[:len(at.indices)]:
                return shift
        return None

    def _after(self, read: ir.Read, position: int) -> ir.Read:
        indices = list(read.indices)
        indices[position] = ir.Op("+", (ir.Index(self.k), ir.Const(1)))
        return ir.Read(read.tensor, tuple(indices))

    def _read_at_the_end_only(self, names: set[str]) -> bool:
        """Every read of these recurrences outside their own bodies is of the final
        value (M1 at the step's position)."""
        for einsum in self.cascade.einsums:
            for read in einsum.accesses():
                if read.tensor in names and read.tensor != einsum.tensor:
                    position = self.cascade.einsum(read.tensor).iterative
                    if read.indices[position] != ir.Dim(self.split.outer):
                        return False
        return not (names & set(self.cascade.outputs))

    # ---------------------------------------------------------------- proofs
    def _homogeneous(self, tile_sum: Einsum, shift: str) -> str | None:
        """The identity `a(s) exp(s)` free of s for A's term `a`, with the tensors
        between it and s inlined, proved; None where sympy cannot show it."""
        shift_read = self._after(self._own(self.cascade.einsum(shift)),
                                 self.cascade.einsum(shift).iterative)
        term = inline(self.cascade, tile_sum.body, 4)
        if shift_read not in list(ir.reads(term)):
            return None
        algebra = Algebra()
        try:
            value = algebra.to_sympy(term)
        except NotAlgebraic:
            return None
        s = algebra.to_sympy(shift_read)
        scaled = value * sympy.exp(s)
        if not is_zero(sympy.diff(scaled, s)):
            return None
        return f"d/ds ({ir.to_text(term)}) * exp(s) = 0 at s = {ir.to_text(shift_read)}"

    # ---------------------------------------------------------------- the copies over m
    def _fresh(self, base: str) -> str:
        name = fresh_name(self.cascade, base, self.taken)
        self.taken.add(name)
        return name

    def _max_all(self, shift: str, x: ir.Read) -> str | None:
        """S_all = max[m] Y, from X = max[m0] Y."""
        recurrence = self.cascade.einsum(shift)
        source = self.cascade.einsum(x.tensor)
        body = self._over_m(source.body, {})
        if body is None:
            return None
        name = self._fresh(f"{shift}_all")
        indices = tuple(v for v in recurrence.indices if v != self.k)
        self.einsums.append(Einsum(name, indices, body, "max", (self.m,),
                                   explicit_reduction=True))
        return name

    def _sum_all(self, name: str, tile_sum: Einsum, shift: str, shift_all: str) -> str | None:
        """R_all = sum[m] a(S_all)."""
        recurrence = self.cascade.einsum(shift)
        final = ir.Read(shift_all, tuple(ir.Index(v) for v in recurrence.indices
                                          if v != self.k))
        body = self._over_m(tile_sum.body, {shift: final})
        if body is None:
            return None
        total = self._fresh(f"{name}_all")
        indices = tuple(v for v in self.cascade.einsum(name).indices if v != self.k)
        self.einsums.append(Einsum(total, indices, body, "sum", (self.m,),
                                   explicit_reduction=True))
        return total

    def _over_m(self, expr: ir.Expr, shifts: dict[str, ir.Read]) -> ir.Expr | None:
        """`expr` over (m1, m0) as an expression over m: an input read at m1*M0 + m0 at
        m, a tensor over (m1, m0) as its copy over m, a shift read at m1 + 1 as its final
        value; None where anything else reads m1 or m0."""
        failed = []

        def over(node):
            if isinstance(node, ir.Index) and node.var in (self.k, self.j):
                failed.append(node)
                return node
            if not isinstance(node, ir.Read):
                return None
            if node.tensor in shifts:
                recurrence = self.cascade.einsum(node.tensor)
                if node == self._after(self._own(recurrence), recurrence.iterative):
                    return shifts[node.tensor]
                failed.append(node)
                return node
            tensor = self.cascade.tensors[node.tensor]
            if tensor.is_input:
                indices = tuple(ir.Index(self.m) if index == self.key else index
                                for index in node.indices)
                if any(v in (self.k, self.j) for i in indices for v in ir.index_vars(i)):
                    failed.append(node)
                return ir.Read(node.tensor, indices)
            copy = self._copy(node.tensor, shifts)
            source = self.cascade.einsum(node.tensor)
            if copy is None or node != self._own(source):
                failed.append(node)
                return node
            return ir.Read(copy, tuple(ir.Index(self.m if v == self.k else v)
                                       for v in source.indices if v != self.j))

        result = rebuild(expr, over)
        return None if failed else result

    def _copy(self, name: str, shifts: dict[str, ir.Read]) -> str | None:
        """The copy over m of a tensor over (m1, m0) (None where there is none)."""
        if name in self.copies:
            return self.copies[name]
        source = self.cascade.einsum(name)
        if not {self.k, self.j} <= set(source.indices) or source.iterative is not None or \
                source.filter is not None or not self._present(name) or \
                {self.k, self.j} & set(source.reduced):
            return None
        body = self._over_m(source.body, shifts)
        if body is None:
            return None
        copy = self._fresh(f"{name}_all")
        indices = tuple(self.m if v == self.k else v for v in source.indices if v != self.j)
        self.einsums.append(Einsum(copy, indices, body, source.reduce_op, source.reduced,
                                   explicit_reduction=source.explicit_reduction))
        self.copies[name] = copy
        return copy

    def _with_finals(self, einsum: Einsum, finals: dict[str, str]) -> Einsum:
        """`einsum` reading each final value R[.., M1] as R_all."""
        def final(node):
            if not isinstance(node, ir.Read) or node.tensor not in finals or \
                    node.tensor == einsum.tensor:
                return None
            position = self.cascade.einsum(node.tensor).iterative
            return ir.Read(finals[node.tensor], tuple(i for p, i in enumerate(node.indices)
                                                      if p != position))
        body = replace_reads(einsum.body, final)
        if body == einsum.body:
            return einsum
        return with_body(einsum, body=body)


__all__ = ["OFFLINE", "closed_forms"]
