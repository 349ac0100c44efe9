"""Building the Cascade a rewrite returns: new tensors, dataflow order, dead code.

Rewrites never patch an existing Cascade: they list the Einsums of the new one and call
`assemble`, which derives the tensors' ranks from the Einsums, drops what the rewrite
left unread, and orders Einsums by dataflow (keeping the given order among
independent ones, so the printed cascade reads in the order the rewrite wrote it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable


from ..ir import Cascade, Einsum, Rank, Split, Tensor
from ..ir.cascade import dataflow_graph
from ..analysis.passes import analyse_rank


def tensor_of(cascade: Cascade, einsum: Einsum, ranks: dict[str, Rank]) -> Tensor:
    """The tensor an Einsum defines, its ranks read off its left side."""
    by_var = {rank.var: name for name, rank in ranks.items()}
    old = cascade.tensors.get(einsum.tensor)
    return Tensor(einsum.tensor, tuple(by_var[v] for v in einsum.indices), False,
                  einsum.iterative, old.span if old is not None else None)


def assemble(cascade: Cascade, einsums: list[Einsum], *,
             ranks: dict[str, Rank] | None = None,
             splits: tuple[Split, ...] | None = None,
             removable: set[str] = frozenset()) -> Cascade:
    """The new Cascade. Of the tensors in `removable` (those the rewrite stopped
    reading), the ones nothing reads any more are dropped; the spec's own unused
    tensors are never touched."""
    ranks = dict(cascade.ranks if ranks is None else ranks)
    splits = cascade.splits if splits is None else splits
    while True:
        read = {name for e in einsums for name in e.reads if name != e.tensor}
        dead = {e.tensor for e in einsums if e.tensor in removable and e.tensor not in read
                and e.tensor not in cascade.outputs}
        if not dead:
            break
        einsums = [e for e in einsums if e.tensor not in dead]
    by_name = {e.tensor: e for e in einsums}
    inputs = {t.name: t for t in cascade.tensors.values() if t.is_input}
    defined = {e.tensor: tensor_of(cascade, e, ranks) for e in einsums}
    graph = dataflow_graph([*inputs.values(), *defined.values()], einsums)
    position = {e.tensor: i for i, e in enumerate(einsums)}
    order = graph.topological_order(
        key=lambda n: (0, 0) if n not in position else (1, position[n]))
    ordered = [by_name[name] for name in order if name in position]
    tensors = {**inputs, **{e.tensor: defined[e.tensor] for e in ordered}}
    return Cascade(cascade.name, ranks, tuple(splits), dict(cascade.params), tensors,
                   tuple(ordered), cascade.outputs, cascade.source)


def splits_in_use(splits, tensors) -> tuple[Split, ...]:
    """The splits whose parts some of `tensors` has: a split whose tensors are gone (a
    closed form over the whole rank, a stage of per-head helpers) is no longer the
    cascade's, and the schedules would refuse it for nothing."""
    used = {rank for tensor in tensors for rank in tensor.ranks}
    return tuple(split for split in splits if {split.outer, split.inner} & used)


def fixed_point(cascade: Cascade, rule: Callable, rounds: int):
    """Apply `rule(cascade, einsum)` (None: nothing to do; a Blocked note; or the new
    cascade and its Step) to the first Einsum it changes, again and again, until it
    changes none or `rounds` are spent. Returns the cascade, the steps and the notes
    still standing (one per tensor)."""
    from .steps import Blocked
    steps, blocked = [], {}
    for _ in range(rounds):
        for einsum in cascade.einsums:
            result = rule(cascade, einsum)
            if isinstance(result, Blocked):
                blocked[einsum.tensor] = result
            elif result is not None:
                cascade, step = result
                blocked.pop(einsum.tensor, None)
                steps.append(step)
                break
        else:
            break
    return cascade, steps, list(blocked.values())


def fresh_name(cascade: Cascade, base: str, taken: set[str] = frozenset()) -> str:
    """`base`, or `base2`, `base3`, ... : a name no tensor, rank, param or variable has."""
    return cascade.fresh_name(base, taken)


def late_tensors(cascade: Cascade, rank: str) -> set[str]:
    """Tensors whose values exist only after a full traversal of `rank` (a reduction of
    it, or anything computed from one): reading them while traversing `rank` again is
    a read-read dependency."""
    ready = analyse_rank(cascade, rank).ready
    return {name for name, level in ready.items() if level > 0}


def with_body(einsum: Einsum, **changes) -> Einsum:
    """A copy of an Einsum with fields changed; the span is dropped (new code)."""
    return replace(einsum, span=None, **changes)
