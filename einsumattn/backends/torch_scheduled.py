"""The scheduled torch backend: the fused kernel's schedule printed as torch code.

The fused Triton schedule (codegen/fused.py) decides, from the IR and the pass
analysis, which rank is parallel (the query rank P, and batch-like ranks B, H), which
is streamed (the key rank M, or its inner part M0 after the online rewrite splits it
into M1 x M0), which tensors are key tiles, per-row values, accumulators and carried
recurrences. This backend runs the same decisions as torch code:

- a Python loop over *row blocks* of the row rank (TORCH_TUNING["row_block"] rows);
  batch and feature ranks are whole tensor dimensions, so every contraction is one
  batched matmul (torch.einsum) over the block;
- per row block, a loop over *key tiles*: the split's steps m1 (the tile is M0 keys;
  when the split is the online rewrite's, M0 is TORCH_TUNING["key_tile"], since the
  derived cascade is exact for any factor), or tiles of key_tile keys in each pass of
  an unsplit schedule, where accumulators combine across tiles;
- online state (running max, rescaled sums, any recurrence over m1) is held as tensors
  of one row block; nothing is M-sized, so working memory is O(row block x key tile);
- tiles the proved bounds exclude are not visited (schedule/skipping.py: a fully masked
  step leaves every carried value unchanged), and a tile that an affine filter
  (`m <= p`, `p - m < W`) keeps whole for every row of the block is computed without
  masks: only the tiles a mask's boundary crosses pay for it;
- the last tile is cut at the key rank's end, so padding never enters a tile, and at
  the proved upper bound of the block's keys (a tile the diagonal crosses is at most as
  wide as the row block);
- without autograd, masked operands are selected by bit operations (`_select`), and on
  the CPU row blocks run on TORCH_TUNING["threads"] Python threads with one-thread torch
  operations (results bit for bit those of one thread);
- constant factors of an epilogue fold back into the contraction they scale (the
  scale multiplies the Q block once per row block, not each score tile), and without
  autograd recording the statements skip gradient guards and compute in the storage
  of tile tensors no later statement reads (new tile-sized tensors cost page faults).

Values follow the reference backend's rules (codegen/torch_backend.py, whose printer
pieces this module reuses): absent points by `analysis/presence.py` masks, exact
padding (a masked contraction whose result is not finite is recomputed without the
masked terms), `_grad_only` where values at absent points would spoil gradients.

A cascade the fused schedule does not take (no streamed rank, a recurrence over the
keys one by one, several fused stages) runs the reference instead, and the module says
why in TORCH_FALLBACK.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import sympy

from ..analysis.presence import Condition, einsum_conditions, point_conditions
from . import names
from .printers import PythonScalarPrinter, TorchPrinter, is_atom
from .torch_reference import TorchEmitter, _EinsumEmitter, _reads_any
from ..schedule.attention import AttentionRoles
from ..schedule.bounds import stream_bound
from ..schedule.model import Role
from ..schedule.stages import NotFusable
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text

# Chosen by measurement (benchmarks/torch_cpu.py --tune, causal softmax, float32, D = 64,
# N = 2048 on the 2-core CPU, row blocks on two threads): best of 64-256 rows x 128-512
# keys. "threads": Python threads over row blocks on the CPU (None: torch.get_num_threads()).
DEFAULT_TUNING = {"row_block": 128, "key_tile": 256, "threads": None}

# Printed at the top of `_scheduled`: runs `block(row_lo)` for each row block. Row
# blocks share nothing but the output they write disjoint rows of, so on the CPU they
# are handed to Python threads that each run torch with one thread (torch releases the
# GIL inside an operation): the elementwise statements of a tile, which gain nothing from
# a second OpenMP thread on a tile that leaves the cache, then use every core. A block
# runs the same one-thread operations whichever thread takes it, so results do not
# depend on the threads. The largest row values go first: where a filter bounds the
# keys from above (causal) they are the longest blocks, and nothing else changes order.
# With autograd recording the blocks run in order in the calling thread: autograd does
# not take in-place writes to one output tensor from several threads at once.
_ROW_RUNNER = """\
def _row_blocks(block, starts):
    threads = TORCH_TUNING.get('threads')
    threads = torch.get_num_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"TORCH_TUNING['threads'] must be a positive integer or None, got {threads}")
    starts = list(starts)
    if threads == 1 or len(starts) == 1 or device.type != 'cpu' or not no_grad:
        for row_lo in starts:
            block(row_lo)
        return
    import threading
    pending, lock, errors = iter(starts[::-1]), threading.Lock(), []
    inference = torch.is_inference_mode_enabled()     # thread-local, as grad mode is
    def worker():
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.no_grad():
            while not errors:
                with lock:
                    row_lo = next(pending, None)
                if row_lo is None:
                    return
                try:
                    block(row_lo)
                except BaseException as error:
                    errors.append(error)
    torch_threads = torch.get_num_threads()
    helpers = [threading.Thread(target=worker) for number in range(min(threads, len(starts)) - 1)]
    try:
        for helper in helpers:
            helper.start()
        worker()
    finally:
        for helper in helpers:
            helper.join()
        torch.set_num_threads(torch_threads)
    if errors:
        raise errors[0]
def _select(ok, value, fill):
    # torch.where(ok, value, fill) when autograd does not record, for float32 values:
    # the bits of value where ok holds, those of fill elsewhere (exact, NaN included),
    # with the masks at ok's stored size (an expanded mask is the same all along a
    # stride-0 dimension); torch's where with a scalar took 8x a multiplication here.
    if value.dtype != torch.float32:
        return torch.where(ok, value, fill)
    ok = torch.as_tensor(ok, device=value.device)
    ok = ok[tuple(slice(None) if stride else slice(0, 1) for stride in ok.stride())]
    keep = ok.to(torch.int32).neg_()
    bits = value.view(torch.int32) & keep
    if fill != 0.0:
        bits |= ~keep & torch.tensor(fill, dtype=torch.float32, device=value.device).view(torch.int32)
    return bits.view(torch.float32)
"""


class Unscheduled(Exception):
    """The schedule cannot be printed as torch code (the reason is the message)."""


@dataclass(frozen=True)
class TorchSchedule:
    """What the generated module's `_scheduled` runs: its body (None where the
    reference runs instead), the reason for a fallback, and the schedule's decisions as
    data (in the spec's names)."""

    lines: tuple[str, ...] | None
    fallback: str | None
    note: str
    facts: dict = dataclasses.field(default_factory=dict)
    tuning: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_TUNING))


def schedule(kernel: Cascade) -> TorchSchedule:
    """The scheduled torch backend for `kernel` (the cascade the Triton kernels compute,
    Plan.kernel)."""
    renamed, folded = fold_constant_factors(names.rename(kernel))
    try:
        fuser = AttentionRoles(renamed)
        # The online rewrite's split: its factor is the schedule's to choose (the derived
        # cascade is exact for any factor: ir/cascade.py, Split.tunable).
        tunable = bool(kernel.splits) and all(s.tunable for s in kernel.splits)
        printer = _ScheduledPrinter(fuser, tunable)
        lines = printer.emit()
    except (NotFusable, Unscheduled) as reason:
        why = names.spec_text(str(reason))
        return TorchSchedule(None, f"no fused schedule: {why}",
                             f"torch: runs the reference (no fused schedule: {why}).")
    printer.facts["folded"] = folded
    facts = {key: names.spec_text(value) if isinstance(value, str) else
             [names.spec_text(v) for v in value] if isinstance(value, list) else value
             for key, value in printer.facts.items()}
    return TorchSchedule(tuple(lines), None, names.spec_text(printer.note()), facts)


# ------------------------------------------------------------------------ folding


def _quotient_factors(expr: ir.Expr) -> list[ir.Expr]:
    """The factors of a product of quotients: `a * b / c` -> [a, b, 1 / c]."""
    if isinstance(expr, ir.Op) and expr.op == "/":
        return _quotient_factors(expr.args[0]) + [ir.Op("/", (ir.Const(1.0), expr.args[1]))]
    if isinstance(expr, ir.Op) and expr.op == "*":
        return _quotient_factors(expr.args[0]) + _quotient_factors(expr.args[1])
    return [expr]


def _constant(expr: ir.Expr) -> bool:
    """An expression of constants, params and rank sizes only (no read, no index)."""
    return not any(isinstance(node, (ir.Read, ir.Index)) for node in ir.walk(expr))


def fold_constant_factors(cascade: Cascade) -> tuple[Cascade, list[str]]:
    """Constant factors of an epilogue moved back into the contraction it scales:
    `S = sum[e] K*Q; T = S * scale where m <= p` (the canonical form keeps the scale out
    of the sum) becomes `S = sum[e] K*Q*scale; T = S where m <= p`, when T is S's only
    reader. Exact by distributivity (scale does not vary over e); the contraction then
    multiplies the scale into its key-invariant operand (the Q block) once per row
    block, instead of the epilogue multiplying every score tile. Returns the cascade
    and, per fold, `S <- T` (the contraction and the epilogue it took factors from)."""
    einsums = {e.tensor: e for e in cascade.einsums}
    folded = []
    for epilogue in cascade.einsums:
        if epilogue.reduce_op is not None or epilogue.iterative is not None:
            continue
        factors = _quotient_factors(epilogue.body)
        reads = [f for f in factors if isinstance(f, ir.Read)]
        constants = [f for f in factors if _constant(f)]
        if len(reads) != 1 or len(reads) + len(constants) != len(factors) or not constants:
            continue
        source = einsums.get(reads[0].tensor)
        if source is None or source.reduce_op != "sum" or source.filter is not None or \
                source.iterative is not None or source.tensor in cascade.outputs or \
                cascade.consumers(source.tensor) != [epilogue.tensor] or \
                len(epilogue.accesses()) != 1:
            continue
        einsums[source.tensor] = dataclasses.replace(
            source, body=_product_of([source.body] + constants))
        einsums[epilogue.tensor] = dataclasses.replace(epilogue, body=reads[0])
        folded.append(f"{source.tensor} <- {epilogue.tensor}")
    if not folded:
        return cascade, []
    return dataclasses.replace(cascade, einsums=tuple(einsums[e.tensor]
                                                      for e in cascade.einsums)), folded


def _product_of(factors: list[ir.Expr]) -> ir.Expr:
    product = factors[0]
    for factor in factors[1:]:
        product = ir.Op("*", (product, factor))
    return product


# ------------------------------------------------------------------------ reads


def _index_text(parts: list[str]) -> str:
    while parts and parts[-1] == ":":
        parts.pop()
    return f"[{', '.join(parts)}]" if parts else ""


def _aligned(base: str, selectors: list[tuple[str, str | None]], axes: tuple[str, ...]) -> str:
    """`base` indexed by `selectors` (per position: a slice kept as the axis of a
    variable, or an integer that drops the position), laid out in `axes`: permuted into
    their order, with None where a variable of `axes` is not among them."""
    kept = [var for _, var in selectors if var is not None]
    order = sorted(range(len(kept)), key=lambda i: axes.index(kept[i]))
    if order != list(range(len(kept))):
        base = f"{base}{_index_text([text for text, _ in selectors])}" \
               f".permute({', '.join(map(str, order))})"
        selectors = [(":", kept[i]) for i in order]
    parts, next_axis = [], 0
    for text, var in selectors:
        if var is not None:
            axis = axes.index(var)
            parts += ["None"] * (axis - next_axis)
            next_axis = axis + 1
        parts.append(text)
    parts += ["None"] * (len(axes) - next_axis)
    return f"{base}{_index_text(parts)}"


class _GuardedPrinter(TorchPrinter):
    """The derived cascades guard their divisions and shifts with `where` (AV =
    where(SNV == 0, 0, SNV / SD), CGM = where(RGM == -inf, 0, exp(...))): the branch not
    picked may be NaN or have an infinite derivative there, and torch.where's zero
    gradient for it times that derivative is NaN (a row that sees no key). So each
    branch reads its tensors through `_grad_only` with the condition that picks it."""

    def print(self, expr: ir.Expr, context: int) -> str:
        if not (isinstance(expr, ir.Op) and expr.op == "where" and not self.integer
                and self.tensor(expr.args[0])):
            return super().print(expr, context)
        condition = self.print(expr.args[0], 0)
        read = self._read
        branches = []
        for arg, picked in ((expr.args[1], condition), (expr.args[2], f"~({condition})")):
            self._read = lambda node, picked=picked: f"_grad_only({picked}, {read(node)})"
            try:
                branches.append(self.print(arg, 0))
            finally:
                self._read = read
        return f"torch.where({condition}, {branches[0]}, {branches[1]})"


@dataclass
class _BlockReads(_EinsumEmitter):
    """Reads inside one row block and key tile: inputs by slices of the block and the
    tile (a gather over index grids where a coordinate is no plain slice), intermediates
    as the block tensors the schedule keeps (in canonical axis order)."""

    printer: "_ScheduledPrinter | None" = None
    # Whether a read may gather over index grids (laid out in the Einsum's space).
    gathers: bool = True
    # Each branch of a `where` passes gradients only where it is picked.
    expression_printer = _GuardedPrinter

    def _is_plain_view(self, node: ir.Read) -> bool:
        return False             # the base class's gather path, over the block's grids

    def read(self, node: ir.Read, name: str | None = None) -> str:
        if not node.indices:
            return name or node.tensor
        if not self.cascade.tensors[node.tensor].is_input:
            return self._block_read(node, name)
        selectors = []
        for position, index in enumerate(node.indices):
            selector = self.printer.selector(node.tensor, position, index, self.axes)
            if selector is None:
                if any(isinstance(n, ir.Read) for i in node.indices for n in ir.walk(i)):
                    raise Unscheduled(f"a tensor read inside an index ({ir.to_text(node)})")
                if not self.gathers:
                    raise _Gather
                return super().read(node, name)
            selectors.append(selector)
        return _aligned(name or node.tensor, selectors, self.axes)

    def _block_read(self, node: ir.Read, name: str | None) -> str:
        p = self.printer
        einsum = self.cascade.einsum(node.tensor)
        # The schedule's rule for register reads (the value before the step, `X_at`, or
        # the tensor's own); it refused every other read when it chose the roles.
        register = p.f.register_name(node)
        base = register if register != node.tensor else name or node.tensor
        own = p.kept(einsum)
        return _aligned(base, [(":", v) for v in own], self.axes)


class _Exp2Printer(TorchPrinter):
    """`exp(x)` as `exp2(x * log2(e))`: torch's float32 exp takes about twice exp2's time
    on a large tensor and 20x on a small one (a per-row correction factor: 68 us against
    3 us with two threads, measured on the 2-core CPU); the product's rounding changes
    the result by a relative |x| * 2**-24 at most (verify.py's tolerance allows u * S
    for logits of size S)."""

    def print(self, expr: ir.Expr, context: int) -> str:
        if isinstance(expr, ir.Op) and expr.op == "exp" and self.tensor(expr):
            return f"torch.exp2(math.log2(math.e) * ({self.print(expr.args[0], 0)}))"
        return super().print(expr, context)


class _UnguardedReads(_BlockReads):
    """Reads as `_BlockReads`, for code that runs only when autograd does not record:
    without the gradient guards of `where` branches (`_grad_only` is the identity then),
    exp as exp2."""

    expression_printer = _Exp2Printer


def _uses(text: str, name: str) -> bool:
    """Whether generated code `text` uses the name (an index grid) as a variable."""
    return re.search(rf"(?<![\w.\"]){re.escape(name)}(?![\w\"])", text) is not None


def _product(texts: list[str], layouts: list[tuple[str, ...]], out: tuple[str, ...],
             space: tuple[str, ...]) -> str:
    """The sum over the variables not in `out` of the product of operands (each in its
    own layout): torch.matmul when it is one batched matrix product (both operands lead
    with the batch dimensions of the result, one contracted variable, one free
    variable each), else torch.einsum."""
    if len(texts) == 2:
        (a, b), (la, lb) = texts, layouts
        batch = tuple(v for v in out if v in la and v in lb)
        contracted = [v for v in la if v in lb and v not in out]
        rows = [v for v in la if v not in lb]
        columns = [v for v in lb if v not in la]
        if len(contracted) == 1 and len(rows) == 1 and len(columns) == 1 and \
                la[:len(batch)] == batch and lb[:len(batch)] == batch and \
                out == batch + (rows[0], columns[0]) and len(la) == len(lb) == len(batch) + 2:
            if la[-1] != contracted[0]:
                a += ".transpose(-1, -2)"
            if lb[-2] != contracted[0]:
                b += ".transpose(-1, -2)"
            return f"torch.matmul({a}, {b})"
    if len(texts) == 1 and [v for v in layouts[0] if v in out] == list(out):
        dims = tuple(i for i, v in enumerate(layouts[0]) if v not in out)
        if dims:          # one operand: a plain sum over its other dimensions
            operand = texts[0] if is_atom(texts[0]) else f"({texts[0]})"
            return f"{operand}.sum(dim={dims[0] if len(dims) == 1 else dims})"
    letters = {v: chr(ord("a") + i) for i, v in enumerate(space)}
    subscripts = ",".join("".join(letters[v] for v in layout) for layout in layouts)
    return f"torch.einsum(\"{subscripts}->{''.join(letters[v] for v in out)}\", " \
           f"{', '.join(texts)})"


class _Gather(Exception):
    """A read needs a gather, which an operand in its own layout cannot take."""


class _Writer(TorchEmitter):
    """The reference emitter's reductions (torch.einsum for a sum of a product, else
    the masked body reduced), with the sizes of a row block and a key tile."""

    def __init__(self, cascade: Cascade, extents: dict[str, str]):
        self.cascade = cascade
        self.extents = extents
        self.lines = []

    def _size(self, var: str | None) -> str:
        """A block's extent of `var` (None: a size-1 axis)."""
        if var is None:
            return "1"
        return self.extents.get(var) or self.cascade.var_rank(var)


class _InPlace:
    """An elementwise body computed in the storage of one spare tensor it reads once:
    `exp(QK - SGM)` -> `QK.sub_(SGM).mul_(log2(e)).exp2_()`, `X + Y * C` ->
    `X.addcmul_(Y, C)`. Only operations whose in-place form computes the same float32
    values, up to the rounding noted at exp; None when the body has no such form."""

    # exp(x) as 2 ** (x * log2(e)), as _Exp2Printer prints it.
    _UNARY = {"exp": "mul_(math.log2(math.e)).exp2_", "log": "log_", "sqrt": "sqrt_",
              "tanh": "tanh_", "sigmoid": "sigmoid_", "relu": "relu_", "abs": "abs_"}
    _BINARY = {"+": "add_", "-": "sub_", "*": "mul_", "/": "div_"}

    def __init__(self, emitter: "_BlockReads", spare: set[str]):
        self.emitter = emitter
        self.spare = spare

    def text(self, body: ir.Expr) -> str | None:
        reads = [r.tensor for r in ir.reads(body)]
        self.candidates = {t for t in self.spare if reads.count(t) == 1}
        if not self.candidates or isinstance(body, ir.Read):
            return None
        return self._print(body)

    def _operand(self, expr: ir.Expr) -> str:
        return self.emitter.value(expr)

    def _print(self, expr: ir.Expr) -> str | None:
        if isinstance(expr, ir.Read):
            if expr.tensor in self.candidates and \
                    self.emitter.read(expr) == expr.tensor:
                return expr.tensor
            return None
        if not isinstance(expr, ir.Op):
            return None
        op, args = expr.op, expr.args
        if op in self._UNARY:
            inner = self._print(args[0])
            return None if inner is None else f"{inner}.{self._UNARY[op]}()"
        if op not in self._BINARY or len(args) != 2:
            return None
        tensor = self.emitter.expression_printer(self.emitter.read).tensor
        first = self._print(args[0])
        if first is not None:
            other = args[1]
            if op == "+" and isinstance(other, ir.Op) and other.op == "*" and \
                    all(tensor(a) for a in other.args):
                return (f"{first}.addcmul_({self._operand(other.args[0])}, "
                        f"{self._operand(other.args[1])})")
            return f"{first}.{self._BINARY[op]}({self._operand(other)})"
        if op in ("+", "*"):
            second = self._print(args[1])
            if second is not None:
                return f"{second}.{self._BINARY[op]}({self._operand(args[0])})"
        return None


# ------------------------------------------------------------------------ the schedule


class _ScheduledPrinter:
    """Prints the body of `_scheduled` from the fused schedule's decisions (`schedule/attention.py`'s roles)."""

    def __init__(self, fuser: AttentionRoles, tunable_split: bool):
        self.f = f = fuser
        self.cascade = c = fuser.cascade
        self.split = f.loop is not None
        self.tunable = tunable_split
        self.canonical = tuple(f.batch) + (f.row, f.stream) + tuple(f.features)
        # Where each variable of a block ranges (first index, count) in generated code.
        self.ranges = {f.row: ("row_lo", "row_n"),
                       f.stream: ("0", "key_n") if self.split else ("key_lo", "key_n")}
        self.writer = _Writer(c, {v: n for v, (_, n) in self.ranges.items()})
        self.lines: list[str] = []
        # The loop over key tiles being written: where values hoisted out of it go.
        self.loop_start: int | None = None
        self.loop_depth = 0
        self.hoisted: dict[str, str] = {}
        # Masked operands named in the tile being written (text -> name), and the
        # statements naming them that the current statement needs first.
        self.shared: dict[str, str] = {}
        self.pending: list[str] = []
        self.facts: dict = {"form": "split" if self.split else "attention",
                            "row": f.row, "batch": list(f.batch), "stream": f.stream,
                            "loop": f.loop, "held": list(f.features)}
        # Affine filters of key and row (`m <= p + c`): a tile they keep whole for every
        # row of the block is computed without their masks.
        self.bounds = self._affine_bounds()
        self.absent = {variant: self._absent(variant) for variant in ("edge", "interior")}

    # -- variables and layouts ---------------------------------------------------------
    def kept(self, einsum: Einsum) -> tuple[str, ...]:
        """The block dimensions of a tensor: its left variables but the step, in
        canonical order (batch, row, key, features)."""
        own = set(einsum.indices) - {self.f.loop}
        return tuple(v for v in self.canonical if v in own)

    def space(self, einsum: Einsum) -> tuple[str, ...]:
        reduced = set(einsum.reduced)
        return self.kept(einsum) + tuple(v for v in self.canonical if v in reduced)

    def _key_index(self, index: ir.Expr) -> bool:
        """The split's key `m1 * M0 + m0`: the tile's slice of the parent rank."""
        f = self.f
        if not self.split:
            return False
        inner = ir.Dim(self.cascade.var_rank(f.stream))
        step = ir.Index(f.loop)
        return index in (ir.Op("+", (ir.Op("*", (step, inner)), ir.Index(f.stream))),
                         ir.Op("+", (ir.Op("*", (inner, step)), ir.Index(f.stream))))

    def selector(self, tensor: str, position: int, index: ir.Expr,
                 axes: tuple[str, ...]) -> tuple[str, str | None] | None:
        """How a read of an input takes one coordinate in a block: a slice (and the
        variable whose axis it is), an integer, or None (a gather is needed)."""
        c, f = self.cascade, self.f
        rank = c.tensors[tensor].ranks[position]
        if self._key_index(index) and rank == c.root_rank(c.var_rank(f.stream)):
            return "key_lo:key_lo + key_n", f.stream
        if isinstance(index, ir.Index) and index.var in axes and \
                c.var_rank(index.var) == rank:
            if index.var in self.ranges and not (self.split and index.var == f.stream):
                lo, n = self.ranges[index.var]
                return f"{lo}:{lo} + {n}", index.var
            if index.var == f.stream:           # m0 as a coordinate of a rank M0
                return ":key_n", index.var
            return ":", index.var
        return None

    def _always_true(self, condition: Condition) -> bool:
        """Conditions every point of a tile meets by construction: the split's
        `m1 * M0 + m0 < M` and the range of a read at the key (tiles end at M)."""
        if condition.kind == "split":
            return True
        if condition.kind != "range" or not self.split:
            return False
        c, f = self.cascade, self.f
        root = ir.Dim(c.root_rank(c.var_rank(f.stream)))
        low, high = condition.expr.args if isinstance(condition.expr, ir.Op) and \
            condition.expr.op == "and" else (None, None)
        return low is not None and low.args[0] == ir.Const(0) and \
            self._key_index(low.args[1]) and high.args == (low.args[1], root)

    def _affine_bounds(self) -> list[tuple[str, sympy.Expr]]:
        found = []
        for einsum in self.cascade.einsums:
            for conjunct in ir.conjuncts(einsum.filter):
                bound = self._bound(conjunct)
                if bound is not None and bound not in found:
                    found.append(bound)
        return found

    def _bound(self, conjunct: ir.Expr):
        keyed = self.f.keyed(conjunct)
        return stream_bound(keyed, self.f.stream, self.f.row)

    def conditions(self, einsum: Einsum, variant: str, absent: set[str]) -> list[Condition]:
        """The presence conditions of `einsum` in a tile of `variant`: "edge" (every
        mask) or "interior" (the affine filters hold for the whole tile)."""
        space = self.space(einsum) + ((self.f.loop,) if self.split else ())
        # The absence of a per-row value is said by its row's conditions (the schedule's).
        return self.f.resolve(einsum, [
            kept for condition in einsum_conditions(self.cascade, einsum, absent, space)
            if (kept := self._pruned(condition, variant)) is not None])

    def _pruned(self, condition: Condition, variant: str) -> Condition | None:
        if self._always_true(condition):
            return None
        if variant == "interior" and condition.kind == "filter" and \
                self._bound(condition.expr) in self.bounds:
            return None
        parts = tuple(tuple(kept for c in part
                            if (kept := self._pruned(c, variant)) is not None)
                      for part in condition.parts)
        return dataclasses.replace(condition, parts=parts)

    def _absent(self, variant: str) -> set[str]:
        """Tensors that may be absent in a tile of `variant` (as absent_tensors)."""
        absent: set[str] = set()
        for einsum in self.cascade.einsums:
            if point_conditions(einsum, self.conditions(einsum, variant, absent)):
                absent.add(einsum.tensor)
        return absent

    # -- statements ----------------------------------------------------------------
    def line(self, text: str, depth: int) -> None:
        self.lines.append("    " * depth + text if text else "")

    def _grids(self, axes: tuple[str, ...], text: str, depth: int) -> None:
        """Index grids of the block for the variables `text` uses (global indices;
        the split's m0 counts from the tile's first key)."""
        for axis, var in enumerate(axes):
            if not _uses(text, var):
                continue
            view = ", ".join("-1" if i == axis else "1" for i in range(len(axes)))
            if var in self.ranges:
                lo, n = self.ranges[var]
                span = n if lo == "0" else f"{lo}, {lo} + {n}"
            else:
                span = self.cascade.var_rank(var)
            self.line(f"{var} = torch.arange({span}, device=device).view({view})", depth)

    def compute(self, einsum: Einsum, variant: str, depth: int,
                target: str | None = None, spare: set[str] = frozenset()) -> None:
        """Statements computing `einsum` over the block (and tile) into `target`."""
        absent = self.absent[variant]
        target = target or einsum.tensor
        kept = self.kept(einsum)
        axes = self.space(einsum)
        emitter = _BlockReads(self.cascade, absent, axes,
                              (self.f.loop,) if self.split else (), printer=self)
        conditions = self.conditions(einsum, variant, absent)
        points = point_conditions(einsum, conditions)
        terms = [c for c in conditions if c not in points]
        shape = self.writer._shape(kept)
        statements = []
        body = einsum.body
        covers = set(kept) <= set(ir.index_vars(body)) and _reads_any(body)
        assign = f"{target} = {{}}" if covers else f"{target} = _full({{}}, {shape})"
        if einsum.reduce_op is None:
            value = emitter.value(body, present=points)
            # Without gradients recorded, the statement needs no gradient guards (their
            # masks are small tensor operations, each a Python-level call per tile), and
            # computes in the storage of a tile tensor no later statement reads: no new
            # tile-sized tensor (a fresh one costs a page fault per 4 KiB on the CPU).
            plain = _UnguardedReads(self.cascade, absent, axes,
                                    (self.f.loop,) if self.split else (), printer=self)
            untracked = (_InPlace(plain, spare).text(body) if covers else None) or \
                plain.value(body)
            if untracked != value:
                value = f"{untracked} if no_grad else {value}"
            statements.append(assign.format(value))
        else:
            masked = self.writer._masked_reduction(einsum, emitter, terms, points, kept)
            self.pending = []
            call = self._contraction(einsum, variant, terms, points) or \
                self.writer._einsum_call(einsum, emitter, terms, points, kept)
            exact = masked
            if call is None and terms:
                # Without gradients recorded, masked terms are selected by bit operations.
                plain = _UnguardedReads(self.cascade, absent, axes,
                                        (self.f.loop,) if self.split else (), printer=self)
                selected = self.writer._masked_reduction(einsum, plain, terms, points, kept,
                                                         select="_select")
                exact = f"{selected} if no_grad else {masked}"
            statements += self.pending + [assign.format(call or exact)]
            if call is not None and terms and len(ir.product_factors(body)) > 1:
                # As in the reference: a masked term's other factor may hold inf or NaN
                # (V at a key the row does not see); only a finite result is surely
                # exact, else the tile is reduced again without the masked terms. An inf
                # or NaN anywhere makes the sum inf or NaN (one pass, where isfinite
                # makes three); a sum that overflows only recomputes the exact form.
                statements.append(f"if not torch.isfinite({target}.sum()):")
                statements.append("    " + assign.format(masked))
        if einsum.tensor in absent and self.f.kinds[einsum.tensor].on_key_tile:
            # Point conditions do not vary over reduced axes (size 1 there).
            mask = emitter.conjunction(points)
            ones = self.writer._shape(kept + (None,) * len(einsum.reduced))
            statements.append(f"{einsum.tensor}_ok = _full({mask}, {ones}, torch.bool)"
                              + (f".reshape{shape}" if einsum.reduced else ""))
        self._grids(axes, "\n".join(statements), depth)
        for statement in statements:
            self.line(statement, depth)

    def _contraction(self, einsum: Einsum, variant: str, terms: list[Condition],
                     points: list[Condition]) -> str | None:
        """A sum of a product as one batched matmul (or torch.einsum) whose operands
        have only their own dimensions, each masked term zeroed in the factor whose
        variables its condition is over (the probabilities of P V on a tile the
        diagonal crosses); the factors that do not vary over the keys (the Q block of
        Q K^T, and constants) multiplied once per row block, before the loop over key
        tiles. None where the reference's form is needed (a read that gathers, a mask
        that no one factor owns, index values in an operand)."""
        if einsum.reduce_op != "sum" or self.loop_start is None:
            return None
        space = self.space(einsum)
        factors = ir.product_factors(einsum.body)
        varying = {self.f.stream, self.f.loop}
        invariant = [f for f in factors if not set(ir.index_vars(f)) & varying]
        operands = [[f] for f in factors if f not in invariant]
        rows = tuple(v for v in space if any(v in ir.index_vars(f) for f in invariant))
        used = {v for f in factors for v in ir.index_vars(f)}
        if not operands or not set(einsum.reduced) <= used or \
                not set(self.kept(einsum)) <= used:
            return None
        groups = [(g, tuple(v for v in space if v in ir.index_vars(g[0]))) for g in operands]
        if rows:
            groups.insert(0, (invariant, rows))
        printed = []
        for group, layout in groups:
            emitter = _BlockReads(self.cascade, self.absent[variant], layout,
                                  (self.f.loop,) if self.split else (), printer=self,
                                  gathers=False)
            variables = {v for f in group for v in ir.index_vars(f)}
            owned = [c for c in terms if c.variables <= variables]
            if owned and group is invariant:
                return None
            try:
                text = " * ".join(emitter.value(f, beside="*", present=[
                    c for c in terms + points if c.variables <= set(ir.index_vars(f))])
                    for f in group)
                if owned:
                    ok = emitter.conjunction(owned)
                    text = f"_select({ok}, {text}, 0.0) if no_grad else " \
                           f"torch.where({ok}, {text}, 0.0)"
            except _Gather:
                return None
            if group is not invariant and any(_uses(text, v) for v in layout):
                return None           # index grids are laid out in the Einsum's space
            if owned and group is not invariant:
                text = self._shared(text, group[0])
            printed.append(text)
            terms = [c for c in terms if c not in owned]
        if terms:
            return None
        texts, layouts = [], []
        for text, (group, layout) in zip(printed, groups):
            if group is invariant:
                text = self._hoist(einsum, text, layout)
            elif not _reads_any(group[0]):
                text = f"_f32({text})"
            texts.append(text)
            layouts.append(layout)
        call = _product(texts, layouts, self.kept(einsum), space)
        if invariant and not rows:            # constants only: they scale the result
            emitter = _BlockReads(self.cascade, self.absent[variant], space, (), printer=self)
            call += "".join(f" * {emitter.value(f, beside='*')}" for f in invariant)
        return call

    def _shared(self, text: str, factor: ir.Expr) -> str:
        """A masked operand named once per tile: P of P V and of sum P on a tile the
        diagonal crosses is masked once, not once per contraction. Sound because every
        tensor of a tile is assigned once in it (statements overwrite only tensors no
        later statement reads)."""
        if text not in self.shared:
            base = f"{factor.tensor}_kept" if isinstance(factor, ir.Read) else "masked_operand"
            name, number = base, 1
            while name in self.shared.values():
                number += 1
                name = f"{base}{number}"
            self.shared[text] = name
            self.pending.append(f"{name} = {text}")
        return self.shared[text]

    def _hoist(self, einsum: Einsum, text: str, layout: tuple[str, ...]) -> str:
        """A value computed once before the loop over key tiles: the name it gets."""
        if text not in self.hoisted:
            name = f"{einsum.tensor}_rows"
            taken = set(self.hoisted.values())
            number = 1
            while name in taken:
                number += 1
                name = f"{einsum.tensor}_rows{number}"
            self.hoisted[text] = name
            start = len(self.lines)
            self._grids(layout, text, self.loop_depth)
            self.line(f"{name} = {text}", self.loop_depth)
            moved = self.lines[start:]
            del self.lines[start:]
            self.lines[self.loop_start:self.loop_start] = moved
            self.loop_start += len(moved)
        return self.hoisted[text]

    def _loop(self, header: str, depth: int) -> None:
        """Open a loop over key tiles; values hoisted out of it go just before it."""
        self.loop_start, self.loop_depth, self.hoisted = len(self.lines), depth, {}
        self.line(header, depth)

    def _comment(self, einsum: Einsum, depth: int) -> None:
        self.line(f"# {lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}", depth)

    def _rows(self, available: set[str], depth: int) -> None:
        """Per-row values whose inputs are available, in dataflow order."""
        for einsum in self.cascade.einsums:
            if self.f.kinds[einsum.tensor] is Role.ROW and einsum.tensor not in available \
                    and all(r in available for r in einsum.reads):
                self._comment(einsum, depth)
                self.compute(einsum, "edge", depth)
                available.add(einsum.tensor)

    def _tile(self, einsums: list[Einsum], depth: int, accumulate: bool = False) -> None:
        """The statements of one tile, twice where an affine filter may keep the whole
        tile: without those masks for such a tile, with them for the others."""
        variants = ("interior", "edge") if self.bounds else ("edge",)
        for variant in variants:
            if len(variants) > 1:
                self.line(f"if {self._interior()}:" if variant == "interior" else "else:",
                          depth)
            inner = depth + (len(variants) > 1)
            self.shared = {}
            owned: set[str] = set()
            for position, einsum in enumerate(einsums):
                self._comment(einsum, inner)
                kind = self.f.kinds[einsum.tensor]
                spare = self._spare(einsums, position, owned)
                if accumulate and kind in (Role.ACCUMULATE, Role.DOT_ACCUMULATE):
                    self.compute(einsum, variant, inner, target=f"{einsum.tensor}_tile",
                                 spare=spare)
                    self.line(f"{einsum.tensor} = {self._combine(einsum)}", inner)
                else:
                    self.compute(einsum, variant, inner, spare=spare)
                if self._fresh(einsum) or self._alias(einsum) in owned:
                    owned.add(einsum.tensor)

    # -- storage a statement may take over (no gradients recorded) -------------------
    def _fresh(self, einsum: Einsum) -> bool:
        """Whether the statement of `einsum` makes a new float tensor of its full block
        shape (an operation on tensors), not a view, an alias or a broadcast constant."""
        body = einsum.body
        if ir.is_boolean(body) or not _reads_any(body) or \
                not set(self.kept(einsum)) <= set(ir.index_vars(body)):
            return False
        return einsum.reduce_op is not None or not isinstance(body, ir.Read)

    def _alias(self, einsum: Einsum) -> str | None:
        """The tensor whose storage `einsum`'s statement names again (`QK = QK_sum`: a
        plain read in the same layout; `_grad_only` returns it unchanged), if any."""
        body = einsum.body
        if einsum.reduce_op is not None or not isinstance(body, ir.Read) or \
                self.cascade.tensors[body.tensor].is_input:
            return None
        source = self.cascade.einsum(body.tensor)
        if self.kept(source) != self.kept(einsum) or \
                body.indices != tuple(ir.Index(v) for v in source.indices):
            return None
        return body.tensor

    def _spare(self, einsums: list[Einsum], position: int, owned: set[str]) -> set[str]:
        """Tensors of this tile whose storage the statement at `position` may overwrite
        when no gradient is recorded: each was made in the tile (or names storage made
        in it), has the statement's block shape, and is read by no later statement, in
        this tile, after the loop or at the next step (so not carried, not an output)."""
        later = {e.tensor for e in einsums[position + 1:]}
        inside = {e.tensor for e in einsums[:position + 1]}
        kept = self.kept(einsums[position])
        spare = set()
        for einsum in einsums[:position]:
            name = einsum.tensor
            readers = set(self.cascade.consumers(name))
            if name in owned and name not in self.cascade.outputs and \
                    self.kept(einsum) == kept and readers <= inside and \
                    not readers & later and name not in readers:
                spare.add(name)
        # Storage named twice (QK = QK_sum) is spare only when every name for it is.
        pairs = [(e.tensor, self._alias(e)) for e in einsums[:position] if self._alias(e)]
        changed = True
        while changed:
            changed = False
            for name, source in pairs:
                if (source in spare) != (name in spare):
                    spare -= {source, name}
                    changed = True
        return spare

    def _combine(self, einsum: Einsum) -> str:
        name = einsum.tensor
        return {"sum": f"{name} + {name}_tile", "max": f"torch.maximum({name}, {name}_tile)",
                "min": f"torch.minimum({name}, {name}_tile)"}[einsum.reduce_op]

    def _interior(self) -> str:
        """Whether every affine filter holds for every (row, key) of the tile: key <=
        row + c for all exactly when the last key <= the first row + c (offsets with
        params rounded inwards, so an interior tile is never one that needs a mask)."""
        first_key, last_key = "key_lo", "key_lo + key_n - 1"
        first_row, last_row = "row_lo", "row_lo + row_n - 1"
        tests = []
        for side, offset in self.bounds:
            if side == "upper":
                tests.append(f"{last_key} <= {first_row} + {self._offset(offset, 'floor')}")
            else:
                tests.append(f"{first_key} >= {last_row} + {self._offset(offset, 'ceil')}")
        return " and ".join(tests)

    @staticmethod
    def _offset(offset: sympy.Expr, rounding: str) -> str:
        if not offset.free_symbols:
            return f"({int(offset)})"
        return f'_outwards({sympy.pycode(offset)}, "{rounding}")'

    # -- the loops ---------------------------------------------------------------------
    def emit(self) -> list[str]:
        c, f = self.cascade, self.f
        self.line("row_block = int(TORCH_TUNING['row_block'])", 0)
        self.line("if row_block < 1:", 0)
        self.line("    raise ValueError(f\"TORCH_TUNING['row_block'] must be a positive "
                  "integer, got {row_block}\")", 0)
        inputs = ", ".join(t.name for t in c.inputs)
        self.line("# Without autograd recording, statements skip gradient guards and may "
                  "overwrite tile tensors no later statement reads.", 0)
        self.line(f"no_grad = not (torch.is_grad_enabled() and any(isinstance(v, "
                  f"torch.Tensor) and v.requires_grad for v in ({inputs}, "
                  f"*params.values())))", 0)
        if not self.split or self.tunable:
            self.line("key_tile = int(TORCH_TUNING['key_tile'])", 0)
            self.line("if key_tile < 1:", 0)
            self.line("    raise ValueError(f\"TORCH_TUNING['key_tile'] must be a positive "
                      "integer, got {key_tile}\")", 0)
        if self.split and self.tunable:
            inner = c.var_rank(f.stream)
            outer = c.var_rank(f.loop)
            parent = c.root_rank(inner)
            self.line(f"# the online rewrite's split: any factor computes the same "
                      f"(the key tile)", 0)
            self.line(f"{inner} = key_tile", 0)
            self.line(f"{outer} = -(-{parent} // {inner})", 0)
        for output in c.outputs:
            shape = ", ".join(c.tensors[output].ranks)
            comma = "," if len(c.tensors[output].ranks) == 1 else ""
            self.line(f"{output}_out = torch.empty(({shape}{comma}), device=device)", 0)
        for text in _ROW_RUNNER.splitlines():
            self.line(text, 0)
        rows = c.var_rank(f.row)
        self.line("def _row_block(row_lo):", 0)
        self.line(f"row_n = min(row_block, {rows} - row_lo)", 1)
        available = {t.name for t in c.inputs}
        self._rows(available, 1)
        if self.split:
            self._steps(available)
        else:
            self._passes(available)
        self._rows(available, 1)
        for output in c.outputs:
            self._store(output)
        self.line(f"_row_blocks(_row_block, range(0, {rows}, row_block))", 0)
        for output in c.outputs:
            self.line(f"{output} = {output}_out", 0)
        return self.lines

    def _steps(self, available: set[str]) -> None:
        c, f = self.cascade, self.f
        carried = [e for e in c.einsums if f.kinds[e.tensor] is Role.CARRIED]
        for einsum in carried:
            self.line(f"# init {einsum.tensor} = {ir.to_text(einsum.init)}", 1)
            others = tuple(v for v in einsum.indices if v != f.loop)
            self.compute(Einsum(einsum.tensor, others, einsum.init), "edge", 1)
        steps, end = self._step_bounds()
        self.line(f"keys_end = {end}", 1)
        self._loop(f"for {f.loop} in {steps}:", 1)
        inner = c.var_rank(f.stream)
        self.line(f"key_lo = {f.loop} * {inner}", 2)
        self.line(f"key_n = min({inner}, keys_end - key_lo)", 2)
        for einsum in carried:
            self.line(f"{einsum.tensor}_at = {einsum.tensor}", 2)
        steps = [e for e in c.einsums if f.kinds[e.tensor] is not Role.ROW]
        self._tile(steps, 2)
        self.loop_start = None
        available.update(e.tensor for e in steps)

    def _step_bounds(self) -> tuple[str, str, str]:
        """The steps a row block visits and the end of the keys they hold: all, or (when
        a fully masked step provably changes nothing carried) those holding a key some
        row of the block sees, the last cut after the last such key: a key every row
        of the block masks adds the identity to each per-step reduction, as in a step
        that holds only such keys, so leaving it out changes nothing either (on the
        diagonal a tile as wide as the row block, not the key tile, is computed)."""
        c, f = self.cascade, self.f
        outer = c.var_rank(f.loop)
        inner = c.var_rank(f.stream)
        keys = c.root_rank(inner)
        reductions = [e for e in c.einsums
                      if f.kinds[e.tensor] in (Role.TILE_REDUCE, Role.TILE_DOT)]
        # The schedule's decision, as the Triton kernel takes it (no bounds: every step).
        offsets, self.facts["skipping"] = f.split_skipping(reductions)
        lo, hi, end = "0", outer, keys
        sinks = None
        for bound in _same_for_the_batch(offsets):
            if bound.side == "upper":   # keys up to the last row + offset (rounded outwards)
                hi = self._open_rows(bound, f"min({outer}, max(0, {self._keys_end(bound)} + "
                                            f"{inner} - 1) // {inner})", outer)
                end = self._open_rows(bound, f"min({keys}, max(0, {self._keys_end(bound)}))",
                                      keys)
            else:
                lo = f"max(0, {self._keys_start(bound)}) // {inner}"
                sinks = self._sinks(bound)
        if sinks is None:
            return f"range({lo}, {hi})", end
        # the sinks' steps, then the window's from past them (schedule/bounds.py)
        self.line(f"sink_steps = min({hi}, -(-{sinks} // {inner}))", 1)
        return f"(*range(0, sink_steps), *range(max({lo}, sink_steps), {hi}))", end

    def _open_rows(self, bound, end: str, every: str) -> str:
        """An upper bound's end, or `every` for a row block holding a row that sees every
        key (below the bound's `open_rows`: schedule/model.py's Bound)."""
        if bound.open_rows is None:
            return end
        return f"({every} if row_lo < {self._offset(bound.open_rows, 'ceil')} else {end})"

    def _sinks(self, bound):
        """The keys every row sees besides a lower bound's window, `key < sinks`
        (bounds.py's either_bound): their exclusive end, rounded up; None without."""
        if bound.sinks is None:
            return None
        return f"max(0, {self._offset(bound.sinks, 'ceil')})"

    def _keys_start(self, bound) -> str:
        """The first key a lower bound lets the row block see: its first row's."""
        if bound.function is not None:      # a clamped window (schedule/bounds.py)
            return self._at_row(bound.function, "row_lo")
        return f"row_lo + {self._offset(bound.offset, 'floor')}"

    def _keys_end(self, bound) -> str:
        """One past the last key an upper bound lets the row block see: its last row's."""
        if bound.function is not None:
            return f"{self._at_row(bound.function, 'row_lo + row_n - 1')} + 1"
        return f"row_lo + row_n + {self._offset(bound.offset, 'ceil')}"

    def _at_row(self, function: ir.Expr, row: str) -> str:
        """A monotone bound's value at one row: a whole number (bounds.py takes the floor
        or ceiling and clamps it), as a Python int. Python's max(-1, nan) is -1, so a NaN
        (W = nan masks every key: any bound is exact) converts too."""
        keys = self.cascade.root_rank(self.cascade.var_rank(self.f.stream))
        value = PythonScalarPrinter({self.f.row: f"({row})"})(function)
        return f"int(min(max(-1, {value}), {keys}))"

    def _passes(self, available: set[str]) -> None:
        c, f = self.cascade, self.f
        stream = c.var_rank(f.stream)
        for number, accumulators, needed in f.pass_plan():
            self.line(f"# pass {number} over {f.stream}: "
                      f"{', '.join(e.tensor for e in accumulators) or 'nothing accumulates'}",
                      1)
            for acc in accumulators:
                identity = {"sum": "0.0", "max": "-math.inf", "min": "math.inf"}
                shape = self.writer._shape(self.kept(acc))
                self.line(f"{acc.tensor} = torch.full({shape}, "
                          f"{identity[acc.reduce_op]}, device=device)", 1)
            lo, hi, sinks = "0", stream, None
            for bound in _same_for_the_batch(self.f.masking_offsets(accumulators)):
                if bound.side == "upper":
                    hi = self._open_rows(bound, f"min({stream}, max(0, "
                                                f"{self._keys_end(bound)}))", stream)
                else:
                    lo = f"max(0, {self._keys_start(bound)})"
                    sinks = self._sinks(bound)
            self.line(f"keys_end = {hi}", 1)
            tiles = f"range({lo}, keys_end, key_tile)"
            if sinks is not None:
                # the sinks' tiles, then the window's from the first key past them
                self.line(f"sinks_end = -(-min(keys_end, {sinks}) // key_tile) * key_tile", 1)
                tiles = (f"(*range(0, sinks_end, key_tile), "
                         f"*range(max({lo}, sinks_end), keys_end, key_tile))")
            self._loop(f"for key_lo in {tiles}:", 1)
            self.line("key_n = min(key_tile, keys_end - key_lo)", 2)
            self._tile(needed + accumulators, 2, accumulate=True)
            self.loop_start = None
            available.update(acc.tensor for acc in accumulators)
            self._rows(available, 1)
        self.facts["skipping"] = "every term of a skipped tile is masked (no state carried)"
        self.facts["passes"] = f.passes.passes

    def _store(self, output: str) -> None:
        """The block of an output, in the output's own index order, absent points 0."""
        c, f = self.cascade, self.f
        einsum = c.einsum(output)
        kept = self.kept(einsum)
        value = output
        if output in f.row_masks:
            emitter = _BlockReads(c, self.absent["edge"], kept, (), printer=self)
            mask = emitter.conjunction(f.row_masks[output])
            text = (f"torch.where(_full({mask}, {self.writer._shape(kept)}, torch.bool), "
                    f"{output}, 0.0)")
            self._grids(kept, text, 1)
            value = text
        order = [kept.index(v) for v in einsum.indices]
        if order != sorted(order):
            value = f"{value if is_atom(value) else f'({value})'}" \
                    f".permute({', '.join(map(str, order))})"
        rows = ", ".join("row_lo:row_lo + row_n" if v == f.row else ":"
                         for v in einsum.indices)
        self.line(f"{output}_out[{rows}] = {value}", 1)

    def note(self) -> str:
        f, c = self.f, self.cascade
        batch = ", ".join(f.batch)
        if self.split:
            carried = [e.tensor for e in c.einsums if f.kinds[e.tensor] is Role.CARRIED]
            tile = "TORCH_TUNING['key_tile']" if self.tunable else \
                f"{c.var_rank(f.stream)} (the spec's split)"
            loops = (f"one loop over {c.var_rank(f.loop)} key tiles of {tile} keys with "
                     f"{', '.join(carried) or 'nothing'} carried as tensors")
        else:
            loops = (f"{f.passes.passes} pass(es) over tiles of TORCH_TUNING['key_tile'] "
                     f"keys, accumulators combined across tiles")
        masks = "; masks only the tiles an affine filter's boundary crosses" \
            if self.bounds else ""
        return (f"torch: the fused schedule as torch code: blocks of "
                f"TORCH_TUNING['row_block'] {f.row} rows ({batch + ' whole, ' if batch else ''}"
                f"batched matmuls); {loops}; skipping: {self.facts['skipping']}{masks}.")


def _same_for_the_batch(bounds) -> list:
    """The bounds this schedule can take: it runs every batch element at once, so a
    bound that reads a tensor (a KV cache's valid length, `m < LEN[b]`: one per batch
    element) is left out, its keys visited and masked."""
    return [b for b in bounds if b.function is None or not ir.reads(b.function)]


__all__ = ["DEFAULT_TUNING", "TorchSchedule", "fold_constant_factors", "schedule"]
