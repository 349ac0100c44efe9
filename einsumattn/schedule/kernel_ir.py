"""The kernel-level IR: what one kernel does, as frozen data, between a schedule and a
printer per target (backends/triton_ir.py prints it as Triton), the way sympy has one
CodePrinter per language.

A kernel is statements (`Let`, `Store`, `Loop`, `Accumulate`, `Unflatten`, `Comment`,
`Barrier`) over
expressions: the cascade's own expression nodes (`ir.expr`: `Const`, `Index`, `Dim`,
`Param`, `Op`), with index variables renamed to the kernel's names, plus the nodes
below. A tensor read is a `Load` (the coordinates, each clamped into its extent where
it could leave it, and the lanes' mask): nothing reads memory otherwise. A mask is a
`Mask`, a conjunction of conditions held as a set (each once, in the order first
given, so a printed kernel is the same on every run), never text; a condition is a
`Test` (an IR condition, with the conditions of the reads inside it), the presence flag
of an intermediate (a `Load` with `flag`), or a `Choice` (a `where` in a reduction,
present by the branch it picks). A matrix product of two tiles is a `Dot`; a loop's
bounds are integers (`Extremum`, `Quotient`).

Lowerings from the schedules are in schedule/lowering.py and schedule/lower_attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Union

from ..ir import expr as ir


class Unsupported(Exception):
    """A construct a kernel cannot express (the module falls back, and says why)."""


@dataclass(frozen=True)
class Var:
    """A value the kernel computed (a block, or one value per program)."""
    name: str


@dataclass(frozen=True)
class ProgramId:
    """The program's coordinate along a grid axis."""
    axis: int


@dataclass(frozen=True)
class Arange:
    """The block 0, 1, ..., size - 1 (`size`: a knob)."""
    size: str


@dataclass(frozen=True)
class Cast:
    """`value` converted: 'int64' (index arithmetic past 2**31), 'int8' (presence flags)."""
    value: "Expr"
    dtype: str


@dataclass(frozen=True)
class Expand:
    """A block broadcast into more dimensions: `axes` per dimension of the result, True
    where it is one of the block's own (in order), False where it is new (`x[:, None]`
    is (True, False))."""
    value: "Expr"
    axes: tuple[bool, ...]


@dataclass(frozen=True)
class IndexBlock:
    """The values of an index variable (kernel name `name`) broadcast into a block's
    layout (`axes` as Expand's; empty: as it is). Used as a value, it is a float, as
    every index is (ir.Index)."""
    name: str
    axes: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Full:
    """A block of `shape` (knobs) holding `value` (a float constant) everywhere: an
    accumulator's start (the reduction's identity)."""
    shape: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Zeros:
    """A block of `shape` of zeros that a value is added to, to give it that shape (a
    value of fewer dimensions, or one per program, broadcast into the tile)."""
    shape: tuple[str, ...]


@dataclass(frozen=True)
class Coordinate:
    """One coordinate of an address: its index, and the extent it is clamped into (None
    where it cannot leave it: the schedule proved it in range by construction); `key`:
    the index is the streamed key itself (`m`, a split's `m1 * M0 + m0`), which an
    interior key tile holds in its rank (schedule/interior.py drops the clamp there)."""
    index: "Expr"
    clamp: "Expr | None" = None
    key: bool = False


@dataclass(frozen=True)
class Load:
    """`tensor` at `coordinates` (each times the tensor's stride), as float32; `flag`:
    the tensor's presence flags (`T_ok`) instead, as booleans. Masked lanes read 0;
    `mask` None where the address is one per program and always valid."""
    tensor: str
    coordinates: tuple[Coordinate, ...]
    mask: "Expr | None" = None
    flag: bool = False
    raw: bool = False       # in the tensor's own dtype: a dot operand, converted once
    # The same addresses from a block of pointers computed before the loop (an Advance);
    # `coordinates` still say what is read.
    address: "Expr | None" = None


@dataclass(frozen=True)
class Pointers:
    """The addresses of `tensor` at `coordinates` (its pointer plus each coordinate
    times its stride): a block of pointers computed once, before a loop that moves it
    (Advance), so a step's loads add one offset per address instead of recomputing it."""
    tensor: str
    coordinates: tuple[Coordinate, ...]


@dataclass(frozen=True)
class Offsets:
    """`tensor`'s element offsets at `coordinates` (each times its stride), without the
    pointer: a tile added to a base pointer (Advance) per step."""
    tensor: str
    coordinates: tuple[Coordinate, ...]


@dataclass(frozen=True)
class Described:
    """`tensor`'s tile read by the GPU's tensor memory accelerator (TMA) through the
    descriptor the host makes of the tensor (`<tensor>_desc`), its block `block` (a
    knob, or None for 1, per position) starting at `starts` (one per position, one value
    per program): no address arithmetic, and positions past the tensor read 0."""
    tensor: str
    starts: tuple
    block: tuple


@dataclass(frozen=True)
class Advance:
    """`pointers` (a block of `tensor`'s pointers) moved by `steps`: (position, offset)
    pairs, each offset one value per program (the loop's step) times the position's
    stride, in 64-bit arithmetic (an offset times a stride may pass 2**31)."""
    pointers: "Expr"
    tensor: str
    steps: tuple[tuple[int, "Expr"], ...]


@dataclass(frozen=True)
class Integer:
    """Arithmetic on indices and sizes: integers, with floor // and %, where the same
    nodes elsewhere compute values (floats, as the oracle does)."""
    value: "Expr"


@dataclass(frozen=True)
class Reduce:
    """`value` reduced along `axis` with `op` ('sum', 'max', 'min')."""
    op: str
    value: "Expr"
    axis: int


@dataclass(frozen=True)
class Mask:
    """A conjunction of conditions (each an Expr, a Test, a Choice or a Mask), a set:
    each appears once, in the order first given. Empty: true everywhere."""
    conditions: tuple

    def __post_init__(self):
        # An empty mask inside a mask is true: it adds nothing to the conjunction.
        kept = (c for c in self.conditions if not (isinstance(c, Mask) and not c.conditions))
        object.__setattr__(self, "conditions", tuple(dict.fromkeys(kept)))


@dataclass(frozen=True)
class Test:
    """A condition of the spec (a filter, a coordinate's range, a split's end) as an IR
    condition; `integer`: its arithmetic is on indices (floor // and %); `scalar`: one
    value per program; `inner`: the conditions of the reads inside it."""
    expr: "Expr"
    integer: bool
    scalar: bool = False
    inner: Mask = Mask(())


@dataclass(frozen=True)
class Choice:
    """`where(c, a, b)` in a reduction: present where c's conditions hold and those of
    the branch it picks."""
    condition: Mask
    choice: "Expr"
    if_true: Mask
    if_false: Mask


@dataclass(frozen=True)
class Dot:
    """The matrix product of two tiles, `left` (rows x inner) times `right` (inner x
    columns; `transposed`: given as columns x inner, `K` for `Q K^T`), with float32 sums.
    Its operands enter in the dot's precision, which the host chooses per call from the
    inputs' dtype (float16 / bfloat16 tensor-core products, or float32 at `precision`,
    never TF32); `rounded`: how many of the two are computed values that this rounds
    (the schedule's DotPlan.rounded, which the check's tolerance counts)."""
    left: "Expr"
    right: "Expr"
    transposed: bool = False
    rounded: int = 0
    # `left` given as inner x rows (the chunk form's K-side tile of its state update,
    # (tk, d), contracted over tk: tl.trans(left)).
    left_transposed: bool = False
    precision: str = "ieee"
    converted: tuple[bool, bool] = (False, False)   # (left, right) already a DotOperand
    # The tile the products are added into (the matrix unit's accumulator; None: zeros):
    # a term the scores take from the matrix unit (schedule/biases.py).
    acc: "Expr | None" = None


@dataclass(frozen=True)
class CoefficientRows:
    """The [`rows`, 16] dot operand each of whose rows holds `value` (one float32 per
    program) as three bfloat16 parts, hi + mid + lo (float32's 24 bits), then zeros: times
    KeyColumns it is `value * m0` with float32 sums (schedule/biases.py)."""
    value: "Expr"
    rows: str


@dataclass(frozen=True)
class KeyColumns:
    """The [16, `block`] dot operand whose first three rows hold a key tile's columns
    0 .. block - 1 (exact in bfloat16 up to 256), the rest zeros."""
    block: str


@dataclass(frozen=True)
class Exp2:
    """2 ** `value`, results below 2**-126 flushed to zero (the GPU's ex2 unit): an
    exponential that follows a max-shift, exp(A - B) = Exp2(A*log2(e) - B*log2(e))
    (schedule/shifts.py says when, and why the flush is harmless there)."""
    value: "Expr"


@dataclass(frozen=True)
class SigmoidExp2:
    """sigmoid(x) given `value` = -x * log2(e): 1 / (1 + 2 ** value), the constant folded
    into the argument's own multiply-adds (schedule/scales.py), one ex2 and one reciprocal
    per score (the module's `_sigmoid_exp2` says how each GPU computes them)."""
    value: "Expr"


@dataclass(frozen=True)
class DotOperand:
    """`value` converted to the dot's precision once, where it is computed (a row tile
    hoisted before the key loop: the Q tile of QK is converted once per program, not once
    per key tile, and held in registers at half the size). A `Dot` whose operand is the
    name of such a value says so in `converted`."""
    value: "Expr"


@dataclass(frozen=True)
class Specialized:
    """`if_true` where `flag` holds, else `if_false`: a compile-time constant the host
    computes per call (schedule/scales.py: a scale's sign), so the kernel is compiled
    with one of the two."""
    flag: str
    if_true: "Expr"
    if_false: "Expr"


@dataclass(frozen=True)
class Group:
    """`value`, which the kernel's text shows as one quantity, in parentheses (a split
    key's index `m1 * M0 + m0`, a bound's offset from the row)."""
    value: "Expr"


@dataclass(frozen=True)
class Either:
    """A disjunction of masks: a lane is kept where one of `alternatives` holds."""
    alternatives: tuple[Mask, ...]


@dataclass(frozen=True)
class Boolean:
    """A mask as booleans (`!= 0`): Triton's interpreter gives `block & scalar` int32
    data, which a load's mask rejects."""
    value: "Expr"


@dataclass(frozen=True)
class Extremum:
    """The larger ('max') or smaller ('min') of two integers (a loop's bounds): nothing
    to propagate, unlike the values' max and min, which keep a NaN."""
    op: str
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Quotient:
    """`value // divisor` where `value` is never negative (a tile's number from a key
    index), so truncating division is floor division."""
    value: "Expr"
    divisor: "Expr"


Expr = Union[ir.Const, ir.Index, ir.Dim, ir.Param, ir.Op, Var, ProgramId, Arange, Cast,
             Expand, IndexBlock, Full, Zeros, Load, Pointers, Offsets, Described, Advance,
             Integer, Reduce, Mask,
             Test, Choice, Dot, DotOperand, CoefficientRows, KeyColumns, Exp2, SigmoidExp2, Specialized, Either, Boolean,
             Extremum, Quotient, Group]


# ------------------------------------------------------------------------ statements


@dataclass(frozen=True)
class Comment:
    """A comment line (empty `text`: an empty line between parts of the kernel)."""
    text: str


@dataclass(frozen=True)
class Let:
    """`name = value` (`note`: a comment beside it)."""
    name: str
    value: Expr
    note: str | None = None


@dataclass(frozen=True)
class Accumulate:
    """`name` combined with `value` by `op` ('sum': added, 'max' / 'min': the larger /
    smaller, NaN as the reduction's own rule). A `Dot` summed into `name` is the dot's
    accumulator (a matrix unit adds into it in place)."""
    name: str
    op: str
    value: Expr


@dataclass(frozen=True)
class Store:
    """`value` written to `tensor` (or, `flag`, its presence flags) at `offset` (an
    element offset: coordinates times strides) in the lanes of `mask`; `rounded`: in the
    tensor's own dtype, rounded to nearest (an output the host allocates in the inputs'
    dtype: no float32 copy and no cast kernel after the launch); `added`: a knob (the
    kernel's programs per row tile along the keys) above 1 of which the value is added to
    the tensor's (atomically, into float32 zeros the host makes) instead."""
    tensor: str
    offset: Expr
    value: Expr
    mask: Expr
    flag: bool = False
    rounded: bool = False
    added: str | None = None


@dataclass(frozen=True)
class Unflatten:
    """Row-major coordinates from a flat index: `parts` (name, extent), the last the
    fastest; every coordinate but the first is a remainder, `rest` holds the quotients.
    The flat index is not negative, so truncating division is floor division."""
    flat: str
    parts: tuple[tuple[str, Expr], ...]
    rest: str


@dataclass(frozen=True)
class Barrier:
    """Every store of the program is visible to its later loads (`why` says which)."""
    why: str


@dataclass(frozen=True)
class Loop:
    """`for var in range(start, stop, step)` (`step` None: 1) around `body`."""
    var: str
    start: Expr
    stop: Expr
    step: Expr | None
    body: tuple


Statement = Union[Comment, Let, Accumulate, Store, Unflatten, Barrier, Loop]


@dataclass(frozen=True)
class Kernel:
    """One kernel: its name, its arguments (pointers, strides, sizes and params), the
    knobs it takes as compile-time constants (each a power of two >= `least`), and its
    statements."""
    name: str
    args: tuple[str, ...]
    knobs: tuple[str, ...]
    least: int
    body: tuple


def nodes(item) -> Iterator:
    """Every node under a kernel, a statement or an expression (itself first), loop
    bodies and the coordinates and masks of loads included."""
    stack = [item]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(reversed(node))
            continue
        if node is None or isinstance(node, (str, int, float)):
            continue
        yield node
        if isinstance(node, ir.Op):
            stack.extend(reversed(node.args))
        elif hasattr(node, "__dataclass_fields__") and not isinstance(
                node, (ir.Const, ir.Index, ir.Dim, ir.Param)):
            stack.extend(reversed([getattr(node, f.name) for f in fields(node)]))


def replaced(item, replace):
    """`item` (a statement, an expression or a tuple of them) with every node for which
    `replace(node)` gives a value replaced by it (outermost first; a replaced node's
    own parts are not visited), everything else rebuilt around the replacements."""
    if isinstance(item, tuple):
        return tuple(replaced(x, replace) for x in item)
    if item is None or isinstance(item, (str, int, float, bool)):
        return item
    found = replace(item)
    if found is not None:
        return found
    if isinstance(item, ir.Op):
        return ir.Op(item.op, tuple(replaced(a, replace) for a in item.args))
    if not hasattr(item, "__dataclass_fields__") or isinstance(
            item, (ir.Const, ir.Index, ir.Dim, ir.Param)):
        return item
    changes = {f.name: replaced(getattr(item, f.name), replace) for f in fields(item)}
    return type(item)(**changes)


def without_unread(body: tuple) -> tuple:
    """A kernel's statements with each loop's unread tile values left out: a `Let` in a
    loop body of a name defined nowhere before the loop (a value of the step, not a
    carried register or an accumulator) that nothing in the body reads, e.g. a scaled
    tile every reader of which took the scale itself (schedule/scales.py). Its comment
    (the Einsum's text) stays, saying so; a loop left with nothing goes (a spec's value
    that no output reads). Triton's compiler would drop them too; this keeps the printed
    kernel to what runs."""
    out, defined = [], set()
    for statement in body:
        if isinstance(statement, Loop):
            live = _live(statement.body, defined)
            if all(isinstance(s, Comment) for s in live):
                out += live         # nothing of it is read: the loop goes, its notes stay
                continue
            statement = Loop(statement.var, statement.start, statement.stop, statement.step,
                             live)
        elif isinstance(statement, Let):
            defined.add(statement.name)
        out.append(statement)
    return tuple(out)


def _live(body: tuple, outer: set) -> tuple:
    while True:
        read = {n.name for s in body for n in nodes(
            s.value if isinstance(s, Let) else s) if isinstance(n, (Var, IndexBlock))}
        dead = {s.name for s in body if isinstance(s, Let)
                and s.name not in outer and s.name not in read}
        if not dead:
            return body
        kept = []
        for statement in body:
            if isinstance(statement, Let) and statement.name in dead:
                if kept and isinstance(kept[-1], Comment) and kept[-1].text:
                    kept[-1] = Comment(kept[-1].text + "  (folded into its readers)")
                continue
            kept.append(statement)
        body = tuple(kept)
