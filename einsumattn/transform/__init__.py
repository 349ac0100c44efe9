"""Rewrites: Cascade -> Cascade, each applied only where its algebraic condition holds.

    result = einsumattn.transform.rewrite(cascade)      # or einsumattn.rewrite(path)
    result.cascade     # the derived cascade (fewest passes this stage can justify)
    result.steps       # what was applied, with the identity sympy proved
    result.blocked     # what could not be rewritten in the passes that remain, and why
    print(result.text())   # `.attn` source that parses back to result.cascade

The rules, in the order they run (docs/rewrites.md):
0. canonical form (canonical.py): factors and terms out of contractions, logs out of
   exponentials, -inf masks and identity-masked terms to filters, a scale before the
   max-shift, each filter once (`result.canonical` lists these steps,
   `result.canonical_blocked` those refused; `result.steps` the others);
1. factor out of a sum (factor.py): deferred division and scaling;
2. separable moments (factor.py): sums of products split per factor;
3. online max-shift (online.py): split the streamed rank and carry a running max;
4. chunked form of a linear recurrence (chunked.py): a state over T in chunks of `tile`
   steps, a masked attention inside each chunk and one state update per chunk.
A step is kept only if no rank's pass count grows; rules 1 and 2 run to a fixed point
before rule 3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ..analysis.passes import analyse_passes, fully_reduces, rank_variables
from ..defaults import DEFAULT_TILE
from ..ir import Cascade
from ..ir.memo import per_cascade
from ..ir.printer import cascade_text
from .canonical import canonicalize
from .chunked import CHUNKED, chunk_recurrences
from .factor import factor_sums
from .online import ONLINE, SPLIT, online_max_shift, split_rank
from .steps import Blocked, Step


@dataclass
class Rewritten:
    original: Cascade
    cascade: Cascade
    steps: list[Step] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    # Rule 0 (canonical.py): the spelling steps, which change no pass count, and the
    # steps it refused, each with its reason (all of them: `blocked` keeps only the notes
    # that explain a remaining pass).
    canonical: list[Step] = field(default_factory=list)
    canonical_blocked: list[Blocked] = field(default_factory=list)

    @property
    def applied(self) -> list[Step]:
        """Every step, the canonical form's first."""
        return self.canonical + self.steps

    def passes(self, which: str = "after") -> dict[str, int]:
        cascade = self.cascade if which == "after" else self.original
        return {rank: info.passes for rank, info in analyse_passes(cascade).items()
                if cascade.ranks[rank].split_of is None}

    def change(self, only_changed: bool = True) -> str:
        """`M 3 -> 1`: passes per rank before and after (the ranks that changed)."""
        before, after = self.passes("before"), self.passes("after")
        changes = [f"{r} {before[r]} -> {after.get(r, before[r])}" for r in before
                   if not only_changed or before[r] != after.get(r, before[r])]
        return ", ".join(changes) + " passes" if changes else "same passes"

    def text(self) -> str:
        """The derived cascade as `.attn` source: a header naming each step, and a
        comment above every Einsum a step wrote."""
        source = self.original.source.filename if self.original.source else "<spec>"
        header = [f"# Derived by `einsumattn rewrite` from {source}.",
                  "# passes: " + self.change(only_changed=False).removesuffix(" passes")]
        if not self.applied:
            header.append("# No rewrite applies: this is the spec's own pass structure.")
        comments: dict[str, str] = {}
        for step in self.canonical:
            header.append(f"# canonical form, {step.comment()}")
            header.append(f"#   proved: {step.identity}")
            for tensor in step.tensors:
                comments.setdefault(tensor, f"canonical form: {step.rule}")
        for number, step in enumerate(self.steps, 1):
            header.append(f"# step {number}, {step.comment()}")
            header.append(f"#   proved: {step.identity}")
            for tensor in step.tensors:
                comments.setdefault(tensor, f"step {number}: {step.rule}")
        for note in self.blocked:
            header.append(f"# not rewritten: {note.explain()}")
        return "\n".join(header) + "\n" + cascade_text(self.cascade, comments)


def _worse(before: Cascade, after: Cascade) -> str | None:
    old = analyse_passes(before)
    new = analyse_passes(after)
    for rank, info in new.items():
        if rank in old and info.passes > old[rank].passes:
            return f"passes over {rank} would grow from {old[rank].passes} to {info.passes}"
    return None


def rewrite(spec: "str | os.PathLike | Cascade", *, tile: int = DEFAULT_TILE,
            online: bool = True, canonical: bool = True, chunked: bool = True,
            chunk: int | None = None) -> Rewritten:
    """Derive the fewest-pass cascade. `tile` is the split factor the online max-shift
    gives the streamed rank (the key tile of the fused kernel: a power of two >= 16
    there; any positive integer for the oracle), and the chunk of rule 4 unless `chunk`
    says otherwise. `canonical` runs rule 0 first; `chunked` rule 4."""
    from ..loader import load

    original = spec if isinstance(spec, Cascade) else load(spec)
    derived = _rewrite(original, tile, online, canonical, chunked and (chunk or tile))
    # The same derivation, in lists of its own (the cascades are immutable and shared).
    return replace(derived, steps=list(derived.steps), blocked=list(derived.blocked),
                   canonical=list(derived.canonical),
                   canonical_blocked=list(derived.canonical_blocked))


@per_cascade
def _rewrite(original: Cascade, tile: int, online: bool, canonical: bool,
             chunked: int) -> Rewritten:
    """`rewrite` of a cascade, derived once per cascade and options: compiling asks for
    it from several stages, and what they derive from it is memoized on its cascades."""
    start, spelling, refused = canonicalize(original) if canonical else (original, [], [])
    cascade, steps, blocked = factor_sums(start)
    blocked = refused + blocked
    if _worse(original, cascade):  # the rules never do this; refuse rather than trust
        cascade, steps, spelling = original, [], []
    if online:
        cascade, more, notes = _online(cascade, tile)
        steps += more
        blocked += notes
    if chunked:
        result, more, notes = chunk_recurrences(cascade, chunked)
        if more and not _worse(cascade, result):
            # Rule 0 again on what rule 4 wrote: a decay per head (no feature rank)
            # leaves the chunk's attention as a plain contraction, q k^T, times it.
            tidied, spelled, _ = canonicalize(result) if canonical else (result, [], [])
            cascade, steps = tidied, steps + more + spelled
        blocked += notes
    return Rewritten(original, cascade, steps, _still_relevant(cascade, blocked), spelling,
                     refused)


def _streamed_rank(cascade: Cascade) -> str | None:
    """The rank the online rule splits: the analysis's primary rank (the one the fused
    schedule streams), if it still takes more than one pass."""
    from ..analysis import analyze

    rank = analyze(cascade).primary_rank
    passes = analyse_passes(cascade)
    if rank is None or rank not in passes or passes[rank].passes < 2:
        return None
    return rank


def _online(cascade: Cascade, tile: int) -> tuple[Cascade, list[Step], list[Blocked]]:
    rank = _streamed_rank(cascade)
    if rank is None:
        return cascade, [], []
    variables = rank_variables(cascade, rank)
    maxima = [e for e in cascade.einsums if e.reduce_op == "max" and e.iterative is None
              and fully_reduces(e, variables)]
    if not maxima:
        return cascade, [], []
    split = split_rank(cascade, rank, tile)
    if isinstance(split, Blocked):
        return cascade, [], [split]
    current, outer, inner = split
    steps: list[Step] = []
    notes: list[Blocked] = []
    for name in [e.tensor for e in maxima]:
        result = online_max_shift(current, outer, inner, current.einsum(name))
        if isinstance(result, Blocked):
            notes.append(result)
            continue
        candidate, step, blocked = result
        worse = _worse(cascade, candidate)
        if worse:
            notes.append(Blocked(ONLINE, name, worse))
            continue
        current = candidate
        steps.append(step)
        notes += blocked
    if not steps:
        return cascade, [], notes
    split_step = Step(SPLIT, f"{rank} -> {current.ranks[current.var_rank(outer)].name}, "
                             f"{current.ranks[current.var_rank(inner)].name} by {tile} "
                             f"(m = {outer}*{current.var_rank(inner)} + {inner}; the last "
                             f"tile's padding is absent)", (),
                      "a bijection of m onto the present (m1, m0)")
    return current, [split_step, *steps], notes


def _still_relevant(cascade: Cascade, blocked: list[Blocked]) -> list[Blocked]:
    """Notes about tensors that still run after the first pass of some rank: those
    explain why the remaining passes are the lower bound for this cascade."""
    late = set()
    for info in analyse_passes(cascade).values():
        late |= {name for name, number in info.pass_of.items() if number > 1}
    seen, kept = set(), []
    for note in blocked:
        if note.tensor in late and (note.rule, note.tensor) not in seen:
            seen.add((note.rule, note.tensor))
            kept.append(note)
    return kept


__all__ = ["rewrite", "Rewritten", "Step", "Blocked", "DEFAULT_TILE", "CHUNKED"]
