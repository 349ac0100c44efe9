"""Reverse-mode differentiation of a cascade: its gradient cascade.

    grad = einsumattn.transform.grad.gradient(cascade)
    grad.cascade     # inputs: the forward's, then one cotangent dO per output O;
                     # outputs: dX for every input X some output depends on smoothly
    grad.rules       # per gradient tensor, the rule that made it (comments of `text()`)
    print(grad.text())

The gradient cascade is itself a cascade: the oracle evaluates it, the pass analysis,
the rewrites and the schedules apply to it. It recomputes the forward's tensors it
reads (the forward Einsums come first), then, in reverse dataflow order, for each
tensor T its cotangent dT (the sum of what each reader of T contributes, plus dO where
T is an output), and for each read X[idx] in T's Einsum what it contributes to dX:

    T[i] = sum[r] body where F     ->   dX_T[j] = sum[...] dT[i] * d body / d X[idx]
                                                   where F and j == idx
    T[i] = max[r] body where F     ->   the same times where(body == T[i], 1, 0) / NT[i],
                                        NT[i] = sum[r] where(body == T[i], 1, 0) where F

The rules, each the textbook derivative (docs/gradients.md):
* the chain rule along the path from the body's root to the read, one factor per node:
  `+` 1; `-` 1, -1; `*` the other factor; `/` 1/b, -(a/b)/b; `**` b a**(b-1), a**b log a;
  exp exp(x); log 1/x; sqrt 0.5/sqrt(x); tanh 1 - tanh(x)**2; sigmoid s(1 - s);
  relu, elu, abs by the sign of x (0 at x = 0, as torch); softplus sigmoid(x);
  logsigmoid sigmoid(-x); log1p 1/(1 + x); expm1 exp(x); silu s + x s (1 - s);
  erf 2/sqrt(pi) exp(-x**2); sign, //, comparisons and conditions 0;
  `max(a, b)`, `min(a, b)`: 1 to the larger (smaller) one, 1/2 each on a tie;
  `where(c, a, b)`: where(c, 1, 0) to a, where(c, 0, 1) to b;
* a reduction by max or min shares dT among the points that attain it, equally (the
  tie rule of torch.amax);
* filters and absent points carry over: a point the forward skips contributes nothing,
  so a row with no present point gets a zero gradient, never NaN. Where the derivative
  does not read everything the forward's term reads (`d (U + V) / d U` is 1, and V may
  be absent), the contribution is multiplied by `where(T != T, 1, 1)`: 1 where the term
  T (or, under a reduction, the body) is present (NaN included), absent where it is not;
* a read at a plain index variable of the read tensor's own rank keeps it on the left;
  any other coordinate (`h * KH // H`, `m1 * M0 + m0`, `p - m`) is summed over with the
  condition that it equals the left variable of that rank (GQA's dK sums the heads of a
  group this way); a plain variable of another rank of the same size beside the rank's
  own (stick-breaking's `Z[.., j]`, `dims J = M`, in an Einsum over m) makes the
  contribution over that other rank, read at the own variable by the cotangent's sum.

* a recurrence R[.., t+1] = body (init at 0) has a cotangent that is a recurrence in
  reverse time over the same rank (`_recurrence`): dR[.., j] is R's cotangent at step
  T - j, started from what readers add at the last position, each step adding what
  readers add there and carrying dR through d body / d R[.., t]; the body's other reads
  get dR[.., T - 1 - t] times their derivative.

Refused, with the reason (GradientUnsupported): a recurrence read at a step other than
t, t+1 or its final value, one with a filter or a reduction, one as an output, and a read
whose coordinate needs the variable of its rank that the Einsum already uses for another
purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import sympy

from ..analysis.presence import absent_tensors, presence_key
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.cascade import Rank, Tensor
from ..ir.printer import cascade_text
from .algebra import substitute


class GradientUnsupported(Exception):
    """A cascade whose gradient this transform does not derive, and why."""


@dataclass
class Gradient:
    forward: Cascade
    cascade: Cascade
    cotangents: dict[str, str]           # output -> its cotangent input
    gradients: dict[str, str]            # input -> its gradient output
    rules: dict[str, str] = field(default_factory=dict)   # gradient tensor -> its rule

    def text(self) -> str:
        return cascade_text(self.cascade, self.rules)


ONE, ZERO, HALF = ir.Const(1.0), ir.Const(0.0), ir.Const(0.5)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def gradient(cascade: Cascade, constants: frozenset[str] = frozenset()) -> Gradient:
    """The gradient cascade of `cascade` (module docstring). `constants`: forward
    tensors whose cotangent is known to be zero (a shift the outputs do not depend on,
    proved by transform/backward.py): no contribution to them is derived, so nothing
    flows through them."""
    return _Deriver(cascade, constants).derive()


class _Deriver:
    def __init__(self, cascade: Cascade, constants: frozenset[str] = frozenset()):
        self.forward = cascade
        self.constants = constants
        self.tensors: dict[str, Tensor] = dict(cascade.tensors)
        self.ranks: dict[str, Rank] = dict(cascade.ranks)
        self.absent = absent_tensors(cascade)     # forward tensors with absent points
        self.einsums: list[Einsum] = list(cascade.einsums)
        self.rules: dict[str, str] = {}
        self.terms: dict[str, list[str]] = {}       # tensor -> its cotangent's terms
        # recurrence -> its cotangent's terms: (tensor, the step it adds to: 0 at the
        # reader's own step t, 1 at t + 1, "final" at the last position)
        self.recurrent: dict[str, list[tuple[str, object]]] = {}
        self.taken: set[str] = set()

    def fresh(self, base: str) -> str:
        name = self.forward.fresh_name(base, self.taken | set(self.tensors))
        self.taken.add(name)
        return name

    def derive(self) -> Gradient:
        cascade = self.forward
        for output in cascade.outputs:
            if cascade.tensors[output].iterative is not None:
                raise GradientUnsupported(
                    f"the output {output} is a recurrence: its cotangent would need a value "
                    f"per step and one more")
        cotangents = {}
        for output in cascade.outputs:
            name = self.fresh(f"d{output}")
            self.tensors[name] = Tensor(name, cascade.tensors[output].ranks, True)
            cotangents[output] = name
            self.terms.setdefault(output, []).append(name)
        for einsum in reversed(cascade.einsums):
            if einsum.iterative is not None:
                self._recurrence(einsum)
                continue
            total = self._cotangent(einsum.tensor)
            if total is not None:
                self._contributions(einsum, total)
        gradients = {}
        for tensor in cascade.inputs:
            total = self._cotangent(tensor.name, final=True)
            if total is not None:
                gradients[tensor.name] = total
        if not gradients:
            raise GradientUnsupported("no output depends smoothly on an input")
        inputs = [t for t in cascade.inputs] + [self.tensors[c] for c in cotangents.values()]
        tensors = {t.name: t for t in inputs}
        tensors.update((name, t) for name, t in self.tensors.items() if not t.is_input)
        result = Cascade(f"{cascade.name}_grad", dict(self.ranks), cascade.splits,
                         dict(cascade.params), tensors, tuple(self.einsums),
                         tuple(gradients.values()), cascade.source)
        return Gradient(cascade, result, cotangents, gradients, self.rules)

    # ------------------------------------------------------------ cotangents
    def _cotangent(self, tensor: str, final: bool = False) -> str | None:
        """The tensor holding T's cotangent: its one term, or their sum (a new Einsum);
        None where nothing depends on T. `final`: an input's gradient, named dT."""
        terms = self.terms.get(tensor, [])
        if not terms:
            return None
        ranks = self.tensors[tensor].ranks
        # A term over another rank of the same size (`_alias`) is read at T's own
        # variables by a sum of its own, never taken as the cotangent itself.
        alone = len(terms) == 1 and self.tensors[terms[0]].ranks == ranks
        if alone and not final:
            return terms[0]
        name = self.fresh(f"d{tensor}")
        if alone:
            return self._renamed(terms[0], name)
        variables = tuple(self.forward.ranks[r].var for r in ranks)
        index = tuple(ir.Index(v) for v in variables)
        reads = [ir.Read(t, index) for t in terms]
        so_far = self._so_far(terms)
        # `+` is absent where a term is: exact where no term may be absent, or where all
        # are present at the same points (softpick's two terms of dSN, both where SN is).
        keys = {presence_key(so_far, t) for t in terms}
        if not absent_tensors(so_far) & set(terms) or (
                None not in keys and len(keys) == 1 and
                all(self.tensors[t].ranks == ranks for t in terms)):
            self._define(name, ranks, Einsum(name, variables, ir.total(reads)),
                         f"the cotangent of {tensor}: the sum of what its readers "
                         f"contribute")
            return name
        # A term may be absent (a reader's term was): a sum over a rank of one point per
        # term, which skips an absent term where `+` would make the sum absent.
        count = self._terms_rank(len(terms))
        pick = ir.Index(self.ranks[count].var)
        body = reads[-1]
        for number in range(len(reads) - 2, -1, -1):
            body = ir.Op("where", (ir.Op("==", (pick, ir.Const(number))), reads[number],
                                   body))
        self._define(name, ranks, Einsum(name, variables, body, "sum", (pick.var,),
                                         explicit_reduction=True),
                     f"the cotangent of {tensor}: the sum of what its readers contribute, "
                     f"one point of {count} per reader (an absent term is skipped)")
        return name

    def _so_far(self, outputs) -> Cascade:
        """The gradient cascade built so far, for the presence analysis."""
        return Cascade(self.forward.name, self.ranks, self.forward.splits,
                       dict(self.forward.params), dict(self.tensors), tuple(self.einsums),
                       tuple(outputs))

    def _terms_rank(self, size: int) -> str:
        """A rank of `size` points, one per term of a cotangent's sum."""
        name = f"TERMS{size}"
        if name not in self.ranks:
            name = self.forward.fresh_name(name, self.taken | set(self.tensors))
            self.taken.add(name)
            self.ranks[name] = Rank(name, sympy.Integer(size), size)
        return name

    def _renamed(self, old: str, new: str) -> str:
        """A contribution no Einsum reads yet, under another name."""
        position = next(i for i, e in enumerate(self.einsums) if e.tensor == old)
        self.einsums[position] = replace(self.einsums[position], tensor=new)
        self.tensors[new] = replace(self.tensors.pop(old), name=new)
        self.rules[new] = self.rules.pop(old)
        return new

    def _define(self, name: str, ranks: tuple, einsum: Einsum, rule: str) -> None:
        self.tensors[name] = Tensor(name, tuple(ranks), False, einsum.iterative)
        self.einsums.append(einsum)
        self.rules[name] = rule

    # ------------------------------------------------------------ contributions
    def _contributions(self, einsum: Einsum, cotangent: str | ir.Expr) -> None:
        """What each read of `einsum`'s body contributes to its tensor's cotangent
        (`cotangent`: its tensor, or the expression that is its value at the Einsum's
        point)."""
        own = cotangent if isinstance(cotangent, ir.Expr) else \
            ir.Read(cotangent, tuple(ir.Index(v) for v in einsum.indices))
        scale: ir.Expr = own
        if einsum.reduce_op in ("max", "min"):
            scale = self._attained(einsum, own)
        for path, read in _reads_with_paths(einsum.body):
            if read.tensor in self.constants or \
                    (einsum.iterative is not None and read.tensor == einsum.tensor):
                continue
            local = _derivative_along(einsum.body, path)
            if local == ZERO:
                continue
            value = _mul(scale, local)
            others = list(ir.reads(einsum.body))
            others.remove(read)
            if not {r for r in others if self._may_be_absent(r)} <= set(ir.reads(value)):
                # The forward's term needs reads the derivative does not make (`U + V`:
                # d/dU is 1, V may be absent): 1 where the term is present, else absent.
                present = einsum.body if einsum.reduce_op is not None else \
                    ir.Read(einsum.tensor, tuple(ir.Index(v) for v in einsum.indices))
                value = _mul(value, ir.Op("where", (ir.Op("!=", (present, present)),
                                                    ONE, ONE)))
            self._contribute(einsum, read, value)

    def _may_be_absent(self, read: ir.Read) -> bool:
        """Whether a read of the forward may be absent: a tensor with absent points, or a
        coordinate other than its rank's own variable (which may leave the rank)."""
        tensor = self.forward.tensors[read.tensor]
        return read.tensor in self.absent or any(
            index != ir.Index(self.forward.ranks[rank].var)
            for rank, index in zip(tensor.ranks, read.indices))

    def _attained(self, einsum: Einsum, cotangent: ir.Read) -> ir.Expr:
        """dT[i] * where(body == T[i], 1, 0) / NT[i]: a max's cotangent shared by the
        points that attain it."""
        own = ir.Read(einsum.tensor, tuple(ir.Index(v) for v in einsum.indices))
        hit = ir.Op("where", (ir.Op("==", (einsum.body, own)), ONE, ZERO))
        count = self.fresh(f"N{einsum.tensor}")
        ranks = self.tensors[einsum.tensor].ranks
        self._define(count, ranks, Einsum(count, einsum.indices, hit, "sum", einsum.reduced,
                                          einsum.filter, explicit_reduction=True),
                     f"how many points attain the {einsum.reduce_op} {einsum.tensor} (its "
                     f"cotangent is shared equally among them)")
        counted = ir.Read(count, tuple(ir.Index(v) for v in einsum.indices))
        return ir.Op("/", (_mul(cotangent, hit), counted))

    # ------------------------------------------------------------ recurrences
    def _recurrence(self, einsum: Einsum) -> None:
        """The cotangent of a recurrence R[.., t+1] = body(R[.., t], ...) (init at 0) as
        a recurrence in reverse time over the same rank, G[.., j] = dR[.., T - j]:

            init G[.., 0] = what readers add at position T
            G[.., j+1]    = what readers add at position T-1-j
                            + G[.., j] * d body / d R[.., t]  at t = T-1-j

        and from it, what the body's other reads get at step t (G[.., T-1-t] is the
        cotangent of R[.., t+1]) and what the initial value's reads get (G[.., T] is
        the cotangent of R[.., 0])."""
        name = einsum.tensor
        terms = self.recurrent.get(name, [])
        if not terms:
            return
        position = einsum.iterative
        var = einsum.indices[position]
        rank = self.forward.var_rank(var)
        ranks = self.forward.tensors[name].ranks
        if einsum.filter is not None or einsum.reduce_op is not None:
            raise GradientUnsupported(f"the recurrence {name} has a filter or a reduction: "
                                      f"its reverse-time gradient is not derived")
        step = ir.Index(var)
        last = ir.Op("-", (ir.Dim(rank), ir.Const(1)))
        back = ir.Op("-", (last, step))                                 # T - 1 - t

        def at(index: ir.Expr) -> tuple:
            indices = [ir.Index(v) for v in einsum.indices]
            indices[position] = index
            return tuple(indices)

        rest = tuple(ir.Index(v) for v in einsum.indices if v != var)
        start = [ir.Read(t, at(last)) for t, offset in terms if offset == 1] + \
            [ir.Read(t, rest) for t, offset in terms if offset == "final"]
        body = [ir.Read(t, at(back)) for t, offset in terms if offset == 0] + \
            [ir.Op("where", (ir.Op("<=", (ir.Op("+", (step, ir.Const(2))), ir.Dim(rank))),
                             ir.Read(t, at(ir.Op("-", (back, ir.Const(1))))), ZERO))
             for t, offset in terms if offset == 1]
        own = ir.Read(name, tuple(ir.Index(v) for v in einsum.indices))
        if any(read.tensor == name and read != own for read in ir.reads(einsum.body)):
            raise GradientUnsupported(f"the recurrence {name} reads itself other than at "
                                      f"the step before")
        local = [_derivative_along(einsum.body, path)
                 for path, read in _reads_with_paths(einsum.body) if read.tensor == name]
        reverse = self.fresh(f"d{name}")
        for factor in local:
            if factor != ZERO:
                body.append(_mul(ir.Read(reverse, at(step)), substitute(factor, {var: back})))
        self._define(reverse, ranks,
                     Einsum(reverse, einsum.indices, ir.total(body) if body else ZERO,
                            iterative=position, init=ir.total(start) if start else ZERO),
                     f"the cotangent of {name} in reverse time: {reverse}[.., j] is that "
                     f"of {name} at step {rank} - j")
        self._contributions(einsum, ir.Read(reverse, at(back)))
        if einsum.init is not None and ir.reads(einsum.init):
            first = Einsum(name, tuple(v for v in einsum.indices if v != var), einsum.init)
            self._contributions(first, ir.Read(reverse, at(ir.Dim(rank))))

    def _contribute_to_recurrence(self, einsum: Einsum, read: ir.Read,
                                  value: ir.Expr) -> None:
        """What a read of a recurrence R adds to R's cotangent, kept at the reader's own
        step (R's reverse-time Einsum reads it at T - 1 - j): R[.., t] adds at t,
        R[.., t+1] at t + 1, R[.., T] (its final value) at T."""
        target = self.forward.tensors[read.tensor]
        position = target.iterative
        rank = target.ranks[position]
        var = self.forward.ranks[rank].var
        index = read.indices[position]
        if index == ir.Index(var):
            offset = 0
        elif index == ir.Op("+", (ir.Index(var), ir.Const(1))):
            offset = 1
        elif index == ir.Dim(rank):
            offset = "final"
        else:
            raise GradientUnsupported(
                f"{einsum.tensor} reads the recurrence {read.tensor} at step "
                f"{ir.to_text(index)}: only t, t+1 and the final value are differentiated")
        if offset == "final":
            ranks = tuple(r for i, r in enumerate(target.ranks) if i != position)
            indices = tuple(x for i, x in enumerate(read.indices) if i != position)
        else:
            ranks = target.ranks
            indices = tuple(ir.Index(var) if i == position else x
                            for i, x in enumerate(read.indices))
        name = self._contribute(einsum, ir.Read(read.tensor, indices), value, ranks=ranks)
        self.recurrent.setdefault(read.tensor, []).append((name, offset))

    def _contribute(self, einsum: Einsum, read: ir.Read, value: ir.Expr,
                    ranks: tuple | None = None) -> str | None:
        """dX_T[j] = sum[...] value where F and j == idx: each coordinate of the read is
        the left variable of its rank (`m`), that variable shifted (`c + k - K // 2`:
        the Einsum's own `c` becomes `c - k + K // 2`), or any other expression (`h * KH
        // H`, a constant), summed over with the condition that it equals the left
        variable. A condition on the left variables alone picks the value or 0 (a filter
        would make the point absent, and an absent term would make the cotangent's sum
        absent)."""
        if ranks is None and self.forward.tensors.get(read.tensor) is not None and \
                self.forward.tensors[read.tensor].iterative is not None:
            return self._contribute_to_recurrence(einsum, read, value)
        target_ranks = ranks if ranks is not None else self.tensors[read.tensor].ranks
        left: list[str] = []
        conditions: list[ir.Expr] = []
        shifts: dict[str, ir.Expr] = {}
        ranges: list[ir.Expr] = []        # the shifted variables' own ranks
        retargeted: dict[int, str] = {}    # position -> the rank of an aliased variable
        for position, index in enumerate(read.indices):
            rank = target_ranks[position]
            var = self.forward.ranks[rank].var
            if isinstance(index, ir.Index) and index.var == var and var not in left:
                left.append(var)
                continue
            rest = _shift(index, var)
            if rest is not None and var not in left and var not in shifts:
                # index = var + rest: the Einsum's var is the left var minus rest, inside
                # its rank.
                left.append(var)
                shifts[var] = ir.Op("-", (ir.Index(var), rest))
                ranges += [ir.Op(">=", (shifts[var], ir.Const(0))),
                           ir.Op("<", (shifts[var], ir.Dim(rank)))]
                continue
            alias = self._alias(index, rank, left)
            if alias is not None:
                # `Z[.., j]` with j a variable of another rank of Z's rank's size (`dims
                # J = M`) beside m: the contribution is over j's rank (dZ_LS[.., j], the
                # Einsum's m summed), and its readers read it at m (`_cotangent`).
                left.append(alias)
                retargeted[position] = self.forward.var_rank(alias)
                continue
            if var in einsum.variables or var in left:
                raise GradientUnsupported(
                    f"the read {ir.to_text(read)} in {einsum.tensor}: its coordinate "
                    f"{ir.to_text(index)} of rank {rank} needs the variable {var}, which "
                    f"the Einsum already uses")
            left.append(var)
            conditions.append(ir.Op("==", (ir.Index(var), index)))
        target_ranks = tuple(retargeted.get(i, r) for i, r in enumerate(target_ranks))
        parts = ir.conjuncts(einsum.filter) + conditions
        if shifts:
            parts = [substitute(part, shifts) for part in parts] + ranges
            value = substitute(value, shifts)
        on_left = [c for c in parts if set(ir.index_vars(c)) <= set(left)
                   and not ir.reads(c)]
        if on_left:
            value = ir.Op("where", (ir.conjunction(on_left), value, ZERO))
        condition = ir.conjunction([c for c in parts if c not in on_left])
        variables = [v for v in einsum.variables if v not in shifts]
        mentioned = variables + ir.index_vars(value) + \
            (ir.index_vars(condition) if condition is not None else [])
        reduced = tuple(v for v in dict.fromkeys(mentioned) if v not in left)
        name = self.fresh(f"d{read.tensor}_{einsum.tensor}")
        self._define(name, target_ranks,
                     Einsum(name, tuple(left), value, "sum" if reduced else None, reduced,
                            condition, explicit_reduction=bool(reduced)),
                     f"what {einsum.tensor} contributes to d{read.tensor}: d{einsum.tensor} "
                     f"times d {einsum.tensor} / d {ir.to_text(read)}"
                     + ("" if einsum.reduce_op in (None, "sum") else
                        f" at the points that attain the {einsum.reduce_op}"))
        if ranks is None:
            self.terms.setdefault(read.tensor, []).append(name)
        return name


    def _alias(self, index: ir.Expr, rank: str, left: list[str]) -> str | None:
        """The variable of a coordinate that is a plain variable of another rank of the
        same size as `rank` (stick-breaking's `Z[b, h, p, j]`, `dims J = M`), not yet a
        left variable: the contribution can be over that rank instead. None otherwise."""
        if not isinstance(index, ir.Index) or index.var in left:
            return None
        other = self.forward.var_rank(index.var)
        ranks = self.forward.ranks
        if other == rank or ranks[other].size != ranks[rank].size:
            return None
        return index.var


def _shift(index: ir.Expr, var: str) -> ir.Expr | None:
    """`rest` where `index` is `var + rest` (or `rest + var`, `var - r`) and rest does not
    mention `var`; None otherwise."""
    if not isinstance(index, ir.Op) or index.op not in ("+", "-"):
        return None
    a, b = index.args
    if a == ir.Index(var) and var not in ir.index_vars(b):
        return b if index.op == "+" else ir.Op("neg", (b,))
    if index.op == "+" and b == ir.Index(var) and var not in ir.index_vars(a):
        return a
    inner = _shift(a, var)
    if inner is not None and var not in ir.index_vars(b):
        return ir.Op(index.op, (inner, b))
    return None


# ---------------------------------------------------------------- derivatives
def _reads_with_paths(expr: ir.Expr, path: tuple = ()):
    """Each tensor read of a value (not inside an index or a condition) and the argument
    positions that lead to it from the root."""
    if isinstance(expr, ir.Read):
        yield path, expr
        return
    if not isinstance(expr, ir.Op) or ir.is_boolean(expr):
        return
    start = 1 if expr.op == "where" else 0
    for position in range(start, len(expr.args)):
        yield from _reads_with_paths(expr.args[position], path + (position,))


def _derivative_along(expr: ir.Expr, path: tuple) -> ir.Expr:
    """d expr / d (the read at `path`): the product of each node's partial derivative
    with respect to the argument the path goes through."""
    factor: ir.Expr = ONE
    node = expr
    for position in path:
        factor = _mul(factor, _partial(node, position))
        node = node.args[position]
    return factor


def _partial(node: ir.Op, position: int) -> ir.Expr:
    """d node / d its argument at `position`."""
    op, args = node.op, node.args
    x = args[0]
    if op == "+":
        return ONE
    if op == "-":
        return ONE if position == 0 else ir.Const(-1.0)
    if op == "neg":
        return ir.Const(-1.0)
    if op == "*":
        return args[1 - position]
    if op == "/":
        a, b = args
        return ir.Op("/", (ONE, b)) if position == 0 else \
            ir.Op("neg", (ir.Op("/", (ir.Op("/", (a, b)), b)),))
    if op == "**":
        a, b = args
        if position == 0:
            return _mul(b, ir.Op("**", (a, ir.Op("-", (b, ONE)))))
        return _mul(node, ir.Op("log", (a,)))
    if op == "//":
        return ZERO
    if op == "%":
        return ONE if position == 0 else ir.Op("neg", (ir.Op("//", args),))
    if op == "exp":
        return node
    if op == "log":
        return ir.Op("/", (ONE, x))
    if op == "sqrt":
        return ir.Op("/", (HALF, node))
    if op == "tanh":
        return ir.Op("-", (ONE, ir.Op("*", (node, node))))
    if op == "sigmoid":
        return ir.Op("*", (node, ir.Op("-", (ONE, node))))
    if op == "relu":
        return ir.Op("where", (ir.Op(">", (x, ZERO)), ONE, ZERO))
    if op == "elu":
        return ir.Op("where", (ir.Op(">", (x, ZERO)), ONE, ir.Op("exp", (x,))))
    if op == "abs":
        return ir.Op("sign", (x,))
    if op == "sign":
        return ZERO
    if op == "softplus":
        return ir.Op("sigmoid", (x,))
    if op == "logsigmoid":
        return ir.Op("sigmoid", (ir.Op("neg", (x,)),))
    if op == "log1p":
        return ir.Op("/", (ONE, ir.Op("+", (ONE, x))))
    if op == "expm1":
        return ir.Op("exp", (x,))
    if op == "silu":
        s = ir.Op("sigmoid", (x,))
        return ir.Op("+", (s, ir.Op("*", (ir.Op("*", (x, s)), ir.Op("-", (ONE, s))))))
    if op == "erf":
        return ir.Op("*", (ir.Const(TWO_OVER_SQRT_PI),
                           ir.Op("exp", (ir.Op("neg", (ir.Op("*", (x, x)),)),))))
    if op in ("max", "min"):
        mine, other = args[position], args[1 - position]
        wins = ">" if op == "max" else "<"
        return ir.Op("where", (ir.Op(wins, (mine, other)), ONE,
                               ir.Op("where", (ir.Op("==", (mine, other)), HALF, ZERO))))
    if op == "where":
        condition = args[0]
        return ir.Op("where", (condition, ONE, ZERO)) if position == 1 else \
            ir.Op("where", (condition, ZERO, ONE))
    raise GradientUnsupported(f"no derivative rule for {op!r}")


def _mul(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    """a * b with the factors 1 and -1 folded (0 is kept out by the caller)."""
    if a == ONE:
        return b
    if b == ONE:
        return a
    if a == ir.Const(-1.0):
        return ir.Op("neg", (b,))
    if b == ir.Const(-1.0):
        return ir.Op("neg", (a,))
    if a == ZERO or b == ZERO:
        return ZERO
    return ir.Op("*", (a, b))
