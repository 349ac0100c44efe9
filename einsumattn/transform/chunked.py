"""The chunked form of a linear recurrence (rule 4): the chunkwise-parallel form of
gated linear attention, RetNet and their relatives (GLA paper, section 3; Lightning
Attention-2), derived from the recurrence their papers write.

A state over the rank T, updated by a gate and an outer product and read by a
contraction at the step it includes,

    init S[.., 0, d, f] = 0
    S[.., t+1, d, f]    = exp(a[.., t, d]) * S[.., t, d, f] + k[.., t, d] * v[.., t, f]
    O[.., t, f]         = sum[d] q[.., t, d] * S[.., t+1, d, f]

(the gate `exp(a)` may depend on d or not, or be a positive constant `g`: a = log g),
becomes, with T split into chunks of C steps (t = t1*T0 + t0) and TK a second step
within a chunk (the key's),

    L[.., t1, t0, d]     = sum[tk] a[.., t1*T0 + tk, d] where tk <= t0 and t1*T0 + tk < T
    A[.., t1, t0, tk]    = sum[d] q[.., t1*T0 + t0, d] * k[.., t1*T0 + tk, d]
                                  * exp(L[.., t1, t0, d] - L[.., t1, tk, d]) where tk <= t0
    O_intra[.., t1, t0, f] = sum[tk] A[.., t1, t0, tk] * v[.., t1*T0 + tk, f]
    KV[.., t1, d, f]     = sum[tk] exp(L[.., t1, T0 - 1, d] - L[.., t1, tk, d])
                                  * k[.., t1*T0 + tk, d] * v[.., t1*T0 + tk, f]
    init SC[.., 0, d, f] = 0
    SC[.., t1+1, d, f]   = exp(L[.., t1, T0 - 1, d]) * SC[.., t1, d, f] + KV[.., t1, d, f]
    O_inter[.., t1, t0, f] = sum[d] q[.., t1*T0 + t0, d] * exp(L[.., t1, t0, d]) * SC[.., t1, d, f]
    O[.., t, f]          = O_intra[.., t // T0, t % T0, f] + O_inter[.., t // T0, t % T0, f]

the masked C x C attention inside a chunk (matrix products), one state update per chunk
(T / C serial steps instead of T), and the inter-chunk part read from the state at the
chunk's start.

Proof. With Λ[t] = a[0] + ... + a[t], induction on t gives the unrolled state
S[t+1] = sum over s <= t of exp(Λ[t] - Λ[s]) k[s] v[s]^T: S[1] = k[0] v[0]^T, and the
step is exp(a[t]) exp(Λ[t-1] - Λ[s]) = exp(Λ[t] - Λ[s]) (sympy checks it). Split the
sum at the chunk's start t1*T0: the terms of earlier chunks are
exp(Λ[t] - Λ[t1*T0 - 1]) S[t1*T0] = exp(L[t1, t0]) SC[t1] (L the cumulative sum from
the chunk's start; SC[t1] = S[t1*T0], which satisfies SC's recurrence by the same
unrolling over one chunk), and those of the chunk itself are O_intra's, with
Λ[t] - Λ[s] = L[t1, t0] - L[t1, tk]. Contracting with q and exchanging the finite sums
over d and tk gives O = O_intra + O_inter. The obligations sympy discharges here: the
recurrence's body is `gate * S + update` (linear in the state, the gate and update free
of it), the gate is `exp(a)`, the update is a product of a factor free of f and one
free of d, and the reader is q times the state, q free of f. Every exponential is of a
sum of log-gates over steps of one chunk: `L[t0] - L[tk]` with tk <= t0, `L[T0 - 1] -
L[tk]` and `L[t0]` are sums of a's, non-positive where the gates are at most 1 (GLA's
log-sigmoid gates, RetNet's decays): no exponential of a cumulative sum over the whole
sequence, which would underflow. The last chunk's steps past T are absent (reads past
the end), and L's filter keeps them out of its sums. tests/test_chunked.py compares the
two forms under the float64 oracle at lengths that are not a multiple of the chunk.

Refused, with the reason, for a state that does not start at 0, an update that is not a
product of a key factor and a value factor, a gate that is not an exponential or a
positive constant, a nonlinear update (the state read twice, or under a function), a
state read other than at the step that includes t, or by more than one Einsum.
"""

from __future__ import annotations

import sympy

from ..ir import Cascade, Einsum, Rank, Split
from ..ir import expr as ir
from .algebra import Algebra, NotAlgebraic, is_zero, sign, substitute
from .edit import assemble, fresh_name
from .steps import Blocked, Step

CHUNKED = "chunked form of a linear recurrence"


def chunk_recurrences(cascade: Cascade, chunk: int
                      ) -> tuple[Cascade, list[Step], list[Blocked]]:
    """Rule 4 wherever it applies: each linear recurrence in its chunked form, chunks of
    `chunk` steps (module docstring)."""
    steps: list[Step] = []
    blocked: list[Blocked] = []
    for name in [e.tensor for e in cascade.einsums if e.iterative is not None]:
        result = _chunked(cascade, cascade.einsum(name), chunk)
        if isinstance(result, Blocked):
            blocked.append(result)
        else:
            cascade, step = result
            steps.append(step)
    return cascade, steps, blocked


def decaying(cascade: Cascade) -> bool:
    """Whether every recurrence of the cascade that is `gate * S + update` has gates
    provably at most 1 (log-gates <= 0: `exp(logsigmoid(x))`, `exp(-softplus(x))`, a
    constant decay such as RetNet's `1 - 2**(-5 - h)`, or no gate). Then every
    exponential of its chunked form is of a sum of non-positive log-gates, at most 1,
    and each tl.dot operand of the chunk kernel is bounded by its inputs' magnitudes. A
    gate above 1 (an exploding state) keeps float32 in range in the recurrence, which
    multiplies it into the state step by step, but not in the chunked form: exp of a
    chunk's summed log-gates overflows once they pass 88 (docs/rewrites.md, rule 4)."""
    for state in cascade.einsums:
        if state.iterative is None:
            continue
        parts = _gate_and_update(state)
        log_gate = None if parts is None else _log_gate(parts[0])
        if log_gate is None or sign(cascade, log_gate) not in (-1, 0):
            return False
    return True


def _gate_and_update(state: Einsum) -> tuple[ir.Expr, ir.Expr] | None:
    """(gate, update) of a state's body `gate * S[.., t, ..] + update`; None otherwise."""
    previous = ir.Read(state.tensor, tuple(ir.Index(v) for v in state.indices))
    body = state.body
    if not (isinstance(body, ir.Op) and body.op == "+"):
        return None
    with_state = [term for term in body.args if previous in ir.product_factors(term)]
    update = [term for term in body.args
              if state.tensor not in {r.tensor for r in ir.reads(term)}]
    if len(with_state) != 1 or len(update) != 1:
        return None
    factors = ir.product_factors(with_state[0])
    factors.remove(previous)
    return ir.product(factors), update[0]


def _variables(expr: ir.Expr) -> set[str]:
    return set(ir.index_vars(expr))


def _log_gate(gate: ir.Expr) -> ir.Expr | None:
    """a with gate = exp(a): the exponent of an exponential, the sum of those of a
    product of them, or the log of a positive constant (no tensor read)."""
    factors = ir.product_factors(gate)
    if all(isinstance(f, ir.Op) and f.op == "exp" for f in factors):
        return ir.total([f.args[0] for f in factors])
    if not ir.reads(gate):
        algebra = Algebra()
        try:
            value = algebra.to_sympy(gate)
        except NotAlgebraic:
            return None
        if _positive(value):
            return ir.Op("log", (gate,))
    return None


def _positive(value: sympy.Expr) -> bool:
    """Whether a constant gate is positive at every index (variables >= 0, sizes >= 1):
    sympy's assumptions, else, for a gate of one variable (a decay per head, RetNet's
    1 - 2**(-5 - h)), its minimum over [0, oo)."""
    values = {s: sympy.Symbol(s.name, nonnegative=True, integer=True)
              for s in value.free_symbols}
    if sympy.simplify(value.xreplace(values)).is_positive:
        return True
    if len(value.free_symbols) != 1:
        return False
    from sympy.calculus.util import minimum

    symbol = next(iter(value.free_symbols))
    real = sympy.Symbol("x", real=True)
    try:
        lowest = minimum(value.xreplace({symbol: real}), real, sympy.Interval(0, sympy.oo))
    except (NotImplementedError, ValueError, TypeError):
        # sympy's calculus gives up on what it cannot differentiate or solve (raising
        # one of these): no proof of positivity, so the rule is refused with its reason.
        return False
    return bool(lowest.is_positive)


def _chunked(cascade: Cascade, state: Einsum, chunk: int):
    name = state.tensor
    x = state.iter_var
    rank = cascade.var_rank(x)

    def refuse(reason: str) -> Blocked:
        return Blocked(CHUNKED, name, reason)

    if any(rank in (s.parent, s.outer, s.inner) for s in cascade.splits):
        return refuse(f"{rank} is already split")
    if state.reduce_op is not None or state.filter is not None:
        return refuse("a recurrence with a reduction or a filter of its own")
    if not (isinstance(state.init, ir.Const) and state.init.value == 0):
        return refuse("the state does not start at 0")
    previous = ir.Read(name, tuple(ir.Index(v) for v in state.indices))
    body = state.body
    if not (isinstance(body, ir.Op) and body.op == "+"):
        return refuse("the update is not `gate * state + update`")
    parts = _gate_and_update(state)
    if parts is None:
        return refuse(f"the update is not `gate * {name}[.., {x}, ..] + update`, linear "
                      f"in the state")
    gate, update = parts
    if name in {r.tensor for r in ir.reads(gate)}:
        return refuse("the state is read twice (not linear)")

    # The one reader: a contraction of the state at t+1 with a query factor.
    readers = [e for e in cascade.einsums if e.tensor != name and name in e.reads]
    if len(readers) != 1:
        return refuse(f"{name} is read by {len(readers)} Einsums (one contraction expected)")
    reader = readers[0]
    after = tuple(ir.Op("+", (ir.Index(v), ir.Const(1))) if v == x else ir.Index(v)
                  for v in state.indices)
    reads = [r for r in ir.reads(reader.body) if r.tensor == name]
    if reader.filter is not None or reader.reduce_op != "sum" or reads != \
            [ir.Read(name, after)] or ir.Read(name, after) not in ir.product_factors(reader.body):
        return refuse(f"{reader.tensor} does not read {name}[.., {x}+1, ..] as a factor of "
                      f"a sum, with no filter")
    query = [f for f in ir.product_factors(reader.body) if f != ir.Read(name, after)]
    kd = set(reader.reduced)
    others = [v for v in state.indices if v != x and v not in kd]
    if x not in reader.indices or set(reader.indices) != set(others) | {x} or \
            not kd <= set(state.indices):
        return refuse(f"{reader.tensor} does not keep {name}'s ranks but the ones it sums")
    used_by_query = set().union(*(_variables(f) for f in query)) if query else set()
    vf = {v for v in others if v not in used_by_query}
    keys = [f for f in ir.product_factors(update) if not _variables(f) & vf]
    values = [f for f in ir.product_factors(update) if _variables(f) & vf]
    if any(_variables(f) & kd for f in values):
        return refuse(f"the update is not a product of a factor free of "
                      f"{', '.join(sorted(vf))} and one free of {', '.join(sorted(kd))}")
    if _variables(gate) & vf or used_by_query & vf:
        return refuse(f"the gate or the query depends on {', '.join(sorted(vf))}")
    if any(name in {r.tensor for r in ir.reads(f)} for f in keys + values + query):
        return refuse("the update or the query reads the state")
    log_gate = _log_gate(gate)
    if log_gate is None:
        return refuse(f"the gate {ir.to_text(gate)} is not an exponential or a positive "
                      f"constant: its running product needs its log")

    # The obligations: the body is gate * S + update, the gate exp(a), the update the
    # product of its key and value factors, the reader the query times the state.
    algebra = Algebra()
    try:
        s = algebra.to_sympy(previous)
        key_value = algebra.to_sympy(ir.product(keys)) * algebra.to_sympy(ir.product(values))
        obligations = [
            (algebra.to_sympy(body), algebra.to_sympy(gate) * s + key_value),
            (algebra.to_sympy(gate), sympy.exp(algebra.to_sympy(log_gate))),
            (algebra.to_sympy(reader.body),
             algebra.to_sympy(ir.product(query)) * algebra.to_sympy(ir.Read(name, after)))]
        # The induction step of the unrolled state (module docstring).
        a, big, small = algebra.fresh("a"), algebra.fresh("L"), algebra.fresh("l")
        obligations.append((sympy.exp(a) * sympy.exp(big - small),
                            sympy.exp(big + a - small)))
    except NotAlgebraic as why:
        return refuse(f"not algebraic: {why}")
    for left, right in obligations:
        if not is_zero(left - right):
            return refuse(f"could not prove {left} == {right}")

    result, written, split = _assembled(cascade, state, reader, chunk, log_gate, keys,
                                        values, query, kd, vf)
    step = Step(CHUNKED, f"{name} over {rank} in chunks of {chunk} steps ({split}): "
                         f"a masked attention inside each chunk, one state update per chunk",
                written, "; ".join(f"{left} == {right}" for left, right in obligations) +
                f"; so {name}[{x}+1] = sum over s <= {x} of exp(L[{x}] - L[s]) * update[s]")
    return result, step


def _assembled(cascade: Cascade, state: Einsum, reader: Einsum, chunk: int,
               log_gate: ir.Expr, keys: list[ir.Expr], values: list[ir.Expr],
               query: list[ir.Expr], kd: set[str], vf: set[str]):
    """The chunked cascade (module docstring's names: L, A, O_intra, KV, SC, O_inter),
    the tensors it wrote and the split as words."""
    name, x = state.tensor, state.iter_var
    rank = cascade.var_rank(x)
    taken: set[str] = set()

    def fresh(base: str) -> str:
        found = fresh_name(cascade, base, taken)
        taken.add(found)
        taken.add(found.lower())
        return found

    size, outer, inner, key = fresh("C"), fresh(f"{rank}1"), fresh(f"{rank}0"), \
        fresh(f"{rank}K")
    x1, x0, xk = outer.lower(), inner.lower(), key.lower()
    ranks = dict(cascade.ranks)
    ranks[size] = Rank(size, sympy.Integer(chunk), chunk)
    ranks[inner] = Rank(inner, sympy.Integer(chunk), None, rank)
    ranks[outer] = Rank(outer, sympy.ceiling(cascade.ranks[rank].size / chunk), None, rank)
    ranks[key] = Rank(key, sympy.Integer(chunk), None, None, definition=ir.Dim(size))
    split = Split(rank, outer, inner, size)

    def at(step: ir.Expr) -> ir.Expr:         # the step t1*T0 + step of chunk t1
        return ir.Op("+", (ir.Op("*", (ir.Index(x1), ir.Dim(inner))), step))

    def chunk_of(expr: ir.Expr, step: str) -> ir.Expr:
        return substitute(expr, {x: at(ir.Index(step))})

    last = ir.Op("-", (ir.Dim(inner), ir.Const(1)))
    gated = [v for v in state.indices if v != x and v in set(ir.index_vars(log_gate))]

    def cumulative(step: ir.Expr) -> ir.Read:
        indices = []
        for v in state.indices:
            if v == x:
                indices += [ir.Index(x1), step]
            elif v in gated:
                indices.append(ir.Index(v))
        return ir.Read(names["L"], tuple(indices))

    def plain(tensor: str, variables: tuple[str, ...]) -> ir.Read:
        return ir.Read(tensor, tuple(ir.Index(v) for v in variables))

    def left(indices: tuple[str, ...], *, within: bool = True) -> tuple[str, ...]:
        result: list[str] = []
        for v in indices:
            result += ([x1, x0] if within else [x1]) if v == x else [v]
        return tuple(result)

    names = {part: fresh(f"{name}_{part}") for part in ("L", "A", "KV", "C")}
    names["intra"] = fresh(f"{reader.tensor}_intra")
    names["inter"] = fresh(f"{reader.tensor}_inter")
    # A gate of 1 (plain causal linear attention: log-gates of 0) has no decays: no
    # cumulative log-gates, no exponentials of their differences (all exp(0)).
    # (A log-gate that reads a tensor is taken as decaying without asking sympy, whose
    # simplify compiles must not need: tests/test_compile_speed.py.)
    decayed = bool(ir.reads(log_gate)) or not is_zero(Algebra().to_sympy(log_gate))

    def decay(a: ir.Expr, b: ir.Expr | None = None) -> list[ir.Expr]:
        """[exp(a - b)] (exp(a) without b), or none where there is no decay."""
        if not decayed:
            return []
        return [ir.Op("exp", (a if b is None else ir.Op("-", (a, b)),))]
    causal = ir.Op("<=", (ir.Index(xk), ir.Index(x0)))
    inside = ir.Op("<", (at(ir.Index(xk)), ir.Dim(rank)))
    k_at = [chunk_of(f, xk) for f in keys]
    v_at = [chunk_of(f, xk) for f in values]
    q_at = [chunk_of(f, x0) for f in query]
    batch_left = [v for v in reader.indices if v != x and v not in vf]
    attention_left = tuple(batch_left) + (x1, x0, xk)
    # The state's ranks with the step replaced by the chunk, then the features.
    state_left = left(state.indices, within=False)
    einsums = [e for e in cascade.einsums if e.tensor not in (name, reader.tensor)]
    if decayed:
        einsums.append(Einsum(
            names["L"], left(tuple(v for v in state.indices if v == x or v in gated)),
            chunk_of(log_gate, xk), "sum", (xk,), ir.Op("and", (causal, inside)),
            explicit_reduction=True))
    einsums += [
        Einsum(names["A"], attention_left,
               ir.product(q_at + k_at + decay(cumulative(ir.Index(x0)),
                                              cumulative(ir.Index(xk)))),
               "sum", tuple(v for v in state.indices if v in kd), causal,
               explicit_reduction=True),
        Einsum(names["intra"], left(reader.indices),
               ir.product([plain(names["A"], attention_left)] + v_at), "sum", (xk,),
               explicit_reduction=True),
        Einsum(names["KV"], state_left,
               ir.product(decay(cumulative(last), cumulative(ir.Index(xk))) + k_at + v_at),
               "sum", (xk,), explicit_reduction=True),
        Einsum(names["C"], state_left,
               ir.Op("+", (ir.product(decay(cumulative(last)) + [plain(names["C"], state_left)]),
                           plain(names["KV"], state_left))),
               iterative=state_left.index(x1), init=ir.Const(0)),
        Einsum(names["inter"], left(reader.indices),
               ir.product(q_at + decay(cumulative(ir.Index(x0))) +
                          [plain(names["C"], state_left)]),
               "sum", tuple(v for v in state.indices if v in kd), explicit_reduction=True),
    ]
    position = tuple(ir.Op("//", (ir.Index(x), ir.Dim(inner))) if v == x1 else
                     ir.Op("%", (ir.Index(x), ir.Dim(inner))) if v == x0 else ir.Index(v)
                     for v in left(reader.indices))
    einsums.append(Einsum(reader.tensor, reader.indices, ir.Op("+", (
        ir.Read(names["intra"], position), ir.Read(names["inter"], position)))))
    result = assemble(cascade, einsums, ranks=ranks, splits=cascade.splits + (split,),
                      removable={name})
    words = f"{x} = {x1}*{inner} + {x0}, {inner} = {size} = {chunk}; {xk} a second step " \
            f"of the chunk"
    parts = ("L", "A", "intra", "KV", "C", "inter") if decayed else \
        ("A", "intra", "KV", "C", "inter")
    return result, tuple(names[p] for p in parts) + (reader.tensor,), words
