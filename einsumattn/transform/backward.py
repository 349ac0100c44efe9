"""The fast backward: the gradient cascade (transform/grad.py) rewritten into the form
FlashAttention-2 derives by hand, each step a rule with a proof obligation sympy
discharges, then split into what the forward saves and what the backward recomputes.

    backward = einsumattn.transform.backward.fast_backward(cascade)
    backward.cascade      # the backward: inputs are the forward's, the cotangents and
                          # the saved tensors; it recomputes the rest
    backward.forward      # the forward with the saved statistics as extra outputs
    backward.saved        # saved tensor -> why it is saved
    backward.recomputed   # forward tensors the backward recomputes
    backward.steps        # the rules applied (docs/gradients.md, "The fast backward")

The rules, in the order they apply:

0. **Closed forms of online recurrences** (offline.py). A spec written in the online
   form (a running max and sums rescaled per tile, read only at their final values) is
   differentiated as the max and sums over every key it computes, proved equal: the
   rules below then apply to it as to the textbook form.
0b. **Normalised before the contraction.** `O = N / D` with `N = sum[R] X W` and D a
   sum over R of exponentials (free of R, positive) becomes `A = X / D`, `O = sum[R] A
   W`: an online form's `RNV / RD` is then softmax's `sum[m] A V`, and rules 1-3 give
   FlashAttention-2's backward for it too.
1. **Shift invariance.** A max (min) reduction S, or a function of such reductions
   alone (softpick's `max(LM, 0)`), that the outputs do not depend on: with
   S replaced by S + t (t any value per point of S), every tensor that reads S changes
   by an additive or multiplicative factor of t alone, proved Einsum by Einsum
   (`exp(X - S - t) = exp(X - S) exp(-t)`; a sum keeps a factor free of its summed
   variables; `SN e / (SD e) = SN / SD`; `abs`, `relu` and `sign` let a positive factor
   through), and no output changes. Then the derivative of
   the outputs along any change of S is 0: S's cotangent is 0, and the gradient is
   derived with S a constant (no share of a max's cotangent, no tie rule).
2. **Delta by reassociation.** A sum over the key rank R of a cotangent that is itself a
   contraction over a feature F, `X = sum[m] (sum[f] dO[f] W[m, f]) g[m]`, where a
   forward tensor is `O[f] = sum[m] h[m] W[m, f]` with `W g = c h`, c free of R:
   exchanging the finite sums gives `X = c * DELTA`, `DELTA = sum[f] dO[f] O[f]` (O(N d)
   work instead of O(N^2)). The identity `W g = c h` is the proof obligation.
3. **Log-sum-exp statistic.** A shift S and its normaliser `D = sum[R] exp(X - S)`
   become one statistic `L = S + log(D)`: every backward Einsum that reads S or D is
   rewritten with S = L - log(D) (D > 0 where a term is present) and kept where S and D
   then cancel (`exp(QK - GM) / SD = exp(QK - L)`): one value per row is saved instead
   of two, and the probabilities are recomputed from it.
4. **Save per row, recompute the rest.** Of the forward tensors the backward reads, the
   ones that exist only after a whole pass over the streamed rank, do not have that
   rank and have no absent points (per-row statistics, the outputs) are saved by the
   forward; everything else (the scores, the probabilities) is recomputed. Forward memory for training is then
   O(N) where the forward's is.

A rule that does not apply is skipped; the result is always the gradient (the oracle
agrees with the raw gradient cascade: tests/test_backward.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from ..analysis.presence import absent_tensors
from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..ir.cascade import Tensor
from ..ir.printer import cascade_text
from .algebra import (Algebra, NotAlgebraic, is_zero, positive_factors_out, settled,
                      substitute)
from .edit import assemble, fixed_point, late_tensors
from .factor import inline
from .grad import Gradient, GradientUnsupported, gradient
from .offline import closed_forms
from .steps import Step

NORMALISED = "normalised before the contraction"
SHIFT = "shift invariance"
DELTA = "delta by reassociation"
LSE = "log-sum-exp statistic"


@dataclass
class Backward:
    raw: Gradient                       # the gradient cascade before the rules
    cascade: Cascade                    # the backward, saved tensors as inputs
    forward: Cascade                    # the forward, saved statistics as outputs
    saved: dict[str, str]               # saved tensor -> why
    recomputed: list[str]               # forward tensors the backward recomputes
    steps: list[Step] = field(default_factory=list)
    streamed: str | None = None         # the forward's streamed rank
    gradients: dict[str, str] = field(default_factory=dict)   # input -> gradient output
    cotangents: dict[str, str] = field(default_factory=dict)  # output -> cotangent input

    def text(self) -> str:
        rules = {name: step.comment() for step in self.steps for name in step.tensors
                 if name in self.cascade.tensors}
        header = [f"# saved by the forward: {name} ({why})" for name, why in
                  self.saved.items()]
        if self.recomputed:
            header.append(f"# recomputed: {', '.join(self.recomputed)}")
        return "\n".join(header) + "\n" + cascade_text(self.cascade, rules)


def fast_backward(cascade: Cascade) -> Backward:
    """The fast backward of `cascade` (module docstring). GradientUnsupported where
    the gradient itself is not derived."""
    raw = gradient(cascade, frozenset())
    # 0. An online form written by hand is differentiated as the sums it computes.
    cascade, steps = closed_forms(cascade)
    # 0b. A division after the contraction (an online form's `RNV / RD`) moved before it.
    cascade, normalised = _normalised_first(cascade)
    steps += normalised
    constants = []
    shifts: set[str] = set()
    for einsum in cascade.einsums:
        # A shift: a max (min) reduction, or a function of shifts alone (softpick's
        # `GM = max(LM, 0)`, the max clamped below by 0).
        if einsum.reduce_op in ("max", "min") or (
                einsum.reduce_op is None and einsum.init is None and
                {r.tensor for r in ir.reads(einsum.body)} <= shifts != set()):
            shifts.add(einsum.tensor)
        if einsum.tensor in shifts and einsum.tensor not in cascade.outputs:
            proof = _shift_invariance(cascade, einsum.tensor)
            if proof is not None:
                constants.append(einsum.tensor)
                steps.append(Step(SHIFT, f"the outputs do not change when {einsum.tensor} "
                                         f"is shifted: its cotangent is 0",
                                  (einsum.tensor,), proof))
    derived = gradient(cascade, frozenset(constants))
    forward_names = {e.tensor for e in cascade.einsums}
    grad = derived.cascade
    grad, delta_steps = _reassociate(grad, forward_names)
    steps += delta_steps
    grad, statistics, lse_steps = _log_sum_exp(grad, cascade, set(constants))
    steps += lse_steps
    backward, forward, saved, recomputed, streamed = _split(grad, cascade, statistics)
    return Backward(raw, backward, forward, saved, recomputed, steps, streamed,
                    dict(derived.gradients), dict(derived.cotangents))


# ---------------------------------------------------------------- 0b. normalised first
def _normalised_first(cascade: Cascade) -> tuple[Cascade, list[Step]]:
    """Rule 0b wherever it applies: `O = N / D` with `N = sum[R] X * W` (read by O
    alone) and D a sum over R of exponentials, read at O's own rows, becomes
    `A = X / D` and `O = sum[R] A * W`, X the factors over D's rows and R. The inverse of
    factoring a value free of R out of a sum over R: each term of the new sum times D is
    the old term (the identity sympy proves), D is free of R and D > 0 (a sum of
    exponentials, with no absent point in either sum), so the sums agree. The online
    form's output `RNV_all / RD_all` is then softmax's `sum[m] A V`, and rules 2 and 3
    apply to it as to the textbook form."""
    absent = absent_tensors(cascade)

    def rule(current: Cascade, einsum: Einsum):
        found = _division_of_a_contraction(current, einsum, absent)
        if found is None:
            return None
        numerator, normaliser, rows, scores, rest = found
        n = current.einsum(numerator)
        d_read = einsum.body.args[1]
        name = current.fresh_name("A")
        a_indices = tuple(rows) + n.reduced
        weights = Einsum(name, a_indices, ir.Op("/", (ir.product(scores), d_read)))
        a_read = ir.Read(name, tuple(ir.Index(v) for v in a_indices))
        output = Einsum(einsum.tensor, einsum.indices, ir.product([a_read] + rest), "sum",
                        n.reduced, explicit_reduction=True)
        algebra = Algebra()
        try:
            x, w, d = (algebra.to_sympy(ir.product(f)) for f in (scores, rest or
                                                                [ir.Const(1)], [d_read]))
        except NotAlgebraic:
            return None
        if not is_zero((x / d) * w * d - x * w):
            return None
        einsums = [e for old in current.einsums
                   for e in ((weights, output) if old.tensor == einsum.tensor else (old,))]
        new = assemble(current, einsums, removable={numerator})
        reduced = ", ".join(n.reduced)
        return new, Step(NORMALISED, f"{einsum.tensor} = {numerator} / {normaliser} with "
                                     f"{numerator} = sum[{reduced}] ...: {normaliser} "
                                     f"(free of {reduced}, a sum of exponentials) divides "
                                     f"each term: {name}", (name, einsum.tensor),
                         f"({x} / {d}) * {w} * {d} == {x} * {w}")

    cascade, steps, _ = fixed_point(cascade, rule, len(cascade.einsums) + 1)
    return cascade, steps


def _division_of_a_contraction(cascade: Cascade, einsum: Einsum, absent: set[str]):
    """(N, D, D's rows in O's order, the factors over them and N's summed variables, the
    other factors) where rule 0b applies to `einsum` (`O = N / D`), else None."""
    body = einsum.body
    if einsum.reduce_op is not None or einsum.filter is not None or \
            einsum.iterative is not None or not (isinstance(body, ir.Op) and body.op == "/"):
        return None
    top, bottom = body.args
    if not (isinstance(top, ir.Read) and isinstance(bottom, ir.Read)) or \
            top.indices != _own(einsum) or cascade.tensors[top.tensor].is_input or \
            cascade.tensors[bottom.tensor].is_input:
        return None
    n, d = cascade.einsum(top.tensor), cascade.einsum(bottom.tensor)
    summed = set(n.reduced)
    if n.reduce_op != "sum" or d.reduce_op != "sum" or set(d.reduced) != summed or \
            n.filter is not None or d.filter is not None or \
            n.iterative is not None or d.iterative is not None or \
            n.indices != einsum.indices or n.tensor in cascade.outputs or \
            [e.tensor for e in cascade.einsums if n.tensor in e.reads] != [einsum.tensor]:
        return None
    if any(not isinstance(i, ir.Index) or i.var not in einsum.indices
           for i in bottom.indices) or _exponent_summed(cascade, d) is None:
        return None
    if {n.tensor, d.tensor} & absent or \
            any(r in absent for e in (n, d) for r in e.reads):
        return None
    rows = [v for v in einsum.indices if ir.Index(v) in bottom.indices]
    scores = [f for f in ir.product_factors(n.body) if set(ir.index_vars(f)) <= {*rows, *summed}]
    rest = [f for f in ir.product_factors(n.body) if not set(ir.index_vars(f)) <= {*rows, *summed}]
    if not scores or not rest:
        return None
    return n.tensor, d.tensor, rows, scores, rest


# ---------------------------------------------------------------- 1. shift invariance
def _own(einsum: Einsum) -> tuple[ir.Expr, ...]:
    return tuple(ir.Index(v) for v in einsum.indices)


def _shift_invariance(cascade: Cascade, shift: str) -> str | None:
    """The proof that the outputs do not depend on `shift` (module docstring, rule 1):
    how each tensor changes, or None where one change is not a factor of t alone or
    reaches an output."""
    algebra = Algebra()
    t = algebra.fresh("t")
    variables = set(cascade.einsum(shift).indices)
    change: dict[str, tuple[str, sympy.Expr]] = {shift: ("+", t)}
    seen = False
    for einsum in cascade.einsums:
        if einsum.tensor == shift:
            seen = True
            continue
        if not seen:
            continue
        reads = [r for r in ir.reads(einsum.body) if r.tensor in change]
        others = [r for expr in (einsum.filter, einsum.init) if expr is not None
                  for r in ir.reads(expr) if r.tensor in change]
        if not reads and not others:
            continue
        if others or einsum.iterative is not None or \
                not variables <= set(einsum.indices) or \
                any(r.indices != _own(cascade.einsum(r.tensor)) for r in reads):
            return None
        before = algebra.to_sympy(einsum.body)
        after = positive_factors_out(before.xreplace(
            {algebra.read(r): _changed(change[r.tensor], algebra.read(r)) for r in reads}), t)
        found = _change_of(after, before, t, einsum.reduce_op, cheap=True) or \
            _change_of(after, before, t, einsum.reduce_op, cheap=False)
        if found is None:
            return None
        if found != "same":
            change[einsum.tensor] = found
        continue
    if set(cascade.outputs) & set(change):
        return None
    return "; ".join(f"{name} -> {name} {op} {value}" for name, (op, value) in
                     change.items()) + "; outputs unchanged"


def _change_of(after: sympy.Expr, before: sympy.Expr, t: sympy.Symbol,
               reduce_op: str | None, cheap: bool):
    """How an Einsum's body changes: "same", ("+", c) or ("*", c) with c a function of t
    alone (an addition commutes with max and min, a factor with sum, a positive one with
    all three), or None. `cheap`: exact canonical forms only (expanded, exponentials
    combined: `exp(a - t) / exp(a)` is `exp(-t)`), which cost far less than `settled`'s
    sympy.simplify; else `settled`."""
    def form(value):
        if not cheap:
            return settled(value)
        expanded = sympy.expand(value)
        return expanded if expanded == 0 or expanded.free_symbols <= {t} else \
            sympy.powsimp(expanded, combine="exp")

    difference = form(after - before)
    if difference == 0:
        return "same"
    if difference.free_symbols <= {t} and reduce_op in (None, "max", "min"):
        return ("+", difference)
    if before == 0:
        return None
    ratio = form(after / before)
    if ratio.free_symbols <= {t} and (reduce_op in (None, "sum") or ratio.is_positive):
        return ("*", ratio)
    return None


def _changed(change: tuple[str, sympy.Expr], value: sympy.Expr) -> sympy.Expr:
    op, amount = change
    return value + amount if op == "+" else value * amount


# ---------------------------------------------------------------- 2. delta


def _reassociate(grad: Cascade, forward: set[str]) -> tuple[Cascade, list[Step]]:
    """Rule 2 wherever it applies (module docstring), to a fixed point."""
    def rule(cascade: Cascade, einsum: Einsum):
        if einsum.tensor in forward or einsum.reduce_op != "sum" or \
                einsum.iterative is not None:
            return None
        found = _delta_for(cascade, einsum, forward)
        if found is None:
            return None
        contraction, delta_body, features, factor, identity = found
        # The same sum already made for another reader (softpick's dSD and dGM both read
        # sum[f] dO O) is read again, not computed twice.
        same = [e for e in cascade.einsums if e.indices == einsum.indices and
                e.body == delta_body and e.reduce_op == "sum" and
                e.reduced == tuple(features) and e.filter is None]
        name = same[0].tensor if same else cascade.fresh_name("DELTA")
        delta = Einsum(name, einsum.indices, delta_body, "sum", tuple(features),
                       explicit_reduction=True)
        product = Einsum(einsum.tensor, einsum.indices,
                         ir.Op("*", (factor, ir.Read(name, _own(einsum)))))
        written = (product,) if same else (delta, product)
        einsums = [e for old in cascade.einsums
                   for e in (written if old.tensor == einsum.tensor else (old,))]
        new = assemble(cascade, einsums, removable=set(cascade.tensors) - set(cascade.outputs))
        return new, Step(DELTA, f"sum[{', '.join(einsum.reduced)}] of {contraction} "
                                f"exchanged with its sum[{', '.join(features)}]: "
                                f"{einsum.tensor} = ({ir.to_text(factor)}) * {name}",
                         (einsum.tensor,) if same else (name, einsum.tensor), identity)

    grad, steps, _ = fixed_point(grad, rule, len(grad.einsums) + 1)
    return grad, steps


def _delta_for(grad: Cascade, einsum: Einsum, forward: set[str]):
    """(the cotangent read, DELTA's body, its features, the factor c, the identity) where
    rule 2 applies to `einsum`, else None."""
    summed = set(einsum.reduced)
    for read in ir.reads(einsum.body):
        if read.tensor in forward or grad.tensors[read.tensor].is_input:
            continue
        inner = grad.einsum(read.tensor)
        if inner.reduce_op != "sum" or inner.filter is not None or \
                inner.iterative is not None or read.indices != _own(inner):
            continue
        features = list(inner.reduced)
        if set(features) & set(einsum.variables):
            continue
        outside = [f for f in ir.product_factors(inner.body) if not set(ir.index_vars(f)) & summed]
        within = [f for f in ir.product_factors(inner.body) if set(ir.index_vars(f)) & summed]
        if not outside or not within:
            continue
        for candidate in grad.einsums:
            if candidate.tensor not in forward or candidate.reduce_op != "sum" or \
                    set(candidate.reduced) != summed or candidate.filter != einsum.filter \
                    or set(candidate.indices) != set(einsum.indices) | set(features):
                continue
            found = _ratio_free_of(grad, einsum, read, within, candidate, summed, forward)
            if found is None:
                continue
            factor, identity = found
            output = ir.Read(candidate.tensor, _own(candidate))
            body = ir.product(outside + [output])
            return read.tensor, body, features, factor, identity
    return None


def _simplest(value: sympy.Expr) -> sympy.Expr:
    """A product (or atom) with its exponentials merged (`exp(a) exp(-a)` is 1); a sum
    `settled`."""
    return sympy.powsimp(value, combine="exp") if not isinstance(value, sympy.Add) \
        else settled(value)


def _ratio_free_of(grad: Cascade, einsum: Einsum, read: ir.Read, within: list[ir.Expr],
                   candidate: Einsum, summed: set[str], forward: set[str]):
    """c = (einsum's body / read) * within / candidate's body, when c is free of the
    summed variables: (c as IR, the identity proved)."""
    algebra = Algebra()
    try:
        body = algebra.to_sympy(inline(grad, einsum.body, 4))
        # A product divided by one of its factors, and the ratio of two products,
        # cancel as sympy builds them: `settled` only where they do not.
        g = _simplest(body / algebra.read(read))
        w = algebra.to_sympy(ir.product(within))
        h = algebra.to_sympy(inline(grad, candidate.body, 4))
        if h == 0:
            return None
        c = _simplest(g * w / h)
        if algebra.read(read) in c.free_symbols:
            return None
        for symbol in c.free_symbols:
            node = algebra.nodes.get(symbol)
            if node is None or set(ir.index_vars(node)) & summed:
                return None
        if not is_zero(g * w - c * h):
            return None
        return _tidy(algebra.to_ir(_folded(grad, algebra, c, forward, summed))), \
            f"{g * w} == ({c}) * ({h})"
    except NotAlgebraic:
        return None


def _folded(grad: Cascade, algebra: Algebra, value: sympy.Expr, forward: set[str],
            summed: set[str]) -> sympy.Expr:
    """`value` with the inlined body of an elementwise forward tensor free of the summed
    ranks written as a read of that tensor again (softpick's `max(0, LM)` is GM): the
    backward then reads what the forward has, not what it was computed from. Equal by
    definition: each replaced expression is the tensor's own body."""
    for einsum in reversed(grad.einsums):
        if einsum.tensor not in forward or einsum.reduce_op is not None or \
                einsum.init is not None or einsum.filter is not None or \
                set(einsum.indices) & summed:
            continue
        body = algebra.to_sympy(inline(grad, einsum.body, 4))
        if not body.is_Atom:
            value = value.xreplace({body: algebra.read(ir.Read(einsum.tensor, _own(einsum)))})
    return value


def _tidy(expr: ir.Expr) -> ir.Expr:
    """`-(a - b)` as `b - a`, everywhere in `expr`: sympy's sums come back negated
    (`exp(-(LSE - QK))`), which prints and computes one operation more than
    `exp(QK - LSE)`."""
    if not isinstance(expr, ir.Op):
        return expr
    args = tuple(_tidy(a) for a in expr.args)
    if expr.op == "neg" and isinstance(args[0], ir.Op) and args[0].op == "-":
        a, b = args[0].args
        return ir.Op("-", (b, a))
    return ir.Op(expr.op, args)


# ---------------------------------------------------------------- 3. log-sum-exp
def _normalisers(forward: Cascade, shifts: set[str]) -> list[tuple[str, str]]:
    """(S, D) pairs: D = sum[R] exp(X - S), S a shift of rule 1 over the same rows."""
    pairs = []
    for einsum in forward.einsums:
        argument = _exponent_summed(forward, einsum)
        if argument is None:
            continue
        for shift in shifts:
            own = ir.Read(shift, _own(einsum))
            if isinstance(argument, ir.Op) and argument.op == "-" and \
                    argument.args[1] == own and shift not in \
                    {r.tensor for r in ir.reads(argument.args[0])} and \
                    forward.einsum(shift).indices == einsum.indices:
                pairs.append((shift, einsum.tensor))
    return pairs


def _exponent_summed(cascade: Cascade, einsum: Einsum) -> ir.Expr | None:
    """X where `einsum` is `sum[R] exp(X)` (its body's elementwise producers inlined), a
    sum of exponentials: positive wherever a term is present; None otherwise."""
    if einsum.reduce_op != "sum" or einsum.iterative is not None:
        return None
    body = inline(cascade, einsum.body, 4)
    return body.args[0] if isinstance(body, ir.Op) and body.op == "exp" else None


def _log_sum_exp(grad: Cascade, forward: Cascade, shifts: set[str]):
    """Rule 3 (module docstring): the new statistics (name -> (S, D)) and steps."""
    steps: list[Step] = []
    statistics: dict[str, tuple[str, str]] = {}
    forward_names = {e.tensor for e in forward.einsums}
    for shift, normaliser in _normalisers(forward, shifts):
        taken = set(grad.tensors)
        name = grad.fresh_name("LSE", taken)
        rows = forward.einsum(shift).indices
        einsums = list(grad.einsums)
        changed = []
        for position, einsum in enumerate(einsums):
            if einsum.tensor in (shift, normaliser) or einsum.reduce_op is not None or \
                    einsum.filter is not None or einsum.iterative is not None:
                continue
            body = inline(grad, einsum.body, 8)
            reads = {r.tensor for r in ir.reads(body)}
            if not {shift, normaliser} & reads:
                continue
            rewritten = _without(body, shift, normaliser, name)
            if rewritten is None:
                continue
            einsums[position] = Einsum(einsum.tensor, einsum.indices, rewritten[0])
            changed.append((einsum.tensor, rewritten[1]))
        if not changed:
            continue
        statistic = Einsum(name, rows, ir.Op("+", (
            ir.Read(shift, tuple(ir.Index(v) for v in rows)),
            ir.Op("log", (ir.Read(normaliser, tuple(ir.Index(v) for v in rows)),)))))
        at = max(i for i, e in enumerate(einsums) if e.tensor in (shift, normaliser))
        einsums.insert(at + 1, statistic)
        grad = assemble(grad, einsums, removable=set(grad.tensors) - set(grad.outputs))
        statistics[name] = (shift, normaliser)
        forward_names.add(name)
        steps.append(Step(LSE, f"{name} = {shift} + log({normaliser}) saved in place of "
                               f"{shift} and {normaliser}; "
                               f"{', '.join(t for t, _ in changed)} read {name} alone",
                          (name,) + tuple(t for t, _ in changed),
                          "; ".join(identity for _, identity in changed)))
    return grad, statistics, steps


def _without(body: ir.Expr, shift: str, normaliser: str, statistic: str):
    """`body` with S = L - log(D) substituted, simplified, when S and D cancel: (the
    new body, the identity proved), else None."""
    algebra = Algebra()
    try:
        # D > 0 where a term of its sum is present, which is where the body is.
        for read in ir.reads(body):
            if read.tensor == normaliser:
                algebra.symbol(read, normaliser, positive=True)
        before = algebra.to_sympy(body)
        values = {}
        for read in ir.reads(body):
            if read.tensor == shift:
                own = ir.Read(statistic, read.indices)
                d = algebra.symbol(ir.Read(normaliser, read.indices), normaliser,
                                   positive=True)
                values[algebra.read(read)] = algebra.read(own) - sympy.log(d)
        substituted = before.xreplace(values)

        def reads_of(value):
            return {algebra.nodes[s].tensor for s in value.free_symbols
                    if isinstance(algebra.nodes.get(s), ir.Read)}

        # Exponentials split and merged again (`exp(x + log(D)) = D exp(x)`), common
        # factors pulled out: a canonical form in which S and D cancel where they do
        # (sympy.simplify, tried too, found no more on the examples and costs 0.2 s).
        after = sympy.factor_terms(sympy.powsimp(sympy.expand(substituted), combine="exp"))
        if reads_of(after) & {shift, normaliser}:
            return None
        # The identity: the new body with L = S + log(D) is the old one.
        back = {algebra.read(ir.Read(statistic, r.indices)):
                algebra.read(r) + sympy.log(algebra.symbol(ir.Read(normaliser, r.indices),
                                                           normaliser, positive=True))
                for r in ir.reads(body) if r.tensor == shift}
        if not is_zero(after.xreplace(back) - before):
            return None
        rewritten = _tidy(algebra.to_ir(after))
        # Exponentials stay shifted: each one in the result is one the body had, or one
        # of the statistic (`exp(QK - LSE)`), never an unshifted part of a split one
        # (`exp(QK) / exp(GM)` overflows where `exp(QK - GM)` does not).
        had = {node for node in ir.walk(body) if isinstance(node, ir.Op) and node.op == "exp"}
        for node in ir.walk(rewritten):
            if isinstance(node, ir.Op) and node.op == "exp" and node not in had and \
                    statistic not in {r.tensor for r in ir.reads(node)}:
                return None
        return rewritten, f"{before} == {after}"
    except NotAlgebraic:
        return None


# ---------------------------------------------------------------- 4. saved / recomputed
def _split(grad: Cascade, forward: Cascade, statistics: dict[str, tuple[str, str]]):
    """The backward with the saved tensors as inputs, the forward with the statistics
    as outputs, what is saved (and why) and what is recomputed."""
    from ..analysis import analyze
    forward_names = {e.tensor for e in forward.einsums} | set(statistics)
    rank = analyze(forward).primary_rank
    late = (late_tensors(forward, rank) if rank is not None else set()) | set(statistics)
    # A tensor with absent points is never saved: the forward returns an absent point as
    # 0, and the backward would read that 0 where the tensor has no value.
    absent = absent_tensors(grad)
    late -= absent
    # Nor is a recurrence (one position more than its rank: not an input's shape).
    late -= {name for name, t in grad.tensors.items() if t.iterative is not None}
    # A reduction of the inputs over a feature rank into one input's other ranks
    # (cosine attention's query and key norms, SQ[p] and SK[m]): a value per row or per
    # key, which the forward computes in a kernel of its own; saved, it is not
    # recomputed by every backward stage, whose attention loops cannot reduce features.
    norms = {e.tensor for e in forward.einsums
             if e.reduce_op is not None and rank not in e.reduced and e.iterative is None
             and all(forward.tensors[r].is_input for r in e.reads)
             and forward.has_input_over(forward.tensors[e.tensor].ranks, more=True)
             and e.tensor not in absent}
    late |= norms
    # From the outputs down: a forward tensor that is late and has no streamed rank is
    # saved (and what it reads is not needed for it); the other forward tensors reached
    # are recomputed.
    saved: dict[str, str] = {}
    reached: set[str] = set()
    pending = list(grad.outputs)
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        if grad.tensors[name].is_input:
            continue
        if name in forward_names and name in late and \
                (rank not in grad.tensors[name].ranks or name in norms):
            if name in statistics:
                shift, normaliser = statistics[name]
                saved[name] = f"{shift} + log({normaliser}): one value per row"
            elif name in forward.outputs:
                saved[name] = "an output of the forward"
            elif name in norms:
                saved[name] = "a reduction of the inputs over a feature rank"
            else:
                saved[name] = f"a per-row value that needs a whole pass over {rank}"
            continue
        pending += [r for r in grad.einsum(name).reads if r != name]
    recomputed = [e.tensor for e in grad.einsums if e.tensor in forward_names and
                  e.tensor in reached and e.tensor not in saved]
    inputs = dict((t.name, t) for t in grad.tensors.values() if t.is_input)
    for name in saved:
        old = grad.tensors[name]
        # A log-sum-exp bounds the scores its shift is the max of (module docstring,
        # rule 3): the backward's exp(X - LSE) follows a max-shift, as the forward's did.
        bounds = None
        if name in statistics:
            shift = forward.einsum(statistics[name][0])
            # (a max over a filtered range bounds only the points it covers)
            if isinstance(shift.body, ir.Read) and shift.reduce_op == "max" and \
                    shift.filter is None:
                bounds = shift.body.tensor
        inputs[name] = Tensor(name, old.ranks, True, bounds=bounds)
    kept = [e for e in grad.einsums if e.tensor in reached and e.tensor not in saved]
    tensors = {**inputs, **{e.tensor: grad.tensors[e.tensor] for e in kept}}
    backward = Cascade(f"{forward.name}_backward", dict(grad.ranks), grad.splits,
                       dict(grad.params), tensors, tuple(kept), grad.outputs, grad.source)
    extra = [e for e in grad.einsums if e.tensor in statistics]
    forward_einsums = list(forward.einsums) + extra
    tensors = dict(forward.tensors)
    for einsum in extra:
        tensors[einsum.tensor] = grad.tensors[einsum.tensor]
    outputs = tuple(forward.outputs) + tuple(n for n in saved if n not in forward.outputs)
    with_stats = Cascade(f"{forward.name}_saving", dict(forward.ranks), forward.splits,
                         dict(forward.params), tensors, tuple(forward_einsums), outputs,
                         forward.source)
    return backward, with_stats, saved, recomputed, rank


__all__ = ["Backward", "GradientUnsupported", "fast_backward"]
