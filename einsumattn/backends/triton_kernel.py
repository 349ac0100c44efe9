"""What the fused Triton schedules share: the kernel record, the program's coordinates,
and the kernel's arguments."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Cascade
from ..schedule.model import KernelSchedule


@dataclass
class FusedKernel:
    name: str
    source: list[str]
    host: list[str]                 # host statements: allocate outputs, launch
    tuning: dict
    schedule: KernelSchedule        # what it computes and how, as data

    @property
    def description(self) -> str:   # for the module's docstring
        return self.schedule.description


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


def kernel_arguments(cascade: Cascade, schedule: KernelSchedule) -> tuple[list[str],
                                                                          list[str]]:
    """A fused kernel's arguments and the host expressions passed for them, from its
    schedule: output and input pointers, their strides, the sizes and params."""
    tensors = list(schedule.outputs) + list(schedule.inputs)
    args = [f"{t}_ptr" for t in tensors]
    host = list(tensors)
    for tensor in tensors:
        for position in range(len(cascade.tensors[tensor].ranks)):
            args.append(f"{tensor}_s{position}")
            host.append(f"{tensor}.stride({position})")
    return args + list(schedule.scalars), host + list(schedule.scalars)
