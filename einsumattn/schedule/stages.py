"""Where a cascade is cut into fused kernels: the search for the fewest stages, each of
which one kernel computes, with the values that cross a cut in global memory.

The search is a schedule decision; whether one stage fuses is asked of the caller's
`fuse` (the Triton schedules), so this module prints nothing.
"""

from __future__ import annotations

import itertools
from typing import Callable, TypeVar

from ..analysis.presence import absent_tensors
from ..ir import Cascade
from ..transform.edit import splits_in_use

T = TypeVar("T")


class NotFusable(Exception):
    """The cascade does not fit the fused schedule (the reason is the message)."""


class Crossing(NotFusable):
    """A value one program computes is read by another (it must cross program tiles)."""


# At most this many stage kernels are tried while looking for cuts (each is a fuse()).
CUT_SEARCH_BUDGET = 120


def cut_stages(cascade: Cascade, fuse: Callable[[Cascade], T]) -> tuple[list[T], str | None]:
    """Fused kernels for a cascade (`fuse`: a cascade -> its kernel, or NotFusable): one
    if it fuses whole; else a sequence of stages, cut where a value must cross program
    tiles (written to global memory by one kernel, read by the next). Returns the kernels
    and the reasons for the cuts (None for one kernel): the reason for each cut is why
    the stages from there on did not fuse as one kernel. NotFusable (the whole cascade's
    reason) if no sequence of cuts works.

    Each stage is closed upwards within what is left (one or two tensors and what they
    need that no earlier stage computed); the smallest first stage whose remainder can be
    cut into the fewest stages is taken (two, then three, ...), within CUT_SEARCH_BUDGET
    tries."""
    try:
        return [fuse(cascade)], None
    except NotFusable as whole:
        reason = str(whole)
    order = [e.tensor for e in cascade.einsums]
    ancestors = {name: cascade.graph.ancestors(name) & set(order) for name in order}
    tried: dict[tuple[frozenset, frozenset], str | None] = {}
    plans: dict = {}

    def attempt(stage: frozenset, remaining: frozenset) -> str | None:
        """None if `stage` fuses as the first of `remaining`, else the reason."""
        key = (stage, remaining)
        if key not in tried:
            if len(tried) >= CUT_SEARCH_BUDGET:
                return "the search for cuts ran out of tries"
            try:
                fuse(stage_cascade(cascade, stage, remaining - stage, 0))
                tried[key] = None
            except NotFusable as why:
                tried[key] = str(why)
        return tried[key]

    def plan(remaining: frozenset, why: str, most: int):
        """At most `most` stages for `remaining` (which does not fuse whole, because
        `why`): (stages, reasons for the cuts), or None."""
        key = (remaining, most)
        if key in plans:
            return plans[key]
        plans[key] = None
        names = [n for n in order if n in remaining]
        candidates: list[frozenset] = []
        for count in (1, 2):
            for chosen in itertools.combinations(names, count):
                closure = frozenset(chosen).union(*(ancestors[n] & remaining for n in chosen))
                if len(closure) < len(remaining) and closure not in candidates:
                    candidates.append(closure)
        for first in sorted(candidates, key=len):
            if attempt(first, remaining) is not None:
                continue
            rest = remaining - first
            rest_why = attempt(rest, rest)
            if rest_why is None:
                found = ([rest], [])
            elif most > 2:
                found = plan(rest, rest_why, most - 1)
            else:
                continue
            if found is not None:
                plans[key] = ([first] + found[0], [why] + found[1])
                break
        return plans[key]

    everything = frozenset(order)
    found = None
    # Fewest kernels first: two stages, then three, ...
    for most in range(2, len(order) + 1):
        found = plan(everything, reason, most)
        if found is not None or len(tried) >= CUT_SEARCH_BUDGET:
            break
    if found is None:
        raise NotFusable(reason)
    stages, reasons = found
    kernels, done = [], frozenset()
    for number, stage in enumerate(stages, 1):
        later = everything - done - stage
        kernels.append(fuse(stage_cascade(cascade, stage, later, number)))
        done |= stage
    if len(reasons) == 1:
        return kernels, reasons[0]
    return kernels, "; ".join(f"{why} (before {kernel.name})"
                              for why, kernel in zip(reasons, kernels[1:]))


def stage_cascade(cascade: Cascade, stage: frozenset, later: frozenset, number: int) -> Cascade:
    """A sub-cascade: the stage's Einsums, with what earlier stages computed as inputs
    (from memory) and what later stages (or the caller) need as outputs."""
    einsums = [e for e in cascade.einsums if e.tensor in stage]
    needed_later = {r for e in cascade.einsums if e.tensor in later for r in e.reads} | \
        set(cascade.outputs)
    outputs = tuple(e.tensor for e in einsums if e.tensor in needed_later)
    reads = {r for e in einsums for r in e.reads}
    absent = absent_tensors(cascade)
    tensors = {}
    for name, tensor in cascade.tensors.items():
        if tensor.is_input and name in reads:
            tensors[name] = tensor
        elif name in reads and name not in stage:
            if tensor.iterative is not None:
                raise NotFusable(f"the recurrence {name} would cross a cut")
            if name in absent:
                # Memory holds values, not presence: a later stage would read 0 as present.
                raise NotFusable(f"{name} may be absent and would cross a cut")
            tensors[name] = type(tensor)(name, tensor.ranks, True, buffer=True)   # from memory
    for einsum in einsums:
        tensors[einsum.tensor] = cascade.tensors[einsum.tensor]
    if not outputs:
        raise NotFusable("a stage with no result")
    # A split the stage's tensors do not touch (the online rewrite's key tiles, beside a
    # stage of per-head helpers: the Differential Transformer's lambda) is not the stage's.
    splits = splits_in_use(cascade.splits, tensors.values())
    return Cascade(f"{cascade.name}_stage{number}", cascade.ranks, splits,
                   cascade.params, tensors, tuple(einsums), outputs, cascade.source)
