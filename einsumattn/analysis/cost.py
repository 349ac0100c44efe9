"""Operation counts, minimum traffic and arithmetic intensity, as formulas in the sizes.

Counts are per Einsum over its dense iteration space (left and reduced variables; a
recurrence counts every step). Filters are not subtracted: a causal mask halves the
useful work of QK, but what a kernel does depends on whether it skips masked tiles, so
the dense count is the stated upper bound. Each operation of the body counts once per
point; a `sum` whose body is a product counts its last multiply and the accumulation
together as one multiply-accumulate (MAC). Index arithmetic inside tensor coordinates
is addressing, not arithmetic, and is not counted.

Categories: mac, add (also subtract), mul, div, exp, transcendental (log, sqrt, tanh,
sigmoid, elu, **), maxmin (max/min, relu, and max/min reductions), compare (filters,
comparisons and where). FLOPs = 2*mac + the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from .formulas import ratio

CATEGORIES = ("mac", "add", "mul", "div", "exp", "transcendental", "maxmin", "compare")

_CATEGORY = {"+": "add", "-": "add", "*": "mul", "/": "div", "//": "div", "%": "div",
             "exp": "exp", "log": "transcendental", "sqrt": "transcendental",
             "tanh": "transcendental", "sigmoid": "transcendental",
             "elu": "transcendental", "**": "transcendental", "max": "maxmin",
             "softplus": "transcendental", "logsigmoid": "transcendental",
             "log1p": "transcendental", "expm1": "transcendental", "silu": "transcendental",
             "erf": "transcendental",
             "min": "maxmin", "relu": "maxmin", "<": "compare", "<=": "compare",
             ">": "compare", ">=": "compare", "==": "compare", "!=": "compare",
             "where": "compare"}

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass
class EinsumCost:
    tensor: str
    points: sympy.Expr
    counts: dict[str, sympy.Expr]
    per_point: dict[str, int]     # operations at each point of the iteration space

    @property
    def flops(self) -> sympy.Expr:
        return 2 * self.counts["mac"] + sum((self.counts[c] for c in CATEGORIES
                                            if c != "mac"), sympy.Integer(0))


class Cost:
    """The cost of a cascade, each part computed when first read: compiling reads none
    of it (the module's docstring shows the passes), `analyze` all of it."""

    def __init__(self, cascade: Cascade, bytes_per_element: int):
        self._cascade = cascade
        self.bytes_per_element = bytes_per_element

    @functools.cached_property
    def einsums(self) -> dict[str, EinsumCost]:
        return {e.tensor: einsum_cost(self._cascade, e) for e in self._cascade.einsums}

    @functools.cached_property
    def total(self) -> dict[str, sympy.Expr]:
        return {c: sympy.expand(sum((e.counts[c] for e in self.einsums.values()),
                                    sympy.Integer(0)))
                for c in CATEGORIES}

    @functools.cached_property
    def flops(self) -> sympy.Expr:
        total = self.total
        return sympy.expand(2 * total["mac"] + sum((total[c] for c in CATEGORIES
                                                    if c != "mac"), sympy.Integer(0)))

    @functools.cached_property
    def bytes(self) -> sympy.Expr:
        """Minimum traffic: every input read once, every output written once."""
        cascade = self._cascade
        moved = sympy.Integer(0)
        for name in [t.name for t in cascade.inputs] + list(cascade.outputs):
            tensor = cascade.tensors[name]
            moved += sympy.Mul(*(cascade.extent(name, i) for i in range(len(tensor.ranks))))
        return sympy.expand(moved * self.bytes_per_element)

    @functools.cached_property
    def intensity(self) -> sympy.Expr:
        """FLOPs per byte, common factors cancelled (the costliest formula here)."""
        return ratio(self.flops, self.bytes) if self.bytes != 0 else sympy.oo


def _op_counts(expr: ir.Expr) -> dict[str, int]:
    """Operations per point in an expression, skipping tensor coordinates."""
    counts = dict.fromkeys(CATEGORIES, 0)
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ir.Op):
            category = _CATEGORY.get(node.op)
            if category is not None:
                counts[category] += 1
            stack.extend(node.args)
        # Read coordinates are addressing; constants, indices, dims, params are free.
    return counts


def einsum_cost(cascade: Cascade, einsum: Einsum) -> EinsumCost:
    points = sympy.Mul(*(cascade.ranks[cascade.var_rank(v)].size for v in einsum.variables))
    per_point = _op_counts(einsum.body)
    if einsum.filter is not None:
        filter_counts = _op_counts(einsum.filter)
        for key, value in filter_counts.items():
            per_point[key] += value
    if einsum.reduce_op == "sum":
        if isinstance(einsum.body, ir.Op) and einsum.body.op == "*":
            per_point["mul"] -= 1
            per_point["mac"] += 1
        else:
            per_point["add"] += 1
    elif einsum.reduce_op in ("max", "min"):
        per_point["maxmin"] += 1
    counts = {key: sympy.expand(points * value) for key, value in per_point.items()}
    if einsum.init is not None:
        init_points = sympy.Mul(*(cascade.ranks[cascade.var_rank(v)].size
                                  for v in einsum.indices if v != einsum.iter_var))
        for key, value in _op_counts(einsum.init).items():
            counts[key] = sympy.expand(counts[key] + init_points * value)
    return EinsumCost(einsum.tensor, points, counts, per_point)


def analyse_cost(cascade: Cascade, bytes_per_element: int) -> Cost:
    return Cost(cascade, bytes_per_element)
