"""Cascade -> `.attn` source text.

The printed text parses back to an equal Cascade (tests check the round trip for every
example), so it is how later stages show a rewritten cascade to a person. Reductions are
always printed explicitly (`sum[e] ...`), which also documents implicit ones.
"""

from __future__ import annotations

from .cascade import Cascade, Einsum
from .expr import to_text


def lhs_text(cascade: Cascade, einsum: Einsum, init: bool = False) -> str:
    if not einsum.indices:
        return einsum.tensor
    parts = []
    for position, var in enumerate(einsum.indices):
        if position == einsum.iterative:
            parts.append("0" if init else f"{var}+1")
        else:
            parts.append(var)
    return f"{einsum.tensor}[{', '.join(parts)}]"


def rhs_text(einsum: Einsum) -> str:
    body = to_text(einsum.body)
    if einsum.reduce_op is not None:
        body = f"{einsum.reduce_op}[{', '.join(einsum.reduced)}] {body}"
    if einsum.filter is not None:
        body += f" where {to_text(einsum.filter)}"
    return body


def einsum_text(cascade: Cascade, einsum: Einsum) -> str:
    """The Einsum as one spec statement (plus its init line, for a recurrence)."""
    line = f"{lhs_text(cascade, einsum)} = {rhs_text(einsum)}"
    if einsum.init is not None:
        return f"init {lhs_text(cascade, einsum, init=True)} = {to_text(einsum.init)}\n{line}"
    return line


def cascade_text(cascade: Cascade, comments: dict[str, str] | None = None) -> str:
    """The whole cascade as `.attn` source. `comments` maps a tensor name to a comment
    printed above its Einsum (used to say which rewrite produced it)."""
    split_parts = {p for s in cascade.splits for p in (s.outer, s.inner)}
    lines = [f"attention {cascade.name}", ""]
    dims = [f"{r.name} = {r.fixed}" if r.fixed is not None else
            f"{r.name} = {to_text(r.definition)}" if r.definition is not None else r.name
            for r in cascade.ranks.values() if r.name not in split_parts]
    if dims:
        lines.append(f"dims {', '.join(dims)}")
    inputs = []
    for tensor in cascade.inputs:
        if tensor.ranks:
            variables = ", ".join(cascade.ranks[r].var for r in tensor.ranks)
            inputs.append(f"{tensor.name}[{variables}]")
        else:
            inputs.append(tensor.name)
    if inputs:
        lines.append(f"input {', '.join(inputs)}")
    for param in cascade.params.values():
        default = f" = {to_text(param.default)}" if param.default is not None else ""
        lines.append(f"param {param.name}{default}")
    for split in cascade.splits:
        if split.tunable:
            lines.append(f"# {split.inner}: the key tile of a rewrite, {split.factor} by default; "
                         f"every tile gives the same result")
        lines.append(f"split {split.parent} -> {split.outer}, {split.inner} by {split.factor}")
    lines.append("")
    for einsum in cascade.einsums:
        if comments and einsum.tensor in comments:
            lines.extend(f"# {line}" for line in comments[einsum.tensor].splitlines())
        lines.append(einsum_text(cascade, einsum))
    lines.append("")
    lines.append(f"output {', '.join(cascade.outputs)}")
    return "\n".join(lines) + "\n"
