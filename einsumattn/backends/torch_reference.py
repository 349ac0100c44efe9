"""The PyTorch reference backend: a Cascade as straight-line torch code.

Each Einsum becomes a few statements under a comment that restates it. Values are
computed in float32 (LANGUAGE.md: "every intermediate is computed in float32") in the
*broadcast layout* of the Einsum's iteration space: one tensor dimension per variable
(left ones, then reduced ones), size 1 where an expression does not depend on it, as
numpy broadcasting does. Index variables are `torch.arange` grids in that layout, so a
read is written as in the spec: `K[b, h, m, e]`.

Absent points follow docs/language.md 2.8, from `analysis/presence.py`: a tensor that may
be absent gets a boolean mask `T_ok`; each condition becomes a mask; conditions that
involve no reduced variable decide `T_ok`, the others remove terms of the reduction.

A sum of a product becomes `torch.einsum` over the factors (the whole iteration space is
never materialised for a contraction); other reductions reduce the masked body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..analysis.presence import (Condition, absent_tensors, einsum_conditions,
                                 in_range_by_construction, point_conditions)
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.printer import lhs_text, rhs_text
from .names import spec_letter
from .printers import TorchPrinter, is_atom

_IDENTITY = {"sum": "0.0", "max": "-math.inf", "min": "math.inf"}
_REDUCER = {"sum": "sum", "max": "amax", "min": "amin"}
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class _EinsumEmitter:
    """Code for one Einsum over one iteration space (`axes`), with `fixed` variables
    (a recurrence's step) held as Python ints."""

    # The printer of expressions (the scheduled backend's guards each where's branch).
    expression_printer = TorchPrinter

    cascade: Cascade
    absent: set[str]
    axes: tuple[str, ...]
    fixed: tuple[str, ...] = ()

    def read(self, node: ir.Read, name: str | None = None) -> str:
        """A read, as a view or a gather in the broadcast layout; `name` reads another
        array with the same shape (the tensor's `_ok` mask)."""
        if not node.indices:
            return name or node.tensor
        if self._is_plain_view(node):
            return f"{name or node.tensor}{self._view_slices(node)}"
        printer = TorchPrinter(self.read, self.fixed, integer=True)
        parts, gathered = [], False
        for position, index in enumerate(node.indices):
            text = printer(index)
            gathered |= bool(printer.tensor(index))
            if not in_range_by_construction(self.cascade, node.tensor, position, index):
                extent = self.extent_text(node.tensor, position)
                text = f"({text}).clamp(0, {extent} - 1)" if printer.tensor(index) else \
                    f"min(max({text}, 0), {extent} - 1)"
            parts.append(text)
        read = f"{name or node.tensor}[{', '.join(parts)}]"
        if self.fixed and not gathered and \
                self.cascade.tensors[node.tensor].iterative is not None:
            # A recurrence's step reading one by integers: a view, which the step's own
            # write (in place, the next position) would change under autograd's feet
            # (max and * keep their operands for the backward): a copy.
            read += ".clone()"
        return read

    def extent_text(self, tensor: str, position: int) -> str:
        t = self.cascade.tensors[tensor]
        rank = t.ranks[position]
        return f"({rank} + 1)" if t.iterative == position else rank

    def _is_plain_view(self, node: ir.Read) -> bool:
        """A read by distinct plain variables, in the order of the space, each of its
        position's rank: a zero-copy view with None for the other axes."""
        order = []
        iterative = self.cascade.tensors[node.tensor].iterative
        for position, index in enumerate(node.indices):
            if not isinstance(index, ir.Index):
                return False
            if position == iterative:
                return False   # X + 1 positions there, not X: a view would not line up
            if not in_range_by_construction(self.cascade, node.tensor, position, index):
                return False
            if index.var in self.fixed:
                order.append(-1)
                continue
            if index.var not in self.axes:
                return False
            order.append(self.axes.index(index.var))
        moving = [o for o in order if o >= 0]
        return moving == sorted(moving) and len(set(moving)) == len(moving)

    def _view_slices(self, node: ir.Read) -> str:
        by_axis = {}
        fixed_parts = []
        for index in node.indices:
            if index.var in self.fixed:
                fixed_parts.append(index.var)
            else:
                by_axis[self.axes.index(index.var)] = index.var
        parts = []
        pending_fixed = list(fixed_parts)
        # Walk the tensor's positions in order: fixed ints stay in place, axes become ':'
        # with None inserted for space axes the tensor does not have.
        next_axis = 0
        for index in node.indices:
            if index.var in self.fixed:
                parts.append(pending_fixed.pop(0))
                continue
            axis = self.axes.index(index.var)
            parts += ["None"] * (axis - next_axis)
            parts.append(":")
            next_axis = axis + 1
        parts += ["None"] * (len(self.axes) - next_axis)
        if all(p == ":" for p in parts):
            return ""
        while parts and parts[-1] == ":":
            parts.pop()
        return f"[{', '.join(parts)}]"

    def value(self, expr: ir.Expr, beside: str | None = None,
              present: list[Condition] | None = None) -> str:
        """`expr` as torch code; `beside`: the binary operator the text will stand next
        to (the printer then adds the parentheses that needs). `present`: the conditions
        under which the value is used; elsewhere no gradient may reach the tensors it
        reads (`_grad_only`): the value there is discarded by a torch.where, but its
        derivative may be inf (exp(QK - GM) at GM = -inf, SN / SD at SD = 0), and the
        discarded gradient, 0, times inf is NaN."""
        read = self.read
        if present and not isinstance(expr, ir.Read):
            mask = self.conjunction(present)
            read = lambda node: f"_grad_only({mask}, {self.read(node)})"  # noqa: E731
        printer = self.expression_printer(read, self.fixed)
        return printer(expr) if beside is None else printer.operand(expr, beside)

    def condition_mask(self, condition: Condition) -> str:
        if condition.kind in ("filter", "range", "split"):
            mask = self.value(condition.expr)
            inner = [self.condition_mask(c) for part in condition.parts for c in part]
            return " & ".join([f"({mask})"] + inner) if inner else f"({mask})"
        if condition.kind == "absent":
            return self.read(condition.read, name=f"{condition.read.tensor}_ok")
        assert condition.kind == "where"
        cond, if_true, if_false = (self.conjunction(list(part)) for part in condition.parts)
        picked = f"torch.where({self.value(condition.expr.args[0])}, {if_true}, {if_false})"
        return f"({cond} & {picked})" if cond != "True" else picked

    def conjunction(self, conditions: list[Condition]) -> str:
        return " & ".join(self.condition_mask(c) for c in conditions) or "True"


class TorchEmitter:
    """Emits the body of the reference function, statement by statement."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.absent = absent_tensors(cascade)
        # `_ok` masks are read like tensors: register them so reads of them resolve.
        self.lines: list[str] = []

    def emit(self) -> list[str]:
        for einsum in self.cascade.einsums:
            self.lines.append("")
            self.lines.append(f"# {lhs_text(self.cascade, einsum)} = {rhs_text(einsum)}")
            if einsum.iterative is None:
                self._einsum(einsum)
            else:
                self._recurrence(einsum)
        return self.lines

    # -- helpers ----------------------------------------------------------------------
    def _size(self, var: str) -> str:
        return self.cascade.var_rank(var)

    def _grids(self, axes: tuple[str, ...], used: set[str], indent: str = "") -> None:
        for axis, var in enumerate(axes):
            if var in used:
                view = ", ".join("-1" if i == axis else "1" for i in range(len(axes)))
                self.lines.append(f"{indent}{var} = torch.arange({self._size(var)}, "
                                  f"device=device).view({view})")

    def _shape(self, variables: tuple[str, ...]) -> str:
        sizes = [self._size(v) for v in variables]
        return f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"

    def _compute(self, einsum: Einsum, emitter: _EinsumEmitter, kept: tuple[str, ...],
                 target: str, ok_target: str | None, indent: str = "") -> None:
        """Statements computing the Einsum's value over `kept` into `target` (and its
        mask into `ok_target`)."""
        conditions = einsum_conditions(self.cascade, einsum, self.absent,
                                       emitter.axes + emitter.fixed)
        points = point_conditions(einsum, conditions)
        terms = [c for c in conditions if c not in points]
        shape = self._shape(kept)
        # A value that does not vary over every left variable (or is an index integer)
        # is broadcast to the left shape in float32.
        covers = set(kept) <= set(ir.index_vars(einsum.body)) and _reads_any(einsum.body)
        assign = f"{target} = {{}}" if covers else f"{target} = _full({{}}, {shape})"
        if einsum.reduce_op is None:
            self.lines.append(indent + assign.format(emitter.value(einsum.body, present=points)))
        else:
            masked = self._masked_reduction(einsum, emitter, terms, points, kept)
            einsum_call = self._einsum_call(einsum, emitter, terms, points, kept)
            self.lines.append(indent + assign.format(einsum_call or masked))
            if einsum_call is not None and terms and \
                    len(ir.product_factors(einsum.body)) > 1:
                # torch.einsum zeroes a masked term's own factor, so another factor's
                # inf or NaN there gives 0 * inf = NaN (a NaN stored in padded keys).
                # The oracle skips masked terms: only a finite result is surely right,
                # else the masked reduction recomputes it exactly (rarely: inf or NaN
                # in the data).
                self.lines.append(f"{indent}if not torch.isfinite({target}).all():")
                self.lines.append(f"{indent}    " + assign.format(masked))
        if ok_target is not None:
            mask = emitter.conjunction(points)
            source = self.cascade.tensors.get(mask[:-len("_ok")]) \
                if re.fullmatch(r"\w+_ok", mask) else None
            if source is not None and mask != ok_target and \
                    source.ranks == self.cascade.tensors[einsum.tensor].ranks:
                line = mask                      # the same points as a tensor it reads
            elif einsum.reduce_op is not None:
                # Point conditions do not vary over the reduced axes (size 1 there).
                ones = [self._size(v) for v in kept] + ["1"] * len(einsum.reduced)
                line = f"_full({mask}, ({', '.join(ones)}), torch.bool).reshape{shape}"
            else:
                line = f"_full({mask}, {shape}, torch.bool)"
            self.lines.append(f"{indent}{ok_target} = {line}")

    def _masked_reduction(self, einsum: Einsum, emitter: _EinsumEmitter,
                          terms: list[Condition], points: list[Condition],
                          kept: tuple[str, ...], select: str = "torch.where") -> str:
        """The reduction of the body over the whole iteration space, its masked terms
        replaced by the reduction's identity (by `select`, a function with where's
        arguments): exact whatever the values, but it builds the whole space."""
        body = emitter.value(einsum.body, present=terms + points)
        dims = tuple(range(len(kept), len(emitter.axes)))
        dims_text = f"dim={dims[0]}" if len(dims) == 1 else f"dim={dims}"
        mask = emitter.conjunction(terms + points) if terms else None
        identity = _IDENTITY[einsum.reduce_op]
        full = body if set(emitter.axes) <= set(ir.index_vars(einsum.body)) and \
            _reads_any(einsum.body) else f"_full({body}, {self._shape(emitter.axes)})"
        masked = f"{select}({mask}, {full}, {identity})" if mask else full
        masked = masked if is_atom(masked) else f"({masked})"
        return f"{masked}.{_REDUCER[einsum.reduce_op]}({dims_text})"

    def _einsum_call(self, einsum: Einsum, emitter: _EinsumEmitter,
                     terms: list[Condition], points: list[Condition],
                     kept: tuple[str, ...]) -> str | None:
        """`torch.einsum` for a sum of a product whose term conditions each belong to
        one factor: no tensor of the whole iteration space is built."""
        if einsum.reduce_op != "sum":
            return None
        factors = ir.product_factors(einsum.body)
        # Factors that vary over the space are einsum operands; constants, scalar
        # tensors (0-d) and functions of a recurrence's step multiply the result.
        tensor_factors = [f for f in factors if set(ir.index_vars(f)) & set(emitter.axes)]
        scalars = [f for f in factors if f not in tensor_factors]
        if len(tensor_factors) < 1:
            return None
        # A computed factor passes gradients only where the conditions over its own
        # variables hold (a condition over others does not make its value unused).
        masked = [emitter.value(f, present=[c for c in terms + points
                                            if c.variables <= set(ir.index_vars(f))])
                  for f in tensor_factors]
        for condition in terms:
            owner = next((i for i, f in enumerate(tensor_factors)
                          if condition.variables <= set(ir.index_vars(f))), None)
            if owner is None:
                return None
            masked[owner] = f"torch.where({emitter.condition_mask(condition)}, " \
                            f"{masked[owner]}, 0.0)"
        if len(emitter.axes) > len(_LETTERS):
            return None
        own = {v: spec_letter(v) for v in emitter.axes}     # the spec's own variables
        if all(own.values()) and len(set(own.values())) == len(own):
            letters = own
        else:
            letters = {v: _LETTERS[i] for i, v in enumerate(emitter.axes)}
        full = "".join(letters[v] for v in emitter.axes)
        out = "".join(letters[v] for v in kept)
        subscripts = ",".join([full] * len(masked)) + "->" + out
        operands = ", ".join(m if any(isinstance(n, ir.Read) for n in ir.walk(f))
                             else f"_f32({m})" for m, f in zip(masked, tensor_factors))
        call = f"torch.einsum(\"{subscripts}\", {operands})"
        for scalar in scalars:
            call += f" * {emitter.value(scalar, beside='*')}"
        # A factor that does not cover every reduced axis is summed over it by einsum
        # only where some operand has that axis: check coverage.
        covered = set()
        for f in tensor_factors:
            covered |= set(ir.index_vars(f))
        if not set(einsum.reduced) <= covered:
            return None
        return call

    def _with_grids(self, axes: tuple[str, ...], emit, indent: str = "") -> None:
        """Run `emit` (which appends statements), then put before them the index grids
        those statements use."""
        start = len(self.lines)
        emit()
        body = self.lines[start:]
        del self.lines[start:]
        text = "\n".join(body)
        used = {v for v in axes if re.search(rf"(?<![\w.\"]){re.escape(v)}(?![\w\"])", text)}
        self._grids(axes, used, indent)
        self.lines.extend(body)

    def _einsum(self, einsum: Einsum) -> None:
        emitter = _EinsumEmitter(self.cascade, self.absent, einsum.variables)
        ok = f"{einsum.tensor}_ok" if einsum.tensor in self.absent else None
        self._with_grids(einsum.variables, lambda: self._compute(
            einsum, emitter, einsum.indices, einsum.tensor, ok))

    def _recurrence(self, einsum: Einsum) -> None:
        x = einsum.iter_var
        position = einsum.iterative
        others = tuple(v for v in einsum.indices if v != x)
        axes = others + einsum.reduced
        name = einsum.tensor
        shape = [self._size(v) for v in einsum.indices]
        shape[position] = f"{shape[position]} + 1"
        self.lines.append(f"{name} = torch.zeros({', '.join(shape)}, device=device)")
        absent = name in self.absent
        if absent:
            self.lines.append(f"{name}_ok = torch.zeros({', '.join(shape)}, dtype=torch.bool, "
                              f"device=device)")
        at = lambda where: ", ".join(":" if v != x else where for v in einsum.indices)  # noqa: E731
        init = Einsum(name, others, einsum.init)
        emitter = _EinsumEmitter(self.cascade, self.absent, others)
        self._with_grids(others, lambda: self._compute(
            init, emitter, others, f"{name}[{at('0')}]",
            f"{name}_ok[{at('0')}]" if absent else None))
        step = _EinsumEmitter(self.cascade, self.absent, axes, fixed=(x,))

        def loop() -> None:
            self.lines.append(f"for {x} in range({self._size(x)}):")
            self._compute(einsum, step, others, f"{name}[{at(x + ' + 1')}]",
                          f"{name}_ok[{at(x + ' + 1')}]" if absent else None, indent="    ")
        self._with_grids(axes, loop)


def _reads_any(expr: ir.Expr) -> bool:
    """Whether the value comes from a tensor (so it is float32, not an index integer)."""
    return any(isinstance(n, ir.Read) and n.indices for n in ir.walk(expr))

