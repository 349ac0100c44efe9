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

from typing import Any, Mapping, Sequence

import numpy as np

from .diagnostics import BindError
from .ir import Binding, Cascade, Einsum, bind
from .ir import expr as ir
from .ir.semantics import apply


class _Value:
    """A value over (part of) an iteration space, and where it is present."""

    __slots__ = ("value", "present")

    def __init__(self, value, present):
        self.value = value
        self.present = present


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
    return {name: _to_numpy(given[name]) for name in names}


def evaluate(cascade: Cascade, inputs: Mapping[str, Any] | Sequence[Any],
             params: Mapping[str, float] | None = None, *,
             intermediates: bool = False) -> dict[str, np.ndarray]:
    """Evaluate a cascade in float64.

    `inputs`: a mapping by name or a sequence in declaration order (numpy arrays, torch
    tensors or nested lists). Returns the outputs by name in `output` order, float64,
    with absent points as 0; with `intermediates=True`, every tensor the same way.
    """
    arrays = normalize_inputs(cascade, inputs)
    binding = bind(cascade, shapes={n: a.shape for n, a in arrays.items()}, params=params)
    store: dict[str, _Value] = {}
    for name, array in arrays.items():
        value = array.astype(np.float64) if array.dtype != np.float64 else array
        store[name] = _Value(value, np.ones(value.shape, dtype=bool))
    for einsum in cascade.einsums:
        store[einsum.tensor] = _evaluate_einsum(cascade, einsum, store, binding)
    names = list(store) if intermediates else list(cascade.outputs)
    return {name: np.where(store[name].present, store[name].value, 0.0) for name in names}


def _evaluate_einsum(cascade: Cascade, einsum: Einsum, store: dict[str, _Value],
                     binding: Binding) -> _Value:
    shape = binding.extent(cascade, einsum.tensor)
    if einsum.iterative is None:
        return _evaluate_points(cascade, einsum, einsum.indices, {}, store, binding)
    # A recurrence: position 0 from the init, then step x writes position x+1 from the
    # values at positions <= x (the builder checked that it reads nothing later).
    x = einsum.iter_var
    position = einsum.iterative
    others = tuple(v for v in einsum.indices if v != x)
    result = _Value(np.zeros(shape), np.zeros(shape, dtype=bool))
    store[einsum.tensor] = result
    init = _evaluate_points(cascade, Einsum(einsum.tensor, others, einsum.init), others, {},
                            store, binding)
    _put(result, position, 0, init)
    for step in range(binding.sizes[cascade.var_rank(x)]):
        value = _evaluate_points(cascade, einsum, others, {x: np.int64(step)}, store,
                                 binding)
        _put(result, position, step + 1, value)
    return result


def _put(result: _Value, position: int, index: int, value: _Value) -> None:
    target = (slice(None),) * position + (index,)
    result.value[target] = value.value
    result.present[target] = value.present


def _evaluate_points(cascade: Cascade, einsum: Einsum, kept: tuple[str, ...],
                     fixed: dict[str, np.int64], store: dict[str, _Value],
                     binding: Binding) -> _Value:
    """Evaluate an Einsum over the iteration space kept + reduced (with the variables in
    `fixed` held at one value), reduce, and return the value over `kept`."""
    axes = kept + einsum.reduced
    env: dict[str, np.ndarray] = dict(fixed)
    for axis, var in enumerate(axes):
        extent = binding.sizes[cascade.var_rank(var)]
        shape = [1] * len(axes)
        shape[axis] = extent
        env[var] = np.arange(extent, dtype=np.int64).reshape(shape)
    full = tuple(binding.sizes[cascade.var_rank(v)] for v in axes)

    evaluator = _Evaluator(cascade, store, binding, env)
    body = evaluator.value(einsum.body)
    value = np.broadcast_to(np.asarray(body.value, dtype=np.float64), full)
    present = np.broadcast_to(body.present, full)
    if einsum.filter is not None:
        cond = evaluator.value(einsum.filter)
        present = present & np.broadcast_to(cond.present & cond.value.astype(bool), full)
    present = present & np.broadcast_to(_inside_splits(cascade, env, binding), full)
    if einsum.reduce_op is None:
        return _Value(np.array(value), np.array(present))
    reduced_axes = tuple(range(len(kept), len(axes)))
    identity = ir.REDUCTION_IDENTITY[einsum.reduce_op]
    masked = np.where(present, value, identity)
    reducer = {"sum": np.sum, "max": np.max, "min": np.min}[einsum.reduce_op]
    with np.errstate(all="ignore"):
        if all(full[a] > 0 for a in reduced_axes):
            reduced = reducer(masked, axis=reduced_axes)
        else:
            reduced = np.full(tuple(full[:len(kept)]), identity)
    # A reduction yields a value at every point: its identity where nothing was present.
    return _Value(np.asarray(reduced, dtype=np.float64),
                  np.ones(np.shape(reduced), dtype=bool))


def _inside_splits(cascade: Cascade, env: dict[str, np.ndarray], binding: Binding):
    """A point of a split's (M1, M0) with m1*M0 + m0 >= M is not a point of M: it is
    absent wherever both parts of the split are in the iteration space (docs/language.md,
    "Splits")."""
    inside = np.True_
    for split in cascade.splits:
        outer, inner = cascade.ranks[split.outer].var, cascade.ranks[split.inner].var
        if outer in env and inner in env:
            position = env[outer] * binding.sizes[split.inner] + env[inner]
            inside = inside & (position < binding.sizes[split.parent])
    return inside


class _Evaluator:
    """Evaluates IR expressions to `_Value`s broadcastable over the iteration space."""

    def __init__(self, cascade: Cascade, store: dict[str, _Value], binding: Binding,
                 env: dict[str, np.ndarray]):
        self.cascade = cascade
        self.store = store
        self.binding = binding
        self.env = env

    def value(self, expr: ir.Expr) -> _Value:
        if isinstance(expr, ir.Const):
            return _Value(np.float64(expr.value), np.True_)
        if isinstance(expr, ir.Index):
            return _Value(self.env[expr.var].astype(np.float64), np.True_)
        if isinstance(expr, ir.Dim):
            return _Value(np.float64(self.binding.sizes[expr.rank]), np.True_)
        if isinstance(expr, ir.Param):
            return _Value(np.float64(self.binding.params[expr.name]), np.True_)
        if isinstance(expr, ir.Read):
            return self.read(expr)
        assert isinstance(expr, ir.Op)
        args = [self.value(a) for a in expr.args]
        result = apply(expr.op, [a.value for a in args])
        if expr.op == "where":
            # where(c, a, b) needs c, and only the branch it picks.
            cond = args[0].value.astype(bool) if hasattr(args[0].value, "astype") \
                else bool(args[0].value)
            present = args[0].present & np.where(cond, args[1].present, args[2].present)
        else:
            present = args[0].present
            for arg in args[1:]:
                present = present & arg.present
        return _Value(result, present)

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

    def read(self, expr: ir.Read) -> _Value:
        source = self.store[expr.tensor]
        if not expr.indices:
            return _Value(source.value[()], source.present[()])
        coords = [self.index(i) for i in expr.indices]
        coords = np.broadcast_arrays(*coords)
        inside = np.ones(coords[0].shape, dtype=bool)
        clipped = []
        for coord, extent in zip(coords, source.value.shape):
            inside &= (coord >= 0) & (coord < extent)
            clipped.append(np.clip(coord, 0, extent - 1))
        clipped_t = tuple(clipped)
        return _Value(source.value[clipped_t], inside & source.present[clipped_t])
