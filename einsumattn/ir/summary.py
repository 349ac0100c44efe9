"""A one-screen summary of a Cascade, for `einsumattn parse`."""

from __future__ import annotations

from .cascade import Cascade
from .expr import to_text
from .printer import lhs_text, rhs_text


def summary(cascade: Cascade) -> str:
    source = cascade.source.filename if cascade.source else "<spec>"
    lines = [f"{cascade.name}  ({source}): ok", ""]
    split_parts = {p: s for s in cascade.splits for p in (s.outer, s.inner)}
    ranks = []
    for rank in cascade.ranks.values():
        if rank.name in split_parts:
            continue
        if rank.definition is not None:      # dims P = M, G = H // KH: P=M  G=H//KH
            ranks.append(f"{rank.name}={to_text(rank.definition).replace(' ', '')}")
            continue
        ranks.append(f"{rank.name}={rank.fixed}" if rank.fixed is not None else rank.name)
    lines.append(f"ranks    {'  '.join(ranks)}")
    for split in cascade.splits:
        lines.append(f"split    {split.parent} -> {split.outer}, {split.inner}: "
                     f"{split.inner} = {split.factor}, {split.outer} = ceil({split.parent} / "
                     f"{split.inner}), {split.parent.lower()} = {split.outer.lower()}*"
                     f"{split.inner} + {split.inner.lower()}")
    inputs = [f"{t.name}[{', '.join(cascade.ranks[r].var for r in t.ranks)}]"
              if t.ranks else t.name for t in cascade.inputs]
    lines.append(f"inputs   {'  '.join(inputs)}")
    if cascade.params:
        params = [f"{p.name} = {to_text(p.default)}" if p.default is not None
                  else f"{p.name} (required)" for p in cascade.params.values()]
        lines.append(f"params   {'  '.join(params)}")
    lines.append("")
    lines.append(f"Einsums in dataflow order ({len(cascade.einsums)}):")
    width = max((len(lhs_text(cascade, e)) for e in cascade.einsums), default=0)
    for number, einsum in enumerate(cascade.einsums, 1):
        lhs = lhs_text(cascade, einsum).ljust(width)
        reads = ", ".join(einsum.reads) or "-"
        line = f"  {number:>2}  {lhs} = {rhs_text(einsum)}"
        lines.append(f"{line}    <- {reads}")
        if einsum.init is not None:
            lines.append(f"      {' ' * width}   recurrence over "
                         f"{cascade.var_rank(einsum.iter_var)}, init {to_text(einsum.init)}")
    lines.append("")
    lines.append(f"output   {', '.join(cascade.outputs)}")
    return "\n".join(lines)
