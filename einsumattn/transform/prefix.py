"""The prefix combine of a linear recurrence's states (LASP-2), derived and proved.

Where the outputs are indexed by the streamed rank T (gated linear attention: the
output at t reads the state after t), ranges of T cannot be merged into one state:
each range's outputs need the state of everything before it. But a linear recurrence

    S[x+1] = D[x] * S[x] + L[x]        (D and L not reading S; D = 1 when absent)

composes: a range turns an entering state S into P * S + S_range, where S_range is its
state from a zero start and P the product of its decays. So the state of a range is
(S_range, P), two adjacent ranges combine as

    S = P_b * S_a + S_b,    P = P_a * P_b

and a range's outputs follow from the state entering it. The pieces (transform/merge.py's
`Merge`, kind "prefix"):

    partial   the recurrence over a range of T (as written: rule 4's chunked form lacks
              the state after a partial last chunk), from a zero state: its state
              (S_range and P, a recurrence of the decays added beside S)
    combine   the states of two adjacent ranges, a before b
    finish    the recurrence over the range again, starting from the entering state
              (an input): the range's outputs

LASP-2 all-gathers the ranges' states (one per process) and combines the prefix before
each process; finish then runs its range once more. sympy proves the same laws as for
the merge (identity with S = 0 and P = 1, associativity, and step(merge(a, s), u) =
merge(a, step(s, u)) on the recurrence's own update); a recurrence not of this form is
refused with its update.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Cascade, Einsum, Tensor
from ..ir import expr as ir
from ..ir.printer import einsum_text
from .edit import assemble
from .states import (MERGE, Loop, Merge, Proof, StatePart, combine_cascade,
                     partial_cascade, positioned, reads_of, trimmed)
from .steps import Blocked


def derive_prefix(cascade: Cascade, rank: str, tile: int) -> Merge | Blocked:
    from . import rewrite
    from ..analysis.passes import rank_variables, traverses

    ranged = positioned(cascade, rank)
    if isinstance(ranged, Blocked):
        return ranged
    located, start, count, offsets = ranged
    # The recurrence as written, not rule 4's chunked form: that form reads each
    # chunk's total decay at its last position, which the last chunk of a range not a
    # multiple of the chunk does not have (its padding is absent), so its state after
    # the last chunk is absent; it is only ever read inside the range.
    derived = rewrite(located, tile=tile, chunked=False).cascade
    variables = rank_variables(derived, rank)
    recurrences = [e for e in derived.einsums if e.iter_var in variables]
    if not recurrences:
        return Blocked(MERGE, cascade.name, f"nothing recurs over {rank}")
    parts: list[StatePart] = []
    products: list[Einsum] = []
    decays: dict[str, ir.Expr] = {}
    for einsum in recurrences:
        form = _affine(derived, einsum)
        if isinstance(form, str):
            return Blocked(MERGE, einsum.tensor, form)
        decay, _ = form
        tensor = derived.tensors[einsum.tensor]
        ranks = tuple(r for n, r in enumerate(tensor.ranks) if n != einsum.iterative)
        end = derived.fresh_name(f"{einsum.tensor}_end")
        if decay is None:
            parts.append(StatePart(einsum.tensor, "sum", ranks, end))
            continue
        product = derived.fresh_name(f"P_{einsum.tensor}", {end})
        decays[einsum.tensor] = decay
        parts.append(StatePart(einsum.tensor, "affine", ranks, end, shift=product))
        parts.append(StatePart(product, "product", ranks,
                               derived.fresh_name(f"{product}_end", {end, product})))
        own = ir.Read(product, tuple(ir.Index(v) for v in einsum.indices))
        products.append(Einsum(product, einsum.indices, ir.Op("*", (own, decay)),
                               iterative=einsum.iterative, init=ir.Const(1.0)))
    with_products = assemble(derived, [*derived.einsums, *products])
    partial = partial_cascade(with_products, with_products.einsums, parts)
    split = next((s for s in derived.splits if s.parent == rank), None)
    outer = derived.ranks[split.outer].var if split else derived.ranks[rank].var
    # A recurrence over the rank itself steps one position at a time: no keys within.
    inner = derived.ranks[split.inner].var if split else ""
    body = [e for e in with_products.einsums if traverses(e, variables)]
    stateful = {p.name for p in parts}
    for einsum in body:
        if set(einsum.reads) & stateful:
            stateful.add(einsum.tensor)
    loop = Loop(rank, body, [], tuple(parts), outer, inner, stateful)
    combine = combine_cascade(with_products, loop.parts)
    proofs = Proof(with_products, loop, combine).run()
    if isinstance(proofs, Blocked):
        return proofs
    finish, entering = _resumed(derived, parts)
    return Merge(rank, tuple(parts), partial, combine, finish, start, count, offsets, None,
                 proofs, kind="prefix", entering=entering)


def _affine(derived: Cascade, einsum: Einsum):
    """(decay or None, the added term) of `S[x+1] = D * S[x] + L` (or `S[x] + L`, the
    product either way round) with init 0; else why not, as text."""
    name, position = einsum.tensor, einsum.iterative
    update = einsum_text(derived, einsum).splitlines()[-1]
    why = (f"its update {update} is not S[x+1] = D * S[x] + L with D and L free of "
           f"{name}, from 0")

    def own(node: ir.Expr) -> bool:
        return isinstance(node, ir.Read) and node.tensor == name and \
            node.indices[position] == ir.Index(einsum.iter_var)

    body = einsum.body
    if einsum.init != ir.Const(0.0) or einsum.reduce_op is not None or \
            not (isinstance(body, ir.Op) and body.op == "+"):
        return why
    for scaled, added in (body.args, body.args[::-1]):
        if name in reads_of(added):
            continue
        if own(scaled):
            return None, added
        if isinstance(scaled, ir.Op) and scaled.op == "*":
            for state, decay in (scaled.args, scaled.args[::-1]):
                if own(state) and name not in reads_of(decay):
                    return decay, added
    return why


def _resumed(derived: Cascade, parts: list[StatePart]) -> tuple[Cascade, dict[str, str]]:
    """The derived cascade with each recurrence starting from an input, the state
    entering the range: its outputs are the range's. Returns it and {input: part}."""
    holds: dict[str, str] = {}
    entering: dict[str, Tensor] = {}
    einsums = []
    for einsum in derived.einsums:
        part = next((p for p in parts if p.name == einsum.tensor), None)
        if part is not None:
            name = derived.fresh_name(f"{einsum.tensor}_in", set(holds))
            holds[name] = part.name
            entering[name] = Tensor(name, part.ranks, True)
            indices = tuple(ir.Index(v) for n, v in enumerate(einsum.indices)
                            if n != einsum.iterative)
            einsum = replace(einsum, init=ir.Read(name, indices))
        einsums.append(einsum)
    # The entering state after the spec's inputs: the finish takes them in that order.
    tensors = {**{t.name: t for t in derived.inputs}, **entering,
               **{n: t for n, t in derived.tensors.items() if not t.is_input}}
    result = replace(derived, tensors=tensors, einsums=tuple(einsums))
    return trimmed(result, f"{derived.name}_finish"), holds


__all__ = ["derive_prefix"]
