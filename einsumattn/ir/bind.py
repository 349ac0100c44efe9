"""Binding: concrete rank sizes and param values for one evaluation of a cascade.

Sizes come from fixed dims, from the shapes of the inputs, from sizes given by name
(`--shapes M=64`), and from splits (M0 = factor, M1 = ceil(M / M0)). Params come from
overrides, else from their defaults. Every mismatch is a `BindError` saying which
input, which rank, what was expected and what was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..diagnostics import BindError
from . import expr as ir
from .cascade import Cascade
from .divisors import checked_divisors, divisor_problem, size_value
from .semantics import apply


@dataclass(frozen=True)
class Binding:
    sizes: dict[str, int]
    params: dict[str, float]

    def extent(self, cascade: Cascade, tensor: str) -> tuple[int, ...]:
        """Concrete shape of a tensor (size + 1 at an iterative position)."""
        t = cascade.tensors[tensor]
        return tuple(self.sizes[r] + (1 if i == t.iterative else 0)
                     for i, r in enumerate(t.ranks))


def bind(cascade: Cascade, *, shapes: Mapping[str, Sequence[int]] | None = None,
         sizes: Mapping[str, int] | None = None,
         params: Mapping[str, float] | None = None) -> Binding:
    """Bind rank sizes and param values; raise BindError with a clear message."""
    known: dict[str, int] = {}
    origin: dict[str, str] = {}
    split_parts = {part: s for s in cascade.splits for part in (s.outer, s.inner)}

    def set_size(rank: str, value: int, where: str) -> None:
        if rank in known and known[rank] != value:
            raise BindError(f"rank {rank} is {value} from {where}, but {known[rank]} from "
                            f"{origin[rank]}")
        known[rank] = value
        origin[rank] = where

    for name, rank in cascade.ranks.items():
        if rank.fixed is not None and name not in split_parts:
            set_size(name, rank.fixed, "its fixed size in the spec")

    for name, value in (sizes or {}).items():
        if name not in cascade.ranks:
            raise BindError(f"unknown rank '{name}' in the sizes given; the ranks are "
                            f"{', '.join(cascade.ranks)}")
        if name in split_parts and split_parts[name].tunable and name == split_parts[name].inner:
            _check_positive(name, value, "the sizes given")
            set_size(name, int(value), "the sizes given (the split's tile)")
            continue
        if cascade.ranks[name].sized:
            given = ", ".join(sorted(_dims_of(cascade.ranks[name].definition)))
            raise BindError(f"rank {name} is {ir.to_text(cascade.ranks[name].definition)}, "
                            f"computed and never given; give the size of {given} instead")
        if name in split_parts:
            raise BindError(f"rank {name} is a part of the split of "
                            f"{split_parts[name].parent}; give {split_parts[name].parent}'s "
                            f"size instead")
        _check_positive(name, value, "the sizes given")
        set_size(name, int(value), "the sizes given")

    for tensor in cascade.inputs:
        if shapes is None or tensor.name not in shapes:
            continue
        shape = tuple(shapes[tensor.name])
        if len(shape) != len(tensor.ranks):
            ranks = ", ".join(tensor.ranks) or "none: a scalar"
            raise BindError(f"input {tensor.name} has {len(tensor.ranks)} rank(s) "
                            f"({ranks}) but was given shape {shape}")
        for position, (rank, extent) in enumerate(zip(tensor.ranks, shape)):
            where = f"input {tensor.name} (position {position}, shape {shape})"
            _check_positive(rank, extent, where)
            if rank in split_parts or cascade.ranks[rank].sized:
                continue  # checked against the derived or computed size below
            set_size(rank, int(extent), where)

    values: dict[str, float] = {}
    overrides = dict(params or {})
    for name in overrides:
        if name not in cascade.params:
            known_params = ", ".join(cascade.params) or "none"
            raise BindError(f"unknown param '{name}'; the spec's params are {known_params}")

    def param(name: str) -> float:
        if name not in values:
            if name in overrides:
                values[name] = float(overrides[name])
            else:
                default = cascade.params[name].default
                if default is None:
                    raise BindError(f"param '{name}' has no default and was not given")
                values[name] = float(_scalar(default, size, param))
        return values[name]

    def size(rank: str) -> int:
        if rank in known:
            return known[rank]
        definition = cascade.ranks[rank].definition
        if definition is not None:     # dims P = M, G = H // KH: computed from its dims
            dims = {dim: size(dim) for dim in sorted(_dims_of(definition))}
            problem = sized_problem(cascade, rank)
            value = size_value(definition, dims)
            for divisor in _divisors_of(definition):
                if size_value(divisor, dims) < 1:
                    raise BindError(problem["divisor"].format(
                        divisor=ir.to_text(divisor), value=size_value(divisor, dims),
                        sizes=dims))
            if value < 1:
                raise BindError(problem["size"].format(value=value, sizes=dims))
            known[rank] = value
            origin[rank] = f"{rank} = {ir.to_text(definition)}"
            return value
        split = split_parts.get(rank)
        if split is None:
            raise BindError(f"the size of rank {rank} is not known: no input gives it; "
                            f"pass it by name (e.g. {rank}=16)")
        factor = split.factor
        if split.tunable and split.inner in known:
            inner = known[split.inner]       # the tile given by name
        elif isinstance(factor, int):
            inner = factor
        elif factor in cascade.ranks:
            inner = size(factor)
        else:
            value = param(factor)
            if not float(value).is_integer() or value < 1:
                raise BindError(f"param '{factor}' splits rank {split.parent} and must be a "
                                f"positive integer, got {value}")
            inner = int(value)
        known[split.inner] = inner
        known[split.outer] = math.ceil(size(split.parent) / inner)
        origin[split.inner] = origin[split.outer] = f"the split of {split.parent}"
        return known[rank]

    for rank in cascade.ranks:
        if rank_used(cascade, rank):
            size(rank)
    for name in cascade.params:
        param(name)

    for divisor, read in checked_divisors(cascade):
        value = size_value(divisor, known)
        if value < 1:
            raise BindError(divisor_problem(divisor, read).format(value=value, **known))

    for tensor in cascade.inputs:
        if shapes is None or tensor.name not in shapes:
            continue
        shape = tuple(shapes[tensor.name])
        for position, rank in enumerate(tensor.ranks):
            if rank in split_parts and size(rank) != shape[position]:
                raise BindError(f"input {tensor.name} position {position} is rank {rank} "
                                f"of size {size(rank)} (from {origin[rank]}), got "
                                f"{shape[position]}")
            if cascade.ranks[rank].sized and size(rank) != shape[position]:
                raise BindError(sized_problem(cascade, rank)["input"].format(
                    value=size(rank), input=tensor.name, extent=shape[position],
                    position=position))
    return Binding({r: known[r] for r in cascade.ranks if r in known}, values)


def _dims_of(definition: ir.Expr) -> set[str]:
    return {node.rank for node in ir.walk(definition) if isinstance(node, ir.Dim)}


def _divisors_of(definition: ir.Expr) -> list[ir.Expr]:
    return [node.args[1] for node in ir.walk(definition)
            if isinstance(node, ir.Op) and node.op == "//"]


def sized_problem(cascade: Cascade, rank: str) -> dict[str, str]:
    """The binding errors of a dim sized by other dims (`dims P = M`), as `str.format`
    templates that the oracle and the generated module fill in alike: "size" (fields
    `value` and `sizes`, the sizes by rank) for a size below 1, "divisor" (`divisor`,
    `value`, `sizes`) for a divisor in it below 1, "input" (`value`, `input`, `extent`,
    `position`) for an input whose extent differs."""
    definition = cascade.ranks[rank].definition
    text = ir.to_text(definition).replace("{", "{{").replace("}", "}}")
    at = ", ".join(f"{dim}={{sizes[{dim}]}}" for dim in sorted(_dims_of(definition)))
    return {
        "size": f"rank {rank} is {text} = {{value}} at {at}; a dim's size must be at "
                f"least 1",
        "divisor": f"rank {rank} is {text}, whose divisor '{{divisor}}' is {{value}} at "
                   f"{at}; it must be at least 1",
        "input": f"rank {rank} is {text} = {{value}}, but input {{input}} has {{extent}} "
                 f"at position {{position}}",
    }


def _check_positive(rank: str, value, where: str) -> None:
    import numpy as np      # binding sizes needs it; building and compiling do not

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BindError(f"rank {rank} must have a positive integer size, got {value!r} "
                        f"from {where}")


def rank_used(cascade: Cascade, rank: str) -> bool:
    """Whether the cascade needs the rank's size: a declared rank that nothing uses is
    never bound (no input need have it), so nothing may ask for its size."""
    var = cascade.ranks[rank].var
    if any(rank in t.ranks for t in cascade.tensors.values()):
        return True
    for einsum in cascade.einsums:
        if var in einsum.variables:
            return True
        for expr in (einsum.body, einsum.filter, einsum.init):
            if expr is not None and any(isinstance(n, ir.Dim) and n.rank == rank
                                        for n in ir.walk(expr)):
                return True
    for decl in cascade.params.values():
        if decl.default is not None and any(isinstance(n, ir.Dim) and n.rank == rank
                                            for n in ir.walk(decl.default)):
            return True
    # A dim that a used dim's size is computed from (`dims P = M`).
    if any(r.definition is not None and r.name != rank and rank in _dims_of(r.definition)
           and rank_used(cascade, r.name) for r in cascade.ranks.values()):
        return True
    # The parent or factor of a split one of whose parts is used. (Asking about the parts
    # of every split, not only of this rank's, recursed forever on a split whose parts
    # are unused.)
    return any((s.parent == rank or s.factor == rank) and
               (rank_used(cascade, s.outer) or rank_used(cascade, s.inner))
               for s in cascade.splits)


def _scalar(expr: ir.Expr, size, param) -> float:
    """Evaluate a param default: numbers, dims, params and functions, no tensors."""
    if isinstance(expr, ir.Const):
        return float(expr.value)
    if isinstance(expr, ir.Dim):
        return float(size(expr.rank))
    if isinstance(expr, ir.Param):
        return param(expr.name)
    assert isinstance(expr, ir.Op), expr
    import numpy as np

    return float(apply(expr.op, [np.float64(_scalar(a, size, param)) for a in expr.args]))
