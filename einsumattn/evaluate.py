"""The oracle: direct float64 evaluation of a Cascade.

It is the ground truth the generated code is checked against, so it is written to be
obviously right rather than fast: every tensor is materialised in full, each Einsum is
evaluated over its whole iteration space at once with numpy broadcasting, and a
recurrence is a Python loop over its iterative rank.

Absent points (LANGUAGE.md) are carried as a boolean `present` array beside every value:
an out-of-range read or a false filter makes a point absent, elementwise operations
propagate absence, reductions skip absent points and yield their identity when none is
present, and absent output points are returned as 0.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .diagnostics import BindError
from .ir import Binding, Cascade, Einsum, bind
from .ir import expr as ir
from .ir.semantics import apply


class _Value:
    """A value over (part of) an iteration space, and where it is present."""

    __slots__ = ("value", "present", "overflow")

    def __init__(self, value, present, overflow=np.False_):
        self.value = value
        self.present = present
        # Where the exact value exceeds float64's range (tracked only by `overflowing`).
        self.overflow = overflow


def _to_numpy(array: Any) -> np.ndarray:
    """Inputs may be numpy arrays, torch tensors (any dtype, any device) or lists."""
    if hasattr(array, "detach"):  # a torch tensor, without importing torch here
        tensor = array.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.double()
        return tensor.numpy()
    return np.asarray(array)


def normalize_inputs(cascade: Cascade, inputs) -> dict[str, np.ndarray]:
    """Inputs by name, from a mapping or a sequence in declaration order."""
    return {name: _to_numpy(value) for name, value in _by_name(cascade, inputs).items()}


def _by_name(cascade: Cascade, inputs) -> dict[str, Any]:
    """Inputs by name as given (not converted: their shapes are checked first)."""
    names = [t.name for t in cascade.inputs]
    if isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        if unknown:
            raise BindError(f"unknown input '{unknown[0]}'; the inputs are {', '.join(names)}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise BindError(f"missing input '{missing[0]}'; the inputs are {', '.join(names)}")
        given = dict(inputs)
    else:
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise BindError(f"expected {len(names)} inputs ({', '.join(names)}), got "
                            f"{len(inputs)}")
        given = dict(zip(names, inputs))
    return {name: given[name] for name in names}


def evaluate(cascade: Cascade, inputs: Mapping[str, Any] | Sequence[Any],
             params: Mapping[str, float] | None = None, *,
             intermediates: bool = False, dtype=np.float64,
             max_bytes: int | None = None,
             sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Evaluate a cascade in float64.

    `inputs`: a mapping by name or a sequence in declaration order (numpy arrays, torch
    tensors or nested lists). Returns the outputs by name in `output` order, float64,
    with absent points as 0; with `intermediates=True`, every tensor the same way.
    `dtype=np.float32` evaluates in float32 instead: not ground truth, but a probe of how
    well-conditioned a case is for a float32 backend (`verify.py`).
    `max_bytes`: the memory the evaluation may take (default: `memory_limit()`); a case
    estimated to need more is a BindError before anything is allocated.
    `sizes`: sizes by name that no input gives (a rank used only in a dim expression, or
    the tile of a split a rewrite made, which is its default otherwise).
    """
    store = _evaluate_all(cascade, inputs, params, dtype, max_bytes, sizes)
    names = list(store) if intermediates else list(cascade.outputs)
    return {name: np.where(store[name].present, store[name].value, dtype(0.0))
            for name in names}


def overflowing(cascade: Cascade, inputs: Mapping[str, Any] | Sequence[Any],
                params: Mapping[str, float] | None = None) -> list[str]:
    """The tensors whose exact value exceeds float64's range at a present point: where
    the oracle's float64 gives an infinity that the math does not (exp(2901) is a real
    number; float64 rounds it to inf, and the oracle's answer there is no answer). An
    infinity the spec writes (-inf, a max over no term, x / 0, log(0)) is not one; nor
    is an overflow in the branch a where(...) does not pick, or at an absent point."""
    store = _evaluate_all(cascade, inputs, params, np.float64, None, None, overflow=True)
    return [name for name, value in store.items()
            if np.any(np.asarray(value.overflow) & value.present)]


def _evaluate_all(cascade, inputs, params, dtype, max_bytes, sizes,
                  overflow: bool = False) -> dict[str, _Value]:
    given = _by_name(cascade, inputs)
    shapes = {name: tuple(np.shape(value)) for name, value in given.items()}
    binding = bind(cascade, shapes=shapes, params=params, sizes=sizes)
    check_memory(cascade, binding, max_bytes, np.dtype(dtype).itemsize)
    arrays = {name: _to_numpy(value) for name, value in given.items()}
    store: dict[str, _Value] = {}
    for name, array in arrays.items():
        value = array.astype(dtype) if array.dtype != dtype else array
        store[name] = _Value(value, np.ones(value.shape, dtype=bool))
    for einsum in cascade.einsums:
        store[einsum.tensor] = _evaluate_einsum(cascade, einsum, store, binding, dtype,
                                                overflow)
    return store


# ----------------------------------------------------------------------------- memory
# The oracle materialises every tensor and, for each Einsum, arrays over its whole
# iteration space (left and reduced variables): a contraction such as QK over e holds
# B*H*P*M*E values at once. So its memory is estimated from the sizes before anything is
# allocated, and a case past the limit is refused with the largest array named.

MEMORY_VARIABLE = "EINSUMATTN_EVAL_MEMORY"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_limit() -> int:
    """Bytes the oracle may use: $EINSUMATTN_EVAL_MEMORY (a number of bytes, or with a
    K, M, G or T suffix: `64G`), else half of the machine's physical memory."""
    text = os.environ.get(MEMORY_VARIABLE, "").strip().upper().removesuffix("B")
    if text:
        unit = text[-1] if text[-1] in _UNITS else ""
        try:
            value = float(text[:len(text) - len(unit)])
        except ValueError:
            raise BindError(f"{MEMORY_VARIABLE}='{os.environ[MEMORY_VARIABLE]}' is not a "
                            f"size; write e.g. {MEMORY_VARIABLE}=64G") from None
        return int(value * _UNITS[unit])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30


def estimate_memory(cascade: Cascade, binding: Binding,
                    itemsize: int = 8) -> tuple[int, str, int]:
    """(total bytes, the largest array in words, its bytes) of evaluating the cascade:
    every tensor kept (values and presence), and the arrays of the Einsum whose
    evaluation needs the most at once."""
    stored, largest = 0, ("", 0)
    for name in cascade.tensors:
        elements = math.prod(binding.extent(cascade, name))
        stored += elements * (itemsize + 1)
        largest = max(largest, (f"tensor {name}", elements * itemsize), key=lambda x: x[1])
    working = 0
    for einsum in cascade.einsums:
        space = [v for v in einsum.variables if v != einsum.iter_var]
        points = math.prod(binding.sizes[cascade.var_rank(v)] for v in space)
        described = (f"the iteration space of {einsum.tensor} "
                     f"({', '.join(space) or 'one point'})", points * itemsize)
        largest = max(largest, described, key=lambda x: x[1])
        working = max(working, _einsum_bytes(cascade, einsum, binding, points, itemsize))
    return stored + working, largest[0], largest[1]


def _einsum_bytes(cascade: Cascade, einsum: Einsum, binding: Binding, points: int,
                  itemsize: int) -> int:
    """An upper bound on what one Einsum's evaluation allocates at once: an array per
    operation and read, over the variables under it (a gather also makes an index array
    per coordinate), and the masks and the reduction over the whole space."""
    size = {v: binding.sizes[cascade.var_rank(v)] for v in einsum.variables}
    size.pop(einsum.iter_var, None)   # one step of a recurrence at a time
    total = points * (itemsize + 3)   # the reduction's input and three masks
    for expr in (einsum.body, einsum.filter, einsum.init):
        if expr is None:
            continue
        for node, variables in _variables_under(expr):
            if isinstance(node, (ir.Op, ir.Read)):
                elements = math.prod(size.get(v, 1) for v in variables)
                arrays = 1 + (len(node.indices) if isinstance(node, ir.Read) else 0)
                total += elements * (itemsize + 1) * arrays
    return total


def _variables_under(expr: ir.Expr):
    """(node, the index variables in its subtree) for every node, children first."""
    found: dict[int, frozenset] = {}
    nodes = list(ir.walk(expr))
    for node in reversed(nodes):   # walk lists parents first
        own = {node.var} if isinstance(node, ir.Index) else set()
        found[id(node)] = frozenset(own).union(*(found[id(c)] for c in ir.children(node)))
    return [(node, found[id(node)]) for node in nodes]


def check_memory(cascade: Cascade, binding: Binding, max_bytes: int | None = None,
                 itemsize: int = 8) -> None:
    """A BindError when evaluating at this binding would take more than `max_bytes`
    (default: `memory_limit()`)."""
    limit = memory_limit() if max_bytes is None else max_bytes
    total, largest, largest_bytes = estimate_memory(cascade, binding, itemsize)
    if total > limit:
        unit = "G" if total >= 2**30 else "M"
        raise BindError(f"evaluating {cascade.name} at these sizes needs about "
                        f"{_size_text(total)} (the largest array: {largest}, "
                        f"{_size_text(largest_bytes)}), more than the limit of "
                        f"{_size_text(limit)}; use smaller sizes, or raise the limit with "
                        f"{MEMORY_VARIABLE} (e.g. {MEMORY_VARIABLE}="
                        f"{math.ceil(total / _UNITS[unit])}{unit})")


def _size_text(count: int) -> str:
    unit = next(u for u in "TGMK" if count >= _UNITS[u]) if count >= 2**10 else ""
    return f"{count / _UNITS[unit]:.3g} {unit}iB" if unit else f"{count} bytes"


def _evaluate_einsum(cascade: Cascade, einsum: Einsum, store: dict[str, _Value],
                     binding: Binding, dtype, overflow: bool = False) -> _Value:
    shape = binding.extent(cascade, einsum.tensor)
    if einsum.iterative is None:
        return _evaluate_points(cascade, einsum, einsum.indices, {}, store, binding, dtype,
                                overflow)
    # A recurrence: position 0 from the init, then step x writes position x+1 from the
    # values at positions <= x (the builder checked that it reads nothing later).
    x = einsum.iter_var
    position = einsum.iterative
    others = tuple(v for v in einsum.indices if v != x)
    result = _Value(np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=bool),
                    np.zeros(shape, dtype=bool) if overflow else np.False_)
    store[einsum.tensor] = result
    init = _evaluate_points(cascade, Einsum(einsum.tensor, others, einsum.init), others, {},
                            store, binding, dtype, overflow)
    _put(result, position, 0, init)
    for step in range(binding.sizes[cascade.var_rank(x)]):
        value = _evaluate_points(cascade, einsum, others, {x: np.int64(step)}, store,
                                 binding, dtype, overflow)
        _put(result, position, step + 1, value)
    return result


def _put(result: _Value, position: int, index: int, value: _Value) -> None:
    target = (slice(None),) * position + (index,)
    result.value[target] = value.value
    result.present[target] = value.present
    if isinstance(result.overflow, np.ndarray):
        result.overflow[target] = value.overflow


def _evaluate_points(cascade: Cascade, einsum: Einsum, kept: tuple[str, ...],
                     fixed: dict[str, np.int64], store: dict[str, _Value],
                     binding: Binding, dtype=np.float64, overflow: bool = False) -> _Value:
    """Evaluate an Einsum over the iteration space kept + reduced (with the variables in
    `fixed` held at one value), reduce, and return the value over `kept`.

    Absence is a set of conditions, each with the index variables it depends on
    (docs/language.md, "Absent points"). A condition that involves no reduced variable
    decides whether the left-side point exists; one that involves a reduced variable
    only removes that term from the reduction. So `QK[p, m] = sum[e] ... where m <= p`
    makes QK absent above the diagonal, while `sum[m] ... where m < p` skips terms and
    yields the identity for a row with none."""
    axes = kept + einsum.reduced
    env: dict[str, np.ndarray] = dict(fixed)
    for axis, var in enumerate(axes):
        extent = binding.sizes[cascade.var_rank(var)]
        shape = [1] * len(axes)
        shape[axis] = extent
        env[var] = np.arange(extent, dtype=np.int64).reshape(shape)
    full = tuple(binding.sizes[cascade.var_rank(v)] for v in axes)

    evaluator = _Evaluator(cascade, store, binding, env, dtype, overflow)
    body = evaluator.term(einsum.body)
    value = np.broadcast_to(np.asarray(body.value, dtype=dtype), full)
    conditions = list(body.conditions)
    for conjunct in ir.conjuncts(einsum.filter):
        cond = evaluator.term(conjunct)
        mask = np.asarray(cond.value, dtype=bool)
        for c in cond.conditions:
            mask = mask & c.mask
        conditions.append(_Condition(mask, frozenset(ir.index_vars(conjunct))
                                     | cond.variables))
    conditions += _split_domains(cascade, env, binding)

    reduced = set(einsum.reduced)
    everywhere = np.ones(full, dtype=bool)
    point = everywhere.copy()     # conditions on the left-side point alone
    term = everywhere.copy()      # all conditions: which terms of the reduction exist
    for condition in conditions:
        mask = np.broadcast_to(condition.mask, full)
        term &= mask
        if not condition.variables & reduced:
            point &= mask
    overflowed = np.broadcast_to(body.overflow, full) & term if overflow else np.False_
    if einsum.reduce_op is None:
        return _Value(np.array(value), term, overflowed)
    reduced_axes = tuple(range(len(kept), len(axes)))
    identity = ir.REDUCTION_IDENTITY[einsum.reduce_op]
    reducer = {"sum": np.sum, "max": np.max, "min": np.min}[einsum.reduce_op]
    with np.errstate(all="ignore"):
        result = reducer(np.where(term, value, dtype(identity)), axis=reduced_axes)
    if overflow:
        # An overflowed term, or a sum of finite terms past float64's range.
        overflowed = np.any(overflowed, axis=reduced_axes)
        if einsum.reduce_op == "sum":
            overflowed = overflowed | (np.isinf(result) &
                                       ~np.any(np.isinf(value) & term, axis=reduced_axes))
    # A present left point with no present term gets the identity (sum 0, max -inf).
    return _Value(np.asarray(result, dtype=dtype), np.all(point, axis=reduced_axes),
                  overflowed)


def _split_domains(cascade: Cascade, env: dict[str, np.ndarray],
                   binding: Binding) -> list["_Condition"]:
    """A point of a split's (M1, M0) with m1*M0 + m0 >= M is not a point of M: a
    condition on m1 and m0 wherever both are in the iteration space."""
    conditions = []
    for split in cascade.splits:
        outer, inner = cascade.ranks[split.outer].var, cascade.ranks[split.inner].var
        if outer in env and inner in env:
            position = env[outer] * binding.sizes[split.inner] + env[inner]
            conditions.append(_Condition(position < binding.sizes[split.parent],
                                         frozenset({outer, inner})))
    return conditions


class _Condition:
    """Where something is present, and the index variables that decides it."""

    __slots__ = ("mask", "variables")

    def __init__(self, mask, variables: frozenset):
        self.mask = mask
        self.variables = variables


class _Term:
    """The value of an expression and the conditions under which it is present."""

    __slots__ = ("value", "conditions", "overflow")

    def __init__(self, value, conditions: tuple[_Condition, ...] = (), overflow=np.False_):
        self.value = value
        self.conditions = conditions
        self.overflow = overflow

    @property
    def variables(self) -> frozenset:
        return frozenset().union(*(c.variables for c in self.conditions))

    def mask(self):
        mask = np.True_
        for condition in self.conditions:
            mask = mask & condition.mask
        return mask


class _Evaluator:
    """Evaluates IR expressions to `_Term`s broadcastable over the iteration space."""

    def __init__(self, cascade: Cascade, store: dict[str, _Value], binding: Binding,
                 env: dict[str, np.ndarray], dtype=np.float64, overflow: bool = False):
        self.cascade = cascade
        self.store = store
        self.binding = binding
        self.env = env
        self.dtype = dtype
        self.overflow = overflow

    def term(self, expr: ir.Expr) -> _Term:
        if isinstance(expr, ir.Const):
            return _Term(self.dtype(expr.value))
        if isinstance(expr, ir.Index):
            return _Term(self.env[expr.var].astype(self.dtype))
        if isinstance(expr, ir.Dim):
            return _Term(self.dtype(self.binding.sizes[expr.rank]))
        if isinstance(expr, ir.Param):
            return _Term(self.dtype(self.binding.params[expr.name]))
        if isinstance(expr, ir.Read):
            return self.read(expr)
        assert isinstance(expr, ir.Op)
        args = [self.term(a) for a in expr.args]
        result = apply(expr.op, [a.value for a in args])
        term = self._op_term(expr, args, result)
        if self.overflow:
            term.overflow = _overflowed(expr.op, args, result)
        return term

    @staticmethod
    def _op_term(expr: ir.Op, args: list[_Term], result) -> _Term:
        if expr.op == "where":
            # where(c, a, b) needs c, and only the branch it picks: one condition.
            cond, if_true, if_false = args
            picked = np.where(np.asarray(cond.value, dtype=bool), if_true.mask(),
                              if_false.mask())
            if not (cond.conditions or if_true.conditions or if_false.conditions):
                return _Term(result)
            # One condition, depending on every index variable written in the where(...):
            # a syntactic rule, so whether it decides the point or a term never depends
            # on the data (docs/language.md, 2.8).
            variables = frozenset(ir.index_vars(expr))
            return _Term(result, (_Condition(cond.mask() & picked, variables),))
        return _Term(result, tuple(c for a in args for c in a.conditions))

    def index(self, expr: ir.Expr) -> np.ndarray:
        """Integer value of an affine index expression."""
        if isinstance(expr, ir.Const):
            return np.int64(expr.value)
        if isinstance(expr, ir.Index):
            return self.env[expr.var]
        if isinstance(expr, ir.Dim):
            return np.int64(self.binding.sizes[expr.rank])
        assert isinstance(expr, ir.Op), expr
        args = [self.index(a) for a in expr.args]
        return apply(expr.op, args)

    def read(self, expr: ir.Read) -> _Term:
        source = self.store[expr.tensor]
        if not expr.indices:
            present = source.present[()]
            return _Term(source.value[()], () if present else
                         (_Condition(np.False_, frozenset()),),
                         np.asarray(source.overflow)[()] if self.overflow else np.False_)
        coords = np.broadcast_arrays(*[self.index(i) for i in expr.indices])
        conditions = []
        inside_all = np.ones(coords[0].shape, dtype=bool)
        clipped = []
        for index, coord, extent in zip(expr.indices, coords, source.value.shape):
            inside = (coord >= 0) & (coord < extent)
            inside_all &= inside
            clipped.append(np.clip(coord, 0, extent - 1))
            if not inside.all():
                # Each coordinate's range is a condition on the variables it uses.
                conditions.append(_Condition(inside, frozenset(ir.index_vars(index))))
        clipped_t = tuple(clipped)
        if not source.present.all():
            # Where a coordinate is outside, the range condition decides, not the clip.
            present = source.present[clipped_t] | ~inside_all
            conditions.append(_Condition(present, frozenset(ir.index_vars(expr))))
        overflow = np.False_
        if self.overflow and isinstance(source.overflow, np.ndarray):
            overflow = source.overflow[clipped_t]
        return _Term(source.value[clipped_t], tuple(conditions), overflow)


# Operations whose infinity at a finite argument is a pole the math has (x / 0, x // 0,
# 0 ** -1, log(0)), not a finite result past float64's range: argument, test of a pole.
_POLES = {"/": (1, lambda x: x == 0), "//": (1, lambda x: x == 0),
          "**": (0, lambda x: x == 0), "log": (0, lambda x: x == 0),
          "log1p": (0, lambda x: x == -1)}


def _overflowed(op: str, args: list[_Term], result) -> np.ndarray:
    """Where `op`'s exact result exceeds float64's range: an argument's overflow carried
    on (the branch where(...) picks, for a where), or an infinity from finite arguments
    that is not a pole."""
    if op == "where":
        cond = np.asarray(args[0].value, dtype=bool)
        return args[0].overflow | np.where(cond, args[1].overflow, args[2].overflow)
    carried = np.False_
    for arg in args:
        carried = carried | arg.overflow
    values = [np.asarray(a.value) for a in args]
    if not all(v.dtype.kind == "f" for v in values) or \
            not np.issubdtype(np.asarray(result).dtype, np.floating):
        return carried
    new = np.isinf(result)
    for value in values:
        new = new & np.isfinite(value)
    if op in _POLES:
        position, pole = _POLES[op]
        new = new & ~pole(values[position])
    return carried | new
