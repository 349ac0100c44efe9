"""The kernel IR (schedule/kernel_ir.py) printed as Triton: one printer for every
kernel lowered to it. Expressions print with `TritonPrinter` (the cascade's operations,
values as float32, index arithmetic in integers); this adds the kernel's own nodes (loads,
masks, reductions, blocks) and its statements.
"""

from __future__ import annotations

from ..ir import expr as ir
from ..ir.expr import _PRECEDENCE
from ..schedule import kernel_ir as k
from .printers import integer_comparison
from .triton_printer import TritonPrinter, clamped_offset, load, scalar_condition

_TYPES = {"int64": "tl.int64", "int32": "tl.int32", "int8": "tl.int8"}
_REDUCER = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}
# Nodes printed as a name or a call: `.to(...)` and `[None, :]` apply to them directly.
_ATOMS = (k.Var, k.ProgramId, k.Arange, k.Cast, k.Expand, k.IndexBlock, k.Full, k.Zeros,
          k.Load, k.Reduce, k.Dot, k.Extremum, k.Group, k.Specialized, k.SigmoidExp2)


class KernelPrinter(TritonPrinter):
    """Kernel IR expressions as Triton (`integer`: in index arithmetic)."""

    def __init__(self, integer: bool = False):
        super().__init__({}, self._no_read, integer)

    @staticmethod
    def _no_read(node: ir.Read):
        raise AssertionError(f"{ir.to_text(node)}: a lowered kernel reads through Load")

    def print(self, expr, context: int) -> str:
        method = _NODES.get(type(expr))
        if method is not None:
            return method(self, expr, context)
        return super().print(expr, context)

    @staticmethod
    def integer_comparison(expr) -> bool:
        """As for the cascade's expressions; a comparison with a kernel value in it (a
        Load is a read) is one of values."""
        return _cascade_only(expr) and integer_comparison(_as_cascade(expr))

    def _atom(self, expr) -> str:
        text = self.print(expr, 0)
        return text if isinstance(expr, _ATOMS) else f"({text})"

    # ---------------------------------------------------------------- kernel nodes
    def _var(self, node: k.Var, context: int) -> str:
        return node.name

    def _programid(self, node: k.ProgramId, context: int) -> str:
        return f"tl.program_id({node.axis})"

    def _arange(self, node: k.Arange, context: int) -> str:
        return f"tl.arange(0, {node.size})"

    def _cast(self, node: k.Cast, context: int) -> str:
        return f"{self._atom(node.value)}.to({_TYPES[node.dtype]})"

    def _expand(self, node: k.Expand, context: int) -> str:
        return f"{self._atom(node.value)}{_pattern(node.axes)}"

    def _indexblock(self, node: k.IndexBlock, context: int) -> str:
        return self._value(f"{node.name}{_pattern(node.axes)}")

    def _full(self, node: k.Full, context: int) -> str:
        return f"tl.full([{', '.join(node.shape)}], {self.const(node.value)}, tl.float32)"

    def _zeros(self, node: k.Zeros, context: int) -> str:
        return f"tl.zeros([{', '.join(node.shape)}], tl.float32)"

    def _integer(self, node: k.Integer, context: int) -> str:
        return self.in_integers().print(node.value, context)

    def _reduce(self, node: k.Reduce, context: int) -> str:
        return f"{_REDUCER[node.op]}({self.print(node.value, 0)}, axis={node.axis})"

    def _dot(self, node: k.Dot, context: int) -> str:
        """Operands converted to the dot's precision (`_to_dot`: the module's helper, exact
        rounding under the interpreter too), float32 sums."""
        left, right = (self(operand) if ready else self._converted(operand)
                       for operand, ready in zip((node.left, node.right), node.converted))
        if node.transposed:
            right = f"tl.trans({right})"
        if node.left_transposed:
            left = f"tl.trans({left})"
        acc = "" if node.acc is None else f", acc={self(node.acc)}"
        return f"tl.dot({left}, {right}{acc}, input_precision=\"{node.precision}\")"

    def _coefficientrows(self, node: k.CoefficientRows, context: int) -> str:
        return f"_coefficient_rows({self(node.value)}, {node.rows})"

    def _keycolumns(self, node: k.KeyColumns, context: int) -> str:
        return f"_key_columns({node.block})"

    def _exp2(self, node: k.Exp2, context: int) -> str:
        return f"tl.exp2({self.print(node.value, 0)})"

    def _dotoperand(self, node: k.DotOperand, context: int) -> str:
        return self._converted(node.value)

    def _converted(self, node) -> str:
        return f"_to_dot({self(node)}, DOT_DTYPE)"

    def _sigmoidexp2(self, node: k.SigmoidExp2, context: int) -> str:
        return f"_sigmoid_exp2({self.print(node.value, 0)})"

    def _specialized(self, node: k.Specialized, context: int) -> str:
        # A constexpr condition: Triton compiles the branch it picks, nothing else.
        return f"({self(node.if_true)} if {node.flag} else {self(node.if_false)})"

    def _group(self, node: k.Group, context: int) -> str:
        return f"({self.print(node.value, 0)})"

    def _either(self, node: k.Either, context: int) -> str:
        return "(" + " | ".join(f"({self(mask)})" for mask in node.alternatives) + ")"

    def _boolean(self, node: k.Boolean, context: int) -> str:
        return self._wrap(f"{self._atom(node.value)} != 0", _PRECEDENCE["!="], context)

    def _extremum(self, node: k.Extremum, context: int) -> str:
        integers = self.in_integers()
        name = "tl.maximum" if node.op == "max" else "tl.minimum"
        return f"{name}({integers(node.left)}, {integers(node.right)})"

    def _quotient(self, node: k.Quotient, context: int) -> str:
        integers, strength = self.in_integers(), _PRECEDENCE["//"]
        return self._wrap(f"{integers.print(node.value, strength)} // "
                          f"{integers.print(node.divisor, strength + 1)}", strength, context)

    def _load(self, node: k.Load, context: int) -> str:
        if isinstance(node.address, k.Described):
            return self._described(node)
        if node.address is not None:
            pointer = self.print(node.address, 0)
        else:
            pointer = self._pointers(k.Pointers(node.tensor, node.coordinates), 0,
                                     flag=node.flag)
        empty = node.mask is None or (isinstance(node.mask, k.Mask) and not node.mask.conditions)
        mask = None if empty else self.print(node.mask, 0)
        return load(pointer, mask, ok=node.flag, raw=node.raw)

    def _pointers(self, node: k.Pointers, context: int, flag: bool = False) -> str:
        pointer = f"{node.tensor}_ok_ptr" if flag else f"{node.tensor}_ptr"
        if node.coordinates:
            pointer += " + " + self.address(node.tensor, node.coordinates)
        return pointer

    def _base(self, node: k.Pointers, context: int) -> str:
        """A hoisted block of pointers (or one pointer): its zero coordinates left out."""
        if all(c.index != ir.Const(0) for c in node.coordinates):
            return self._pointers(node, context)
        offsets = self._offsets(k.Offsets(node.tensor, node.coordinates), _PRECEDENCE["+"])
        return f"{node.tensor}_ptr" if offsets == "0" else f"{node.tensor}_ptr + {offsets}"

    def _described(self, node: k.Load) -> str:
        """A TMA load: the descriptor's block at its starts (int32, as TMA takes them),
        reshaped to the tile (its positions of one point dropped)."""
        at: k.Described = node.address
        integers = self.in_integers()
        starts = ", ".join("0" if s == ir.Const(0) else f"tl.cast({integers(s)}, tl.int32)"
                           for s in at.starts)
        shape = ", ".join(b for b in at.block if b is not None)
        text = f"{at.tensor}_desc.load([{starts}]).reshape({shape})"
        return text if node.raw else f"{text}.to(tl.float32)"

    def _offsets(self, node: k.Offsets, context: int) -> str:
        integers = self.in_integers()
        terms = [f"{integers.operand(c.index, '*')} * {node.tensor}_s{position}"
                 for position, c in enumerate(node.coordinates) if c.index != ir.Const(0)]
        return self._wrap(" + ".join(terms) or "0", _PRECEDENCE["+"], context)

    def _advance(self, node: k.Advance, context: int) -> str:
        integers = self.in_integers()
        # tl.cast: the interpreter's loop variable may be a Python int.
        moved = [f"tl.cast({integers(offset)}, tl.int64) * {node.tensor}_s{position}"
                 for position, offset in node.steps]
        if not moved:
            return self.print(node.pointers, context)
        text = " + ".join([self.print(node.pointers, _PRECEDENCE["+"])] + moved)
        return self._wrap(text, _PRECEDENCE["+"], context)

    def address(self, tensor: str, coordinates) -> str:
        integers = self.in_integers()
        return clamped_offset(tensor, [
            (integers(c.index), None if c.clamp is None else integers.operand(c.clamp, "-"))
            for c in coordinates])

    def _mask(self, node: k.Mask, context: int) -> str:
        if not node.conditions:
            return "(0 == 0)"
        strength = _PRECEDENCE["&"]
        # A mask inside a mask is its conditions (& is associative).
        texts = dict.fromkeys(self.print(c, 0 if isinstance(c, k.Mask) else strength + 1)
                              for c in node.conditions)
        return self._wrap(" & ".join(texts), strength, context)

    def _test(self, node: k.Test, context: int) -> str:
        printer = self.in_integers() if node.integer else self
        text = printer(node.expr)
        if node.scalar:
            text = scalar_condition(text)     # one value for every lane
        inner = [self(node.inner)] if node.inner.conditions else []
        return " & ".join([f"({text})"] + inner)

    def _choice(self, node: k.Choice, context: int) -> str:
        return (f"({self(node.condition)} & tl.where({self(node.choice)}, "
                f"{self(node.if_true)}, {self(node.if_false)}))")

    # ---------------------------------------------------------------- statements
    def statements(self, body, depth: int = 1) -> list[str]:
        lines = []
        pad = "    " * depth
        for statement in body:
            if isinstance(statement, k.Comment):
                lines.append(f"{pad}# {statement.text}" if statement.text else pad)
            elif isinstance(statement, k.Let):
                note = "" if statement.note is None else f"  # {statement.note}"
                lines.append(f"{pad}{statement.name} = {self(statement.value)}{note}")
            elif isinstance(statement, k.Accumulate):
                name, value = statement.name, self(statement.value)
                if isinstance(statement.value, k.Dot) and statement.op == "sum":
                    lines.append(f"{pad}{name} += {value}")   # the dot's accumulator
                    continue
                combined = {"sum": f"{name} + {value}", "max": f"tl.maximum({name}, {value})",
                            "min": f"tl.minimum({name}, {value})"}[statement.op]
                lines.append(f"{pad}{name} = {combined}")
            elif isinstance(statement, k.Store):
                pointer = f"{statement.tensor}_ok_ptr" if statement.flag else \
                    f"{statement.tensor}_ptr"
                value = self(statement.value)
                address, mask = f"{pointer} + {self(statement.offset)}", self(statement.mask)
                store = f"tl.store({address}, " + \
                    (f"_stored({value}, {pointer})" if statement.rounded else value) + \
                    f", mask={mask})"
                if statement.added is None:
                    lines.append(f"{pad}{store}")
                    continue
                # the programs of a row tile each add their keys' sums (float32 zeros)
                lines += [f"{pad}if {statement.added} > 1:",
                          f"{pad}    tl.atomic_add({address}, {value}, mask={mask})",
                          f"{pad}else:", f"{pad}    {store}"]
            elif isinstance(statement, k.Unflatten):
                lines += self._unflatten(statement, pad)
            elif isinstance(statement, k.Barrier):
                lines.append(f"{pad}tl.debug_barrier()  # {statement.why}")
            elif isinstance(statement, k.Loop):
                bounds = [self(statement.start), self(statement.stop)]
                if statement.step is not None:
                    bounds.append(self(statement.step))
                lines.append(f"{pad}for {statement.var} in range({', '.join(bounds)}):")
                lines += self.statements(statement.body, depth + 1)
            else:
                raise TypeError(f"not a kernel statement: {statement!r}")
        return lines

    def _unflatten(self, node: k.Unflatten, pad: str) -> list[str]:
        """Row-major: the last coordinate is the remainder by its extent, and so on."""
        integers = self.in_integers()
        lines, rest = [], node.flat
        for position, (name, extent) in enumerate(reversed(node.parts)):
            if position == len(node.parts) - 1:
                lines.append(f"{pad}{name} = {rest}")
            else:
                size = integers.operand(extent, "%")
                lines.append(f"{pad}{name} = {rest} % {size}")
                lines.append(f"{pad}{node.rest} = {rest} // {size}")
                rest = node.rest
        return lines


def _pattern(axes: tuple[bool, ...]) -> str:
    return f"[{', '.join(':' if own else 'None' for own in axes)}]" if axes else ""


def _cascade_only(expr) -> bool:
    """An expression of indices, sizes, params and operations (an index variable's
    block counts as the index it is): what `integer_comparison` judges."""
    if isinstance(expr, ir.Op):
        return all(_cascade_only(arg) for arg in expr.args)
    return isinstance(expr, (ir.Const, ir.Index, ir.Dim, ir.Param, k.IndexBlock))


def _as_cascade(expr):
    """`expr` with index blocks as the indices they are."""
    if isinstance(expr, k.IndexBlock):
        return ir.Index(expr.name)
    if isinstance(expr, ir.Op):
        return ir.Op(expr.op, tuple(_as_cascade(arg) for arg in expr.args))
    return expr


_NODES = {k.Var: KernelPrinter._var, k.ProgramId: KernelPrinter._programid,
          k.Arange: KernelPrinter._arange, k.Cast: KernelPrinter._cast,
          k.Expand: KernelPrinter._expand, k.IndexBlock: KernelPrinter._indexblock,
          k.Zeros: KernelPrinter._zeros, k.Full: KernelPrinter._full,
          k.Integer: KernelPrinter._integer, k.Reduce: KernelPrinter._reduce,
          k.Load: KernelPrinter._load, k.Pointers: KernelPrinter._base,
          k.Offsets: KernelPrinter._offsets,
          k.Advance: KernelPrinter._advance, k.Mask: KernelPrinter._mask,
          k.Test: KernelPrinter._test, k.Choice: KernelPrinter._choice,
          k.Dot: KernelPrinter._dot, k.DotOperand: KernelPrinter._dotoperand,
          k.CoefficientRows: KernelPrinter._coefficientrows,
          k.KeyColumns: KernelPrinter._keycolumns,
          k.Exp2: KernelPrinter._exp2, k.Specialized: KernelPrinter._specialized,
          k.SigmoidExp2: KernelPrinter._sigmoidexp2,
          k.Either: KernelPrinter._either,
          k.Boolean: KernelPrinter._boolean, k.Extremum: KernelPrinter._extremum,
          k.Quotient: KernelPrinter._quotient, k.Group: KernelPrinter._group}
