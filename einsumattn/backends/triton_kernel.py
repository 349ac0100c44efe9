"""What the fused Triton schedules share: the kernel record, the program's coordinates,
and the kernel's arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..ir import Cascade


@dataclass
class FusedKernel:
    name: str
    source: list[str]
    host: list[str]                 # host statements: allocate outputs, launch
    tuning: dict
    description: str                # for the module's docstring
    pruned: dict                    # pass -> (lower bound text | None, upper bound text | None)
    # The schedule as data (tests and tools read it): "form" ("attention", "split",
    # "tiles" or "steps") and the ranks each role went to.
    facts: dict = field(default_factory=dict)


def program_coordinates(cascade: Cascade, batch: list[str], row: str, block: str) -> list[str]:
    """Kernel lines: the program's point of each batch rank (grid axis 1, row-major) and
    its tile of `block` points of the row rank (grid axis 0), in int64."""
    lines = ["    batch = tl.program_id(1).to(tl.int64)"]
    rest = "batch"
    for var in reversed(batch):
        if var == batch[0]:
            lines.append(f"    {var} = {rest}")
        else:
            lines.append(f"    {var} = {rest} % {cascade.var_rank(var)}")
            lines.append(f"    rest = {rest} // {cascade.var_rank(var)}")
            rest = "rest"
    lines.append(f"    {row} = tl.program_id(0).to(tl.int64) * {block} + tl.arange(0, {block})")
    return lines


def kernel_arguments(cascade: Cascade, body: str, outputs: list[str]) -> tuple[list[str],
                                                                                list[str]]:
    """A fused kernel's arguments and the host expressions passed for them: output and
    input pointers (the inputs its body loads), their strides, the sizes and params it
    uses."""
    body = re.sub(r"#.*", "", body)     # what the comments restate is not used
    inputs = [t.name for t in cascade.inputs if re.search(rf"\b{t.name}_ptr\b", body)]
    args = [f"{o}_ptr" for o in outputs] + [f"{i}_ptr" for i in inputs]
    host = list(outputs) + inputs
    for tensor in outputs + inputs:
        for position in range(len(cascade.tensors[tensor].ranks)):
            args.append(f"{tensor}_s{position}")
            host.append(f"{tensor}.stride({position})")
    used = [n for n in list(cascade.ranks) + list(cascade.params)
            if re.search(rf"\b{re.escape(n)}\b", body)]
    return args + used, host + used
