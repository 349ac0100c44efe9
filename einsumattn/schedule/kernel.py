"""What a kernel reads, from the schedule rather than from its printed text: the inputs
the Einsums it computes load, and the sizes and params they receive."""

from __future__ import annotations

from ..ir import Cascade, Einsum
from ..ir import expr as ir


def loaded_inputs(cascade: Cascade, einsums: list[Einsum]) -> tuple[str, ...]:
    """The inputs `einsums` read, in declaration order."""
    read = {r for e in einsums for r in e.reads}
    return tuple(t.name for t in cascade.inputs if t.name in read)


def scalars(cascade: Cascade, einsums: list[Einsum]) -> tuple[str, ...]:
    """The sizes and params a kernel computing `einsums` receives: the ranks of their
    variables and of the tensors they touch (with the ranks a split rank is part of), and
    the sizes and params their expressions name; in the cascade's order."""
    ranks, params = set(), set()
    for einsum in einsums:
        ranks |= {cascade.var_rank(v) for v in einsum.variables}
        for tensor in [einsum.tensor, *einsum.reads]:
            ranks |= set(cascade.tensors[tensor].ranks)
        for expr in (einsum.body, einsum.filter, einsum.init):
            for node in ir.walk(expr) if expr is not None else ():
                if isinstance(node, ir.Dim):
                    ranks.add(node.rank)
                elif isinstance(node, ir.Param):
                    params.add(node.name)
    for rank in list(ranks):
        ranks.add(cascade.root_rank(rank))
    return tuple([r for r in cascade.ranks if r in ranks] +
                 [p for p in cascade.params if p in params])
