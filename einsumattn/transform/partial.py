"""Partial sums: a sum over several ranks as a sum, over all but one of them, of
per-point sums over that one.

    X[o] = sum[r, s] body where F and G    (G: the conditions that read s, F: the others)
      ->
    X_s[o', r] = sum[s] body where G       (o': the variables of o the body or G reads)
    X[o]       = sum[r] X_s[o', r] where F

Exact for any sum of finite terms: the terms are the same, grouped by r first (a
finite sum is associative and commutative; the conditions of F hold for a whole group
or for none of it, since F does not read s). A group with no present term is absent in
X_s and adds no term to X, as its terms added none before. No algebra is needed: the
split is exact by construction.

Why: the attention schedule streams one rank per kernel, and a gradient that sums
over several (GQA's dK sums the query heads of a group and the queries; a learnable
per-head input's gradient sums the batch, the queries and the keys) is then computed
as FlashAttention-2 computes GQA's: per head in the kernel that streams the sequence,
then summed over the heads of a group by a small kernel of its own, deterministically
(schedule/training.py).
"""

from __future__ import annotations

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from .edit import assemble, fresh_name


def partial_sum(cascade: Cascade, tensor: str, inner: str) -> tuple[Cascade, str] | None:
    """`cascade` with the sum that defines `tensor` split into a partial sum over the
    variable `inner` and a sum of the partials over the other reduced variables (module
    docstring), and the partial's name; None where the split does not apply: not a sum
    over `inner` and at least one other variable, or a recurrence. A condition that
    reads `inner` stays in the partial, whose left side then keeps what it reads."""
    einsum = cascade.einsum(tensor)
    if einsum.reduce_op != "sum" or inner not in einsum.reduced or \
            len(einsum.reduced) < 2 or einsum.iterative is not None:
        return None
    outer = [v for v in einsum.reduced if v != inner]
    inner_conditions, outer_conditions = [], []
    for condition in ir.conjuncts(einsum.filter):
        (inner_conditions if inner in ir.index_vars(condition) else
         outer_conditions).append(condition)
    read = set(ir.index_vars(einsum.body))
    for condition in inner_conditions:
        read |= set(ir.index_vars(condition))
    # The partial's left side: the variables of the left side the body (or a condition
    # of the partial) reads, and the outer reduced ones, in the order of the ranks.
    kept = (read | set(outer)) - {inner}
    order = [rank.var for rank in cascade.ranks.values()]
    indices = tuple(v for v in order if v in kept)
    name = fresh_name(cascade, f"{tensor}_{inner}")
    partial = Einsum(name, indices, einsum.body, "sum", (inner,),
                     ir.conjunction(inner_conditions), explicit_reduction=True)
    total = Einsum(tensor, einsum.indices,
                   ir.Read(name, tuple(ir.Index(v) for v in indices)), "sum", tuple(outer),
                   ir.conjunction(outer_conditions), explicit_reduction=True)
    einsums = []
    for e in cascade.einsums:
        einsums += [partial, total] if e.tensor == tensor else [e]
    return assemble(cascade, einsums), name


__all__ = ["partial_sum"]
