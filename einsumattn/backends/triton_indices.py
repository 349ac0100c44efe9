"""Index arithmetic in 32 bits where it fits: the bound the host tests per call.

The attention lowering defines the program's row tile and each step's key tile both ways
(schedule/interior.py, `narrowed_indices`): in 32 bits where the host's flag holds, else
in int64. Triton types integer arithmetic by its operands (int32 with int32 is int32;
with an int64 operand, int64), so in 32 bits every value computed from those indices
without an int64 operand is int32 too: the masks' tests of keys against rows (`m <= p`,
a window's `p - m < W`), a clamped row, an address's `p * stride`. Each of them must fit,
or it wraps.

This walks a kernel's statements as the Triton printer types them (backends/
triton_ir.py: an index, a size or a constant is a float where a value is computed, an
integer in index arithmetic and in comparisons of indices) and gives, for every int32
value computed from a narrowed index, an upper bound of its magnitude in the host's
terms: sizes, knobs, strides, grid sizes, the host's offsets. The host computes the
largest and passes INDEX_32 = (it < 2**31); where a value's bound is unknown (an
operation this does not bound), the kernel keeps int64 (`None`).

The bounds are of magnitudes, |value| <= bound, built bottom up: |a + b| <= |a| + |b|,
|a * b| <= |a| |b| (each bound at least 1, so a product's bound also covers its
factors'), floor division and remainder by at most their operands', a comparison its
operands'. A value past 2**31 in magnitude cannot be one an int32 held, so the test is
exact where the bound is tight (the sums and products of indices and sizes that masks and
addresses are made of).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import expr as ir
from ..schedule import kernel_ir as k
from .triton_ir import KernelPrinter


# ------------------------------------------------------------------------ bounds


@dataclass(frozen=True)
class Leaf:
    """A host value's magnitude: a rank's size ('size', its name), a knob ('knob'), a
    tensor's stride ('stride', the tensor and `position`), an offset the host computes
    ('offset', its kernel argument) or the grid's extent along `position` ('grid')."""
    kind: str
    name: str = ""
    position: int = 0


@dataclass(frozen=True)
class Sum:
    terms: tuple


@dataclass(frozen=True)
class Product:
    factors: tuple


@dataclass(frozen=True)
class Largest:
    terms: tuple


def _sum(*terms):
    return _folded(Sum, terms, lambda a, b: a + b)


def _product(*factors):
    return _folded(Product, factors, lambda a, b: a * b)


def _folded(kind, parts, combine):
    """`kind` of `parts` flattened, its numbers combined into one (last)."""
    flat, number = [], None
    for part in parts:
        for item in (part.terms if kind is Sum and isinstance(part, Sum) else
                     part.factors if kind is Product and isinstance(part, Product) else
                     (part,)):
            if isinstance(item, int):
                number = item if number is None else combine(number, item)
            else:
                flat.append(item)
    if number is not None and (number != (1 if kind is Product else 0) or not flat):
        flat.append(number)
    if len(flat) == 1:
        return flat[0]
    return kind(tuple(flat))


_UNKNOWN = Leaf("unknown")     # an integer made from a float: no bound


def _leaves(bound):
    if isinstance(bound, (Sum, Product, Largest)):
        for part in bound.terms if not isinstance(bound, Product) else bound.factors:
            yield from _leaves(part)
    else:
        yield bound


def _size(bound) -> int:
    """How many leaves and numbers a bound has (the simpler of two is the smaller)."""
    if isinstance(bound, (Sum, Product, Largest)):
        parts = bound.terms if not isinstance(bound, Product) else bound.factors
        return sum(_size(p) for p in parts)
    return 1


def _largest(*terms):
    flat = []
    for term in terms:
        for item in term.terms if isinstance(term, Largest) else (term,):
            if item not in flat:
                flat.append(item)
    numbers = [t for t in flat if isinstance(t, int)]
    flat = [t for t in flat if not isinstance(t, int)] + ([max(numbers)] if numbers else [])
    return flat[0] if len(flat) == 1 else Largest(tuple(flat))


# ------------------------------------------------------------------------ the walk


class Unbounded(Exception):
    """An integer value this cannot bound: the kernel keeps int64."""


@dataclass(frozen=True)
class _Int:
    """An integer value: its magnitude's bound, whether it is int64 (`wide`), whether
    it is computed from a narrowed index (`narrowed`: int32 only under the flag), and
    whether it is never negative (`natural`: then min(a, b) <= a bounds it by either)."""
    bound: object
    wide: bool
    narrowed: bool
    natural: bool = False


_FLOAT = None      # a value the kernel computes as a float (or a boolean of floats)


class _Walk:
    def __init__(self, flag: str, offsets: set[str], knobs: set[str],
                 strides: dict[str, tuple[str, int]]):
        self.flag = flag
        self.offsets = offsets          # kernel arguments the host computes
        self.knobs = knobs              # the kernel's compile-time block sizes
        self.strides = strides          # a stride argument -> (its tensor, position)
        self.env: dict[str, _Int | None] = {}
        self.found: list = []

    # -- the values whose bound the host tests
    def consumed(self, value):
        """`value` used where its own integer arithmetic ends (a float, an int64 value,
        a mask, an address, a name): as an int32 computed from a narrowed index, it
        must fit."""
        if isinstance(value, _Int) and value.narrowed and not value.wide \
                and value.bound not in self.found:
            if _UNKNOWN in _leaves(value.bound):
                raise Unbounded("an integer made from a float")
            self.found.append(value.bound)

    # -- statements
    def statements(self, body) -> None:
        for s in body:
            if isinstance(s, k.Comment) or isinstance(s, k.Barrier):
                continue
            if isinstance(s, k.Let):
                value = self.value(s.value)
                self.consumed(value)
                self.env[s.name] = value
            elif isinstance(s, k.Accumulate):
                self.consumed(self.value(s.value))
                self.env[s.name] = _FLOAT
            elif isinstance(s, k.Store):
                for part in (s.offset, s.value, s.mask):
                    self.consumed(self.value(part))
            elif isinstance(s, k.Unflatten):
                flat = self.env.get(s.flat)
                if not isinstance(flat, _Int):
                    raise Unbounded(f"unflattening {s.flat}")
                for name, extent in s.parts:
                    size = self.integer(extent)
                    self.consumed(size)
                    self.env[name] = _Int(_largest(flat.bound, size.bound), flat.wide,
                                          flat.narrowed, flat.natural)
                self.env[s.rest] = flat
            elif isinstance(s, k.Loop):
                ends = [self.integer(e) for e in (s.start, s.stop, s.step) if e is not None]
                if not all(isinstance(end, _Int) for end in ends):
                    raise Unbounded(f"the bounds of the loop over {s.var}")
                for end in ends:
                    self.consumed(end)
                start, stop = ends[0], ends[1]
                # start <= var < stop: from a start never negative, the stop bounds it
                bound = stop.bound if start.natural else _largest(start.bound, stop.bound)
                self.env[s.var] = _Int(bound, any(e.wide for e in ends),
                                       any(e.narrowed for e in ends), start.natural)
                self.statements(s.body)
            else:
                raise Unbounded(f"statement {type(s).__name__}")

    # -- expressions: `integer`, the printer's index arithmetic (ir leaves are integers)
    def integer(self, expr):
        return self.value(expr, integer=True)

    def value(self, expr, integer: bool = False):
        method = getattr(self, "_" + type(expr).__name__.lower(), None)
        if method is None:
            raise Unbounded(f"node {type(expr).__name__}")
        return method(expr, integer)

    def _const(self, node: ir.Const, integer):
        if not integer or not isinstance(node.value, int) or isinstance(node.value, bool):
            return _FLOAT
        return _Int(max(abs(node.value), 1), False, False, node.value >= 0)

    def _dim(self, node: ir.Dim, integer):
        if not integer:
            return _FLOAT
        kind = "knob" if node.rank in self.knobs else "size"
        return _Int(Leaf(kind, node.rank), False, False, True)

    def _param(self, node: ir.Param, integer):
        if integer:
            raise Unbounded(f"param {node.name} in index arithmetic")
        return _FLOAT

    def _index(self, node: ir.Index, integer):
        return self._named(node.var) if integer else _FLOAT

    def _indexblock(self, node: k.IndexBlock, integer):
        return self._named(node.name) if integer else _FLOAT

    def _var(self, node: k.Var, integer):
        return self._named(node.name)

    def _named(self, name: str):
        if name in self.env:
            return self.env[name]
        if name in self.offsets:
            return _Int(Leaf("offset", name), False, False)
        if name in self.knobs:
            return _Int(Leaf("knob", name), False, False, True)
        if name in self.strides:
            return _Int(Leaf("stride", *self.strides[name]), False, False)
        raise Unbounded(f"the value {name}")

    def _programid(self, node: k.ProgramId, integer):
        return _Int(Leaf("grid", position=node.axis), False, False, True)

    def _arange(self, node: k.Arange, integer):
        return _Int(Leaf("knob", node.size), False, False, True)

    def _cast(self, node: k.Cast, integer):
        inner = self.value(node.value, integer)
        if not isinstance(inner, _Int):
            # a float made an integer (a window's bound, clamped and rounded): its
            # range is the float's, which this does not follow
            return _Int(1 if node.dtype == "int8" else _UNKNOWN, node.dtype == "int64",
                        False)
        if node.dtype == "int64":
            self.consumed(inner)
            return _Int(inner.bound, True, inner.narrowed, inner.natural)
        return _Int(inner.bound if node.dtype == "int32" else 1, False, inner.narrowed,
                    inner.natural)

    def _expand(self, node, integer):
        return self.value(node.value, integer)

    _group = _boolean = _expand

    def _integer(self, node: k.Integer, integer):
        return self.integer(node.value)

    def _specialized(self, node: k.Specialized, integer):
        if node.flag == self.flag:
            narrow = self.value(node.if_true, integer)
            if isinstance(narrow, _Int):
                return _Int(narrow.bound, narrow.wide, True, narrow.natural)
            return narrow
        return self._either_of([self.value(node.if_true, integer),
                                self.value(node.if_false, integer)])

    def _either_of(self, values):
        ints = [v for v in values if isinstance(v, _Int)]
        if len(ints) != len(values):
            for v in ints:
                self.consumed(v)
            return _FLOAT
        return _Int(_largest(*(v.bound for v in ints)), any(v.wide for v in ints),
                    any(v.narrowed for v in ints), all(v.natural for v in ints))

    def _quotient(self, node: k.Quotient, integer):
        # a value never negative (kernel IR Quotient), divided by a positive tile
        return self._arithmetic([self.integer(node.value), self.integer(node.divisor)],
                                _largest, natural=True)

    def _extremum(self, node: k.Extremum, integer):
        left, right = self.integer(node.left), self.integer(node.right)
        if not (isinstance(left, _Int) and isinstance(right, _Int)):
            return self._arithmetic([left, right], _largest)      # a float bound
        if node.op == "min" and left.natural and right.natural:
            # 0 <= min(a, b) <= a and <= b: either bounds it; the simpler one serves
            simpler = min((left, right), key=lambda v: _size(v.bound))
            value = self._arithmetic([left, right], lambda a, b: simpler.bound, True)
            return value
        return self._arithmetic([left, right], _largest,
                                natural=left.natural or right.natural if node.op == "max"
                                else False)

    def _op(self, node: ir.Op, integer):
        integer = integer or KernelPrinter.integer_comparison(node)
        args = [self.value(a, integer) for a in node.args]
        op = node.op
        if op in ir.COMPARISONS or op in ir.BOOLEAN or op in ("&", "|"):
            # a boolean: its operands are what is computed (a test cannot overflow)
            for a in args:
                self.consumed(a)
            return _FLOAT if not all(isinstance(a, _Int) for a in args) else \
                _Int(1, any(a.wide for a in args), False, True)
        natural = all(isinstance(a, _Int) and a.natural for a in args)
        if op == "+" or op == "*":
            rule = _sum if op == "+" else _product
        elif op == "-":
            rule, natural = _sum, False
        elif op in ("neg", "abs"):
            rule, natural = _largest, op == "abs"
        elif op in ("//", "max", "min", "where"):
            rule = _largest
        elif op == "%":        # the remainder's helper adds the divisor back: < 2 |b|
            rule = lambda a, b: _sum(a, b, b)    # noqa: E731
        elif op == "**" and isinstance(node.args[1], ir.Const) and \
                float(node.args[1].value).is_integer() and 0 < node.args[1].value <= 8:
            rule = lambda a, b: _product(*[a] * int(node.args[1].value))   # noqa: E731
        else:
            rule = None
        if rule is None or not all(isinstance(a, _Int) for a in args):
            for a in args:
                self.consumed(a)
            if rule is None and integer and args and all(isinstance(a, _Int) for a in args):
                raise Unbounded(f"the operation {op} in index arithmetic")
            return _FLOAT
        return self._arithmetic(args, rule, natural)

    def _arithmetic(self, args, rule, natural: bool = False):
        if not all(isinstance(a, _Int) for a in args):
            for a in args:
                self.consumed(a)       # converted to float
            return _FLOAT
        wide = any(a.wide for a in args)
        if wide:
            for a in args:
                self.consumed(a)
        return _Int(rule(*(a.bound for a in args)), wide, any(a.narrowed for a in args),
                    natural)

    # -- the kernel's own nodes: what they compute in integers, and their floats
    def _floats(self, *parts):
        for part in parts:
            if part is not None:
                self.consumed(self.value(part))
        return _FLOAT

    def _full(self, node, integer):
        return _FLOAT

    _zeros = _keycolumns = _full

    def _reduce(self, node: k.Reduce, integer):
        return self._floats(node.value)

    def _dot(self, node: k.Dot, integer):
        return self._floats(node.left, node.right, node.acc)

    def _exp2(self, node, integer):
        return self._floats(node.value)

    _sigmoidexp2 = _dotoperand = _coefficientrows = _exp2

    def _mask(self, node: k.Mask, integer):
        return self._floats(*node.conditions)

    def _either(self, node: k.Either, integer):
        return self._floats(*node.alternatives)

    def _test(self, node: k.Test, integer):
        self.consumed(self.value(node.expr, node.integer))
        return self._floats(node.inner)

    def _choice(self, node: k.Choice, integer):
        return self._floats(node.condition, node.choice, node.if_true, node.if_false)

    def _load(self, node: k.Load, integer):
        if node.address is not None:
            self.consumed(self.value(node.address))
        else:
            self._address(node.tensor, node.coordinates)
        return self._floats(node.mask)

    def _pointers(self, node: k.Pointers, integer):
        self._address(node.tensor, node.coordinates)
        return _FLOAT

    _offsets = _pointers

    def _advance(self, node: k.Advance, integer):
        self.consumed(self.value(node.pointers))
        for _, offset in node.steps:      # each cast to int64 before its stride
            self.consumed(self.integer(offset))
        return _FLOAT

    def _described(self, node: k.Described, integer):
        for start in node.starts:
            self.consumed(self.integer(start))
        return _FLOAT

    def _address(self, tensor: str, coordinates) -> None:
        """(index) * stride + ..., left to right (backends/triton_printer.py's
        clamped_offset): each product, and the sum while no term is int64."""
        total = None
        for position, c in enumerate(coordinates):
            index = self.integer(c.index)
            if c.clamp is not None:
                index = self._arithmetic([index, self.integer(c.clamp)], _largest)
            term = self._arithmetic([index, _Int(Leaf("stride", tensor, position), False,
                                                 False)], _product)
            total = term if total is None else self._arithmetic([total, term], _sum)
        self.consumed(total)


def index_bounds(body: tuple, flag: str, offsets: set[str], knobs: set[str],
                 strides: dict[str, tuple[str, int]]) -> tuple | None:
    """The bounds of every int32 value computed from an index the `flag` narrows, in
    `body` (a kernel's statements; `offsets`: the arguments the host computes; `knobs`:
    its block sizes; `strides`: its stride arguments, each (tensor, position)), or None
    where one cannot be bounded (the kernel then keeps int64)."""
    walk = _Walk(flag, offsets, knobs, strides)
    try:
        walk.statements(body)
    except Unbounded:
        return None
    return tuple(walk.found)


def wide_only(body: tuple, flag: str) -> tuple:
    """`body` with the definitions `flag` would narrow kept in int64 only."""
    return k.replaced(body, lambda n: wide_only(n.if_false, flag)
                      if isinstance(n, k.Specialized) and n.flag == flag else None)
