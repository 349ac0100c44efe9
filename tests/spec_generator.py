"""Random *valid* `.attn` specs for property-based tests.

`cascades()` is a hypothesis strategy of `GeneratedSpec`s: the spec text together with
the facts the generator knows about it (ranks, inputs, each Einsum's left-hand variables,
reduced variables, reduction operator, reads, filter, expression tree). Tests use those
facts as an independent account of the spec: `reference_evaluate` computes a cascade's
outputs with plain numpy broadcasting from the generator's own expression trees, never
looking at einsumattn's IR, so comparing it with `einsumattn.evaluate` checks the oracle.
The pass analysis' tests reuse the metadata (`GenEinsum.reduced`, `.reads`,
`GeneratedSpec.fully_reduces`) to derive pass counts on their own.

The grammar (LANGUAGE.md, docs/language.md):
  - 2-4 ranks from {B, P, M, E, F}; an index variable is the rank's lower-case name;
  - 1-3 inputs over subsets of the ranks, together covering every rank (so every size
    binds from an input shape); sometimes a rank has a fixed size in `dims`, sometimes
    a `param` with a default;
  - 1-5 steps, each either an Einsum defining a new tensor from earlier ones, or a
    recurrence `init T[.., 0] = c` / `T[.., x+1] = f(T[.., x], X[.., x])` followed by
    the final read `T[.., X]`. An Einsum uses:
      elementwise maps: + - * / (by 1 + |x|), unary minus, exp(tanh(..)), tanh,
        sigmoid, relu, elu, abs, sign, sqrt(1 + x*x), log(1 + |x|), tanh(x) ** k,
        max(a, b), min(a, b), where(COND, a, b), index variables, params and numbers
        as values;
      reductions: implicit sums over right-only variables, explicit sum[..], max[..],
        min[..];
      accesses with affine indices (`X[m + 1]`, `X[M - 1 - m]`, `X[m // 2]`,
        `X[(m + 1) % M]`, `X[2 * m]`): coordinates out of range are absent;
      filters: comparisons of index variables (`m <= p`, `p - m < 3`, `m + p < M`,
        some always false), of tensor reads (`X0[p, m] > 0`), with and / or / not;
      broadcast left variables that the right side does not read;
  - `output` of the last tensor, sometimes with one more.

The GeneratedSpec lists the Einsums in order; `GenEinsum.kind` tells maps, reductions,
recurrences and final reads apart.

Values stay bounded: exp only ever sees tanh(...) of something, nothing divides by a
value that can be zero, and a tensor that can hold +-inf (a max/min reduction whose
points may all be absent yields its identity) is only read through tanh or sigmoid.
`GenTensor.may_be_inf` says which outputs may legitimately be infinite.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from hypothesis import strategies as st

RANK_POOL = ("B", "P", "M", "E", "F")


# --------------------------------------------------------------------------- expressions
# A tiny expression tree of the generator's own (not einsumattn's AST). Each node knows
# how to render itself as `.attn` text and how to evaluate itself with numpy.

class Expr:
    prec = 9  # binding strength for rendering: atoms bind tightest

    def render(self) -> str:
        raise NotImplementedError

    def accesses(self) -> list["Access"]:
        return []


@dataclass(frozen=True)
class Num(Expr):
    value: float

    def render(self) -> str:
        if float(self.value).is_integer():
            return str(int(self.value))
        return repr(float(self.value))


@dataclass(frozen=True)
class Inf(Expr):
    negative: bool = False

    @property
    def prec(self):  # '-inf' is a unary minus
        return 3 if self.negative else 9

    def render(self) -> str:
        return "-inf" if self.negative else "inf"


@dataclass(frozen=True)
class Ref(Expr):
    """A scalar name used as a value: an index variable (`p`), a dim (`M`), a param."""

    name: str

    def render(self) -> str:
        return self.name


@dataclass(frozen=True)
class Access(Expr):
    """`T[i, j]`. Each index is an index expression as text: an index variable (`m`), a
    rank name (`M`: the final position of an iterative rank), or an affine expression of
    the position's own variable (`m + 1`, `M - 1 - m`, `m // 2`, `(m + 1) % M`), which
    is Python too: the reference evaluates it with Python's integer semantics."""

    tensor: str
    indices: tuple[str, ...]

    def render(self) -> str:
        if not self.indices:
            return self.tensor
        return f"{self.tensor}[{', '.join(self.indices)}]"

    def accesses(self):
        return [self]


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    operand: Expr
    prec = 3

    def render(self) -> str:
        inner = self.operand.render()
        if self.operand.prec < self.prec:
            inner = f"({inner})"
        return f"{self.op}{inner}"

    def accesses(self):
        return self.operand.accesses()


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr

    @property
    def prec(self):
        return {"+": 1, "-": 1, "**": 4}.get(self.op, 2)

    def render(self) -> str:
        left, right = self.left.render(), self.right.render()
        if self.op == "**":   # right-associative, binds tighter than unary minus
            if self.left.prec <= self.prec:
                left = f"({left})"
            if self.right.prec < 9:
                right = f"({right})"
            return f"{left} ** {right}"
        if self.left.prec < self.prec:
            left = f"({left})"
        # Python's left associativity: a right operand of equal strength needs brackets
        # (a - (b + c)); we also bracket `a + (b + c)` so the text matches the tree.
        if self.right.prec <= self.prec:
            right = f"({right})"
        return f"{left} {self.op} {right}"

    def accesses(self):
        return self.left.accesses() + self.right.accesses()


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]

    def render(self) -> str:
        return f"{self.fn}({', '.join(a.render() for a in self.args)})"

    def accesses(self):
        out = []
        for a in self.args:
            out += a.accesses()
        return out


@dataclass(frozen=True)
class Where(Expr):
    """`where(COND, a, b)`: needs COND and only the branch it picks."""

    cond: "Cond"
    a: Expr
    b: Expr

    def render(self) -> str:
        return f"where({self.cond.render()}, {self.a.render()}, {self.b.render()})"

    def accesses(self):
        return self.a.accesses() + self.b.accesses()


@dataclass(frozen=True)
class Cond:
    """A filter: comparisons of affine expressions of index variables, and/or/not."""

    kind: str                      # 'cmp' | 'and' | 'or' | 'not'
    op: str = ""                   # for 'cmp': < <= > >= == !=
    left: object = None            # for 'cmp': Expr; for and/or: Cond; for not: Cond
    right: object = None

    def render(self) -> str:
        if self.kind == "cmp":
            return f"{self.left.render()} {self.op} {self.right.render()}"
        if self.kind == "not":
            return f"not ({self.left.render()})"
        return f"({self.left.render()}) {self.kind} ({self.right.render()})"

    def variables(self) -> set[str]:
        """Names it mentions: index variables (in tensor indices too), dims, params."""
        if self.kind == "cmp":
            return _expr_refs(self.left) | _expr_refs(self.right)
        if self.kind == "not":
            return self.left.variables()
        return self.left.variables() | self.right.variables()

    def accesses(self) -> list[Access]:
        if self.kind == "cmp":
            return self.left.accesses() + self.right.accesses()
        if self.kind == "not":
            return self.left.accesses()
        return self.left.accesses() + self.right.accesses()


def _expr_refs(e: Expr) -> set[str]:
    if isinstance(e, Ref):
        return {e.name}
    if isinstance(e, Unary):
        return _expr_refs(e.operand)
    if isinstance(e, Binary):
        return _expr_refs(e.left) | _expr_refs(e.right)
    if isinstance(e, Call):
        out = set()
        for a in e.args:
            out |= _expr_refs(a)
        return out
    if isinstance(e, Where):
        return e.cond.variables() | _expr_refs(e.a) | _expr_refs(e.b)
    if isinstance(e, Access):
        out = set()
        for index in e.indices:
            out |= index_vars(index)
        return out
    return set()


# --------------------------------------------------------------------------- metadata

@dataclass(frozen=True)
class GenTensor:
    """A tensor of the generated spec: an input or the result of an Einsum."""

    name: str
    vars: tuple[str, ...]          # index variables, in access order
    is_input: bool = False
    may_be_absent: bool = False    # some points may be absent (returned as 0 if output)
    may_be_inf: bool = False       # some points may be +-inf (empty max/min reduction)
    iterative: str | None = None   # the iterative variable of a recurrence's tensor


@dataclass(frozen=True)
class GenEinsum:
    """One Einsum of the generated spec, as the generator built it.

    kind: 'map' (no reduction), 'reduce' (implicit or explicit reduction),
    'recurrence' (T[.., x+1] = f(T[.., x], X[.., x]); `init` gives position 0) or
    'final' (reads the last position of a recurrence, T[.., X]).
    """

    name: str
    lhs: tuple[str, ...]           # left-hand index variables (for a recurrence: 'x+1')
    reduced: tuple[str, ...]       # right-only variables, reduced
    op: str | None                 # 'sum' | 'max' | 'min' | None
    explicit: bool                 # the reduction operator is written (sum[..] etc.)
    reads: tuple[str, ...]         # tensors read (right side, then filter), unique
    rhs: Expr
    filter: Cond | None = None
    kind: str = "map"
    init: Expr | None = None       # for a recurrence: the value at position 0
    iter_var: str | None = None    # for a recurrence: the iterative variable

    @property
    def lhs_vars(self) -> tuple[str, ...]:
        """The left-hand index variables, `x+1` read as `x`."""
        return tuple(v.split("+")[0] for v in self.lhs)

    @property
    def accesses(self) -> list[Access]:
        return self.rhs.accesses()

    def text(self) -> str:
        lhs = f"{self.name}[{', '.join(self.lhs)}]" if self.lhs else self.name
        rhs = self.rhs.render()
        if self.explicit:
            rhs = f"{self.op}[{', '.join(self.reduced)}] {rhs}"
        line = f"{lhs} = {rhs}"
        if self.filter is not None:
            line += f" where {self.filter.render()}"
        if self.kind == "recurrence":
            init_idx = ["0" if v.endswith("+1") else v for v in self.lhs]
            line = f"init {self.name}[{', '.join(init_idx)}] = {self.init.render()}\n" + line
        return line


@dataclass(frozen=True)
class GeneratedSpec:
    text: str
    name: str
    ranks: tuple[str, ...]                       # declared ranks, in order
    fixed: Mapping[str, int]                     # ranks with a size fixed in `dims`
    params: Mapping[str, Expr]                   # param name -> default expression
    inputs: tuple[GenTensor, ...]
    einsums: tuple[GenEinsum, ...]
    tensors: Mapping[str, GenTensor]             # every tensor, inputs included
    outputs: tuple[str, ...]

    # ---- facts for later tests -------------------------------------------------------
    def fully_reduces(self, einsum: GenEinsum, rank: str) -> bool:
        """Does `einsum` fully reduce `rank` (its variable is reduced over the whole
        rank)? Recurrences do not reduce; their iterative rank is walked in order."""
        return einsum.kind in ("map", "reduce") and rank.lower() in einsum.reduced

    def reads_rank(self, einsum: GenEinsum, rank: str) -> bool:
        v = rank.lower()
        return v in einsum.lhs_vars or v in einsum.reduced or any(
            v in index_vars(i) for a in einsum.accesses for i in a.indices)

    def einsum(self, name: str) -> GenEinsum:
        return next(e for e in self.einsums if e.name == name)

    def output_shape(self, name: str, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[v.upper()] for v in self.tensors[name].vars)

    @property
    def has_filters(self) -> bool:
        return any(e.filter is not None for e in self.einsums)

    @property
    def uses_reduce_ops(self) -> set:
        return {e.op for e in self.einsums if e.op}


def render(spec: GeneratedSpec, comments: bool = False) -> str:
    """The `.attn` text of a `GeneratedSpec`, rendered again from its parts (so a test
    may edit them with `dataclasses.replace` and render the result)."""
    return _render_spec(spec.name, spec.ranks, spec.fixed, spec.params, spec.inputs,
                        spec.einsums, spec.outputs, comments)


def _render_spec(name, ranks, fixed, params, inputs, einsums, outputs, comments) -> str:
    lines = []
    if comments:
        lines.append("# generated by tests/spec_generator.py")
    lines.append(f"attention {name}")
    lines.append("")
    dims = ", ".join(f"{r} = {fixed[r]}" if r in fixed else r for r in ranks)
    lines.append(f"dims  {dims}")
    decls = [f"{t.name}[{', '.join(t.vars)}]" for t in inputs]
    lines.append("input " + ", ".join(decls))
    for pname, pexpr in params.items():
        lines.append(f"param {pname} = {pexpr.render()}")
    lines.append("")
    for e in einsums:
        text = e.text()
        if comments and e.kind == "reduce":
            text += f"   # reduces {', '.join(e.reduced)}"
        lines.append(text)
    lines.append("")
    lines.append("output " + ", ".join(outputs))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- strategy

UNARY_FNS = ("tanh", "sigmoid", "relu", "abs")


@st.composite
def _leaf(draw, access: Access, t: GenTensor, scope_vars: Sequence[str],
          params: Sequence[str]) -> Expr:
    """An access, wrapped so that it is finite even if the tensor may hold +-inf."""
    e: Expr = access
    if t.may_be_inf:
        e = Call(draw(st.sampled_from(("tanh", "sigmoid"))), (e,))
    return e


@st.composite
def _combine(draw, leaves: list[Expr], scope_vars: Sequence[str], params: Sequence[str],
             products_only: bool) -> Expr:
    """Combine leaves into one bounded-growth expression."""
    if products_only:
        e = leaves[0]
        for leaf in leaves[1:]:
            e = Binary("*", e, leaf)
        return e
    items = list(leaves)
    # Wrap some leaves in maps.
    for i, leaf in enumerate(items):
        choice = draw(st.integers(0, 12))
        if choice == 0:
            items[i] = Call(draw(st.sampled_from(UNARY_FNS)), (leaf,))
        elif choice == 1:
            items[i] = Call("exp", (Call("tanh", (leaf,)),))
        elif choice == 2:
            items[i] = Unary("-", leaf)
        elif choice == 3:
            items[i] = Binary("*", Num(draw(st.sampled_from((0.5, 2, 0.25, 3)))), leaf)
        elif choice == 4:
            # Functions with a restricted domain, on arguments inside it; bounded powers.
            form = draw(st.integers(0, 4))
            if form == 0:
                items[i] = Call("sqrt", (Binary("+", Num(1), Binary("*", leaf, leaf)),))
            elif form == 1:
                items[i] = Call("log", (Binary("+", Num(1), Call("abs", (leaf,))),))
            elif form == 2:
                items[i] = Binary("**", Call("tanh", (leaf,)),
                                  Num(draw(st.sampled_from((2, 3)))))
            else:
                items[i] = Call(("elu", "sign")[form - 3], (leaf,))
        elif choice in (5, 6) and scope_vars:
            # where(COND, a, b) over index variables.
            a, b = draw(st.sampled_from(scope_vars)), draw(st.sampled_from(scope_vars))
            op = draw(st.sampled_from(("<", "<=", "==", "!=")))
            cond = Cond("cmp", op, Ref(a), Ref(b) if a != b else Num(1))
            other = draw(st.sampled_from((Num(0), Unary("-", leaf), Call("tanh", (leaf,)))))
            items[i] = Where(cond, leaf, other)
    # Sometimes an extra scalar term: a constant, a param, or an index variable as a value.
    extra = draw(st.integers(0, 7))
    if extra == 0:
        items.append(Num(draw(st.sampled_from((1, 0.5, 2.0, 0.125)))))
    elif extra == 1 and params:
        items.append(Ref(draw(st.sampled_from(list(params)))))
    elif extra == 2 and scope_vars:
        v = draw(st.sampled_from(list(scope_vars)))
        items.append(Binary("*", Num(0.25), Ref(v)))
    while len(items) > 1:
        i = draw(st.integers(0, len(items) - 2))
        a, b = items[i], items[i + 1]
        kind = draw(st.integers(0, 5))
        if kind <= 1:
            node = Binary("*", a, b)
        elif kind == 2:
            node = Binary("+", a, b)
        elif kind == 3:
            node = Binary("-", a, b)
        elif kind == 4:
            node = Call(draw(st.sampled_from(("max", "min"))), (a, b))
        else:
            # Division only by something that is at least 1.
            node = Binary("/", a, Binary("+", Num(1), Call("abs", (b,))))
        items[i:i + 2] = [node]
    e = items[0]
    if draw(st.integers(0, 7)) == 0:
        e = Call(draw(st.sampled_from(UNARY_FNS)), (e,))
    return e


@st.composite
def _filter(draw, scope_vars: Sequence[str],
            readable: Sequence[GenTensor] = ()) -> Cond | None:
    """A filter over the Einsum's index variables, sometimes reading a tensor over them
    (`where X0[p, m] > 0`, `where T1[m + 1] <= 0`). Some filters remove every point."""
    scope = list(scope_vars)
    if not scope:
        return None

    def cmp():
        form = draw(st.integers(0, 6))
        if form == 6 and readable:
            t = draw(st.sampled_from(list(readable)))
            indices = t.vars
            if draw(st.booleans()):
                k = draw(st.integers(0, len(t.vars) - 1))
                indices = t.vars[:k] + (f"{t.vars[k]} + 1",) + t.vars[k + 1:]
            read: Expr = Access(t.name, indices)
            if t.may_be_inf:
                read = Call("tanh", (read,))
            return Cond("cmp", draw(st.sampled_from(("<", "<=", ">", ">="))), read, Num(0))
        a = Ref(draw(st.sampled_from(scope)))
        b = Ref(draw(st.sampled_from(scope)))
        op = draw(st.sampled_from(("<", "<=", ">", ">=", "==", "!=")))
        if form == 0 and a != b:
            return Cond("cmp", op, a, b)                                  # m <= p
        if form == 1 and a != b:
            return Cond("cmp", op, Binary("-", a, b), Num(draw(st.integers(-2, 3))))
        if form == 2:
            return Cond("cmp", "<", a, Num(0))                           # always false
        if form == 3:
            return Cond("cmp", op, a, Num(draw(st.integers(0, 4))))     # m < 3
        if form == 4:
            return Cond("cmp", op, Binary("+", a, b), Ref(a.name.upper()))  # m + p < M
        return Cond("cmp", "<=", a, b)

    c = cmp()
    shape = draw(st.integers(0, 5))
    if shape == 0:
        c = Cond("and", left=c, right=cmp())
    elif shape == 1:
        c = Cond("or", left=c, right=cmp())
    elif shape == 2:
        c = Cond("not", left=c)
    return c


def index_vars(index: str) -> set[str]:
    """The index variables (lower-case names) an index expression uses."""
    return set(re.findall(r"\b[a-z][a-z0-9_]*\b", index))


def _ordered(vars_: set, order: Sequence[str]) -> list:
    return [v for v in order if v in vars_]


@st.composite
def cascades(draw, *, min_steps: int = 1, max_steps: int = 5, sum_only: bool = False,
             allow_filters: bool = True, reduce_filters: bool = True,
             allow_recurrence: bool = True, allow_shifts: bool = True,
             comments: bool | None = None
             ) -> GeneratedSpec:
    """A random valid cascade.

    sum_only: every Einsum is a product of accesses, reduced (implicitly or with an
    explicit `sum[..]`) or not; no maps, constants, params, filters or recurrences. Such
    a cascade is a chain of plain einsums (`numpy.einsum` can compute every step).
    allow_shifts: some accesses read a neighbour, `X[m + 1]`, `X[p - 2]`: coordinates
    outside the rank are absent.
    reduce_filters: filters may stand on reducing Einsums too; else only on Einsums
    without a reduction, where every reading of LANGUAGE.md agrees on their meaning.
    """
    if sum_only:
        allow_filters = allow_recurrence = allow_shifts = False
    n_ranks = draw(st.integers(2, 4))
    ranks = tuple(draw(st.permutations(RANK_POOL))[:n_ranks])
    if draw(st.booleans()):
        ranks = tuple(r for r in RANK_POOL if r in ranks)  # often in the usual order
    variables = [r.lower() for r in ranks]

    fixed = {}
    if not sum_only and draw(st.integers(0, 5)) == 0:
        fixed[draw(st.sampled_from(ranks))] = draw(st.integers(1, 4))

    params: dict[str, Expr] = {}
    if not sum_only and draw(st.integers(0, 3)) == 0:
        r = draw(st.sampled_from(ranks))
        params["scale"] = draw(st.sampled_from(
            (Binary("/", Num(1), Call("sqrt", (Ref(r),))), Num(0.5))))

    # Inputs: subsets of the ranks that together cover every rank.
    n_inputs = draw(st.integers(1, 3))
    subsets = []
    for _ in range(n_inputs):
        subsets.append(set(draw(st.lists(st.sampled_from(variables), min_size=1,
                                         max_size=len(variables), unique=True))))
    covered = set().union(*subsets)
    for v in variables:
        if v not in covered:
            subsets[draw(st.integers(0, n_inputs - 1))].add(v)
    inputs = []
    for i, s in enumerate(subsets):
        order = _ordered(s, variables)
        if draw(st.integers(0, 3)) == 0:
            order = list(draw(st.permutations(order)))
        inputs.append(GenTensor(f"X{i}", tuple(order), is_input=True))
    tensors: dict[str, GenTensor] = {t.name: t for t in inputs}
    available = [t.name for t in inputs]    # tensors later Einsums may read
    defined: list[str] = []                 # tensors that may be outputs

    einsums: list[GenEinsum] = []
    n_steps = draw(st.integers(min_steps, max_steps))
    counter = 0
    for step in range(n_steps):
        counter += 1
        # -------------------------------------------------------------- recurrence
        candidates = [n for n in available if tensors[n].vars]
        if allow_recurrence and candidates and draw(st.integers(0, 6)) == 0:
            src = tensors[draw(st.sampled_from(candidates))]
            it = draw(st.sampled_from(list(src.vars)))
            name = f"R{counter}"
            lhs = tuple(f"{v}+1" if v == it else v for v in src.vars)
            prev = Access(name, src.vars)
            x: Expr = Access(src.name, src.vars)
            if src.may_be_inf:
                x = Call("tanh", (x,))
            form = draw(st.integers(0, 2))
            if form == 0:
                decay = draw(st.sampled_from((0.5, 0.25, 0.9)))
                rhs = Binary("+", Binary("*", prev, Num(decay)), x)
                init: Expr = Num(draw(st.sampled_from((0, 1))))
            elif form == 1:
                rhs = Call("max", (prev, x))                     # running max
                init = Inf(negative=True)
            else:
                rhs = Binary("+", Binary("*", prev, Call("sigmoid", (x,))), Call("tanh", (x,)))
                init = Num(0)
            rec = GenEinsum(name, lhs, (), None, False, (name, src.name), rhs,
                            kind="recurrence", init=init, iter_var=it)
            rec_t = GenTensor(name, src.vars, may_be_absent=src.may_be_absent,
                              iterative=it)
            tensors[name] = rec_t
            einsums.append(rec)
            # The final read T[.., X]: a new tensor over the other variables.
            fname = f"T{counter}"
            others = tuple(v for v in src.vars if v != it)
            final_access = Access(name, tuple(it.upper() if v == it else v
                                              for v in src.vars))
            fin = GenEinsum(fname, others, (), None, False, (name,), final_access,
                            kind="final")
            tensors[fname] = GenTensor(fname, others, may_be_absent=src.may_be_absent)
            einsums.append(fin)
            available.append(fname)
            defined.append(fname)
            continue

        # -------------------------------------------------------------- plain Einsum
        name = f"T{counter}"
        n_reads = draw(st.integers(1, 3))
        reads = [draw(st.sampled_from(available)) for _ in range(n_reads)]
        # Prefer reading the most recent tensor, so cascades are chains, not fans.
        if defined and draw(st.integers(0, 2)) > 0 and defined[-1] not in reads:
            reads[0] = defined[-1]
        access_vars = set()
        for r in reads:
            access_vars |= set(tensors[r].vars)
        # Left-hand variables: a subset of the accessed ones, sometimes plus a broadcast.
        lhs_set = set(v for v in _ordered(access_vars, variables) if draw(st.booleans()))
        if not sum_only and draw(st.integers(0, 5)) == 0:
            extra = [v for v in variables if v not in access_vars]
            if extra:
                lhs_set.add(draw(st.sampled_from(extra)))
        lhs = _ordered(lhs_set, variables)
        if len(lhs) > 1 and draw(st.integers(0, 3)) == 0:
            lhs = list(draw(st.permutations(lhs)))
        reduced = tuple(_ordered(access_vars - lhs_set, variables))

        if reduced:
            if sum_only:
                op, explicit = "sum", draw(st.booleans())
            else:
                choice = draw(st.integers(0, 4))
                op = ("sum", "sum", "sum", "max", "min")[choice]
                explicit = op != "sum" or draw(st.booleans())
            kind = "reduce"
        else:
            op, explicit, kind = None, False, "map"

        scope = list(lhs) + list(reduced)
        shifted_reads = False
        leaves = []
        for r in reads:
            t = tensors[r]
            indices = t.vars
            if allow_shifts and t.vars and draw(st.integers(0, 5)) == 0:
                # Affine indices; an out-of-range coordinate is absent: `X[m + 1]`.
                k = draw(st.integers(0, len(t.vars) - 1))
                v, V = t.vars[k], t.vars[k].upper()
                shifted = draw(st.sampled_from((
                    f"{v} + 1", f"{v} + 2", f"{v} - 1", f"{v} - 2", f"{V} - 1 - {v}",
                    f"{v} // 2", f"({v} + 1) % {V}", f"2 * {v}", f"{v} - {V} // 2")))
                indices = t.vars[:k] + (shifted,) + t.vars[k + 1:]
                shifted_reads = True
            leaves.append(draw(_leaf(Access(r, indices), t, scope, list(params))))
        rhs = draw(_combine(leaves, scope, list(params), products_only=sum_only))

        filt = None
        if allow_filters and (kind == "map" or reduce_filters) \
                and draw(st.integers(0, 3)) == 0:
            readable = [tensors[n] for n in available
                        if tensors[n].vars and set(tensors[n].vars) <= set(scope)]
            filt = draw(_filter(scope, readable))
            if filt is not None:
                reads = reads + [a.tensor for a in filt.accesses()]

        reads_absent = shifted_reads or any(tensors[r].may_be_absent for r in reads)
        if kind == "map":
            may_absent = reads_absent or filt is not None
            may_inf = False
        else:
            # A reduction skips absent terms and yields its identity when none remain,
            # but a condition on left variables alone makes the left point absent.
            may_absent = filt is not None or reads_absent
            may_inf = op in ("max", "min") and (filt is not None or reads_absent)
        # Growth control: a max/min reduction of nothing is +-inf; a sum never is.
        tensors[name] = GenTensor(name, tuple(lhs), may_be_absent=may_absent,
                                  may_be_inf=may_inf)
        unique_reads = tuple(dict.fromkeys(reads))
        einsums.append(GenEinsum(name, tuple(lhs), reduced, op, explicit, unique_reads,
                                 rhs, filt, kind))
        available.append(name)
        defined.append(name)

    outputs = [defined[-1]]
    if len(defined) > 1 and draw(st.integers(0, 3)) == 0:
        other = draw(st.sampled_from(defined[:-1]))
        outputs.insert(draw(st.integers(0, 1)), other)
    if comments is None:
        comments = draw(st.booleans())
    name = f"gen_{len(einsums)}e_{''.join(ranks).lower()}"
    text = _render_spec(name, ranks, fixed, params, inputs, einsums, outputs, comments)
    return GeneratedSpec(text, name, ranks, dict(fixed), dict(params), tuple(inputs),
                         tuple(einsums), dict(tensors), tuple(outputs))


@st.composite
def contractions(draw) -> GeneratedSpec:
    """A single-Einsum contraction `Y[lhs] = A[..] * B[..] (* C[..])`: a plain einsum."""
    return draw(cascades(min_steps=1, max_steps=1, sum_only=True))


@st.composite
def sizes_for(draw, spec: GeneratedSpec, lo: int = 1, hi: int = 5) -> dict[str, int]:
    """Sizes for every rank of `spec` (fixed ranks keep their size)."""
    return {r: spec.fixed.get(r) or draw(st.integers(lo, hi)) for r in spec.ranks}


def random_inputs(spec: GeneratedSpec, sizes: Mapping[str, int], seed: int,
                  scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-scale, scale,
                                size=tuple(sizes[v.upper()] for v in t.vars))
            for t in spec.inputs}


# --------------------------------------------------------------------------- reference
# An independent evaluator of generated specs: numpy broadcasting over each Einsum's
# iteration space, reading only the generator's trees, never einsumattn's IR.
#
# Absent points (LANGUAGE.md "Absent points", docs/language.md 2.7-2.8) are modelled as
# *conditions*: boolean masks over the iteration space, each tagged with the index
# variables it depends on. They come from filter conjuncts, from coordinates outside a
# tensor's extent (`X[m + 1]`), and from reading an absent point of another tensor.
#   - Without a reduction, a point is present where every condition holds.
#   - With a reduction, a condition that mentions no reduced variable decides the left
#     point itself (false: the point is absent; so `QK[p, m] = Q[p, e] * K[m, e]
#     where m <= p` masks scores). The others only remove terms of the reduction; a
#     reduction left with no term yields its identity (0, -inf, +inf), present.
# The variables of each cause (docs/language.md 2.8): a filter conjunct, those it
# mentions; an out-of-range coordinate, those in it; a read of an absent point, all of
# the read's; `where(c, a, b)` with any cause inside, one condition on every index
# variable written in the call.

class _Env:
    def __init__(self, spec: GeneratedSpec, sizes: Mapping[str, int], axes: Sequence[str],
                 values: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 params: Mapping[str, float], fixed: Mapping[str, int] | None = None):
        self.spec, self.sizes, self.axes = spec, sizes, list(axes)
        self.values, self.params = values, params
        self.fixed = dict(fixed or {})   # variables held at one value (recurrence steps)

    def shape_of(self, v):
        s = [1] * len(self.axes)
        s[self.axes.index(v)] = self.sizes[v.upper()]
        return tuple(s)

    def coord(self, v: str) -> np.ndarray:
        """The integer values of index variable v, broadcastable over the space."""
        if v in self.fixed:
            return np.array(self.fixed[v])
        return np.arange(self.sizes[v.upper()]).reshape(self.shape_of(v))

    def access(self, a: Access):
        """-> (values, conditions) of a read `T[...]`."""
        val, present = self.values[a.tensor]
        coords, used, conditions = [], set(), []
        inside_all = np.array(True)
        for idx, extent in zip(a.indices, val.shape):
            names = index_vars(idx)
            scope = {n: self.coord(n) for n in names}
            scope.update({r: int(self.sizes[r]) for r in self.spec.ranks})
            coord = np.asarray(eval(idx, {"__builtins__": {}}, scope))  # Python ints
            used |= names
            inside = (coord >= 0) & (coord < extent)
            if not np.all(inside):
                conditions.append((inside, frozenset(names)))
                inside_all = inside_all & inside
            coords.append(np.clip(coord, 0, extent - 1))
        coords = np.broadcast_arrays(*coords) if coords else []
        if coords:
            value = val[tuple(coords)]
            src_present = present[tuple(coords)]
        else:
            value, src_present = val[()], present[()]
        # Absent points of the source: a condition on every variable the read uses
        # (out-of-range points are the range condition's business, not this one's).
        src_present = src_present | ~inside_all
        if not np.all(src_present):
            conditions.append((src_present, frozenset(used)))
        return value, conditions

    def ref(self, name: str):
        if name in self.axes or name in self.fixed:
            return self.coord(name).astype(float)
        if name in self.sizes:
            return np.array(float(self.sizes[name]))
        return np.array(float(self.params[name]))


def _ev(e: Expr, env: _Env):
    """-> (values, conditions) with values broadcastable to the iteration space."""
    if isinstance(e, Num):
        return np.array(float(e.value)), []
    if isinstance(e, Inf):
        return np.array(-math.inf if e.negative else math.inf), []
    if isinstance(e, Ref):
        return env.ref(e.name), []
    if isinstance(e, Access):
        return env.access(e)
    if isinstance(e, Unary):
        v, c = _ev(e.operand, env)
        return -v, c
    if isinstance(e, Binary):
        a, ca = _ev(e.left, env)
        b, cb = _ev(e.right, env)
        with np.errstate(all="ignore"):
            r = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide,
                 "%": np.mod, "//": np.floor_divide, "**": np.power}[e.op](a, b)
        return r, ca + cb
    if isinstance(e, Call):
        args = [_ev(a, env) for a in e.args]
        conditions = [c for _, cs in args for c in cs]
        vals = [v for v, _ in args]
        with np.errstate(all="ignore"):
            fn = {
                "exp": np.exp, "tanh": np.tanh, "abs": np.abs, "sqrt": np.sqrt,
                "log": np.log, "sign": np.sign,
                "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
                "relu": lambda x: np.maximum(x, 0.0),
                "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
                "max": np.maximum, "min": np.minimum,
            }[e.fn]
            return fn(*vals), conditions
    if isinstance(e, Where):
        # where(c, a, b) needs c and only the branch it picks. A cause of absence in the
        # picked branch applies where that branch is picked, and depends on its own
        # variables and on those c mentions (which branch is picked depends on them).
        c, cc = _cond(e.cond, env)
        c = np.asarray(c, dtype=bool)
        a, ca = _ev(e.a, env)
        b, cb = _ev(e.b, env)
        if not (cc or ca or cb):
            return np.where(c, a, b), []
        # One condition for the whole call, on every index variable written in it.
        mask = np.ones((), dtype=bool)
        for m, _ in cc:
            mask = mask & m
        for m, _ in ca:
            mask = mask & np.where(c, m, True)
        for m, _ in cb:
            mask = mask & np.where(c, True, m)
        # (_expr_refs names index variables, in indices too; lower-case: not dims.)
        names = e.cond.variables() | _expr_refs(e.a) | _expr_refs(e.b)
        return np.where(c, a, b), [(mask, frozenset(v for v in names if v.islower()))]
    raise AssertionError(f"cannot evaluate {e!r}")


def _cond(c: Cond, env: _Env):
    """-> (truth, conditions): where the condition holds, and the causes of absence of
    what it reads (`and`, `or`, `not` need all their operands: no short-circuit)."""
    if c.kind == "cmp":
        a, ca = _ev(c.left, env)
        b, cb = _ev(c.right, env)
        truth = {"<": np.less, "<=": np.less_equal, ">": np.greater,
                 ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}[c.op](a, b)
        return truth, ca + cb
    if c.kind == "not":
        truth, cs = _cond(c.left, env)
        return ~truth, cs
    (ta, ca), (tb, cb) = _cond(c.left, env), _cond(c.right, env)
    return (ta & tb if c.kind == "and" else ta | tb), ca + cb


def _holds(c: Cond, env: _Env):
    """Where the condition is true and present."""
    truth, conditions = _cond(c, env)
    for mask, _ in conditions:
        truth = truth & mask
    return truth


def _conjuncts(c: Cond) -> list[Cond]:
    if c.kind == "and":
        return _conjuncts(c.left) + _conjuncts(c.right)
    return [c]


def _param_values(spec: GeneratedSpec, sizes: Mapping[str, int]) -> dict[str, float]:
    out = {}
    for name, expr in spec.params.items():
        env = _Env(spec, sizes, [], {}, out)
        out[name] = float(_ev(expr, env)[0])
    return out


def _einsum_points(spec, e: GenEinsum, kept: Sequence[str], values, sizes, params,
                   fixed=None):
    """Evaluate Einsum e over kept + reduced variables (`fixed` ones held at a value);
    reduce; return (values, present) over `kept`."""
    axes = list(kept) + list(e.reduced)
    full = tuple(sizes[v.upper()] for v in axes)
    env = _Env(spec, sizes, axes, values, params, fixed)
    val, conditions = _ev(e.rhs, env)
    if e.filter is not None:
        variables = set(axes) | set(env.fixed)
        for c in _conjuncts(e.filter):
            # False or absent: a cause depending on the variables the conjunct mentions,
            # those in the indices of the tensors it reads included.
            conditions.append((_holds(c, env), frozenset(c.variables() & variables)))
    val = np.broadcast_to(np.asarray(val, dtype=np.float64), full)
    term = np.ones(full, dtype=bool)
    point = np.ones(full, dtype=bool)
    for mask, variables in conditions:
        mask = np.broadcast_to(mask, full)
        term = term & mask
        if not variables & set(e.reduced):
            point = point & mask
    if not e.reduced:
        return np.array(val), term
    red_axes = tuple(range(len(kept), len(axes)))
    identity = {"sum": 0.0, "max": -math.inf, "min": math.inf}[e.op]
    fn = {"sum": np.sum, "max": np.max, "min": np.min}[e.op]
    reduced = fn(np.where(term, val, identity), axis=red_axes)
    return np.asarray(reduced, dtype=np.float64), point.all(axis=red_axes)


def reference_evaluate(spec: GeneratedSpec, inputs: Mapping[str, np.ndarray],
                       sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The outputs of `spec` computed from the generator's own trees (float64); absent
    output points are 0."""
    params = _param_values(spec, sizes)
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in spec.inputs:
        a = np.asarray(inputs[t.name], dtype=np.float64)
        values[t.name] = (a, np.ones(a.shape, dtype=bool))
    for e in spec.einsums:
        if e.kind == "recurrence":
            values[e.name] = _recurrence(spec, e, values, sizes, params)
        else:
            values[e.name] = _einsum_points(spec, e, e.lhs_vars, values, sizes, params)
    return {name: np.where(values[name][1], values[name][0], 0.0) for name in spec.outputs}


def _recurrence(spec, e: GenEinsum, values, sizes, params):
    """T[.., x+1] = f(T[.., x], X[.., x]) for x = 0 .. X-1, from `init` at 0."""
    t = spec.tensors[e.name]
    it = e.iter_var
    axis = t.vars.index(it)
    n = sizes[it.upper()]
    shape = [sizes[v.upper()] for v in t.vars]
    shape[axis] = n + 1
    val = np.zeros(shape)
    present = np.ones(shape, dtype=bool)
    init, _ = _ev(e.init, _Env(spec, sizes, [], {}, params))
    index = [slice(None)] * len(shape)
    index[axis] = 0
    val[tuple(index)] = init
    others = [v for v in t.vars if v != it]
    store = dict(values)
    for x in range(n):
        store[e.name] = (val, present)
        v, p = _einsum_points(spec, e, others, store, sizes, params, fixed={it: x})
        index[axis] = x + 1
        full = tuple(sizes[o.upper()] for o in others)
        val[tuple(index)] = np.broadcast_to(v, full)
        present[tuple(index)] = np.broadcast_to(p, full)
    return val, present


def einsum_reference(spec: GeneratedSpec, inputs: Mapping[str, np.ndarray],
                     sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The outputs of a `sum_only` cascade, each Einsum computed with `numpy.einsum`
    from the metadata alone (reads and left-hand variables)."""
    values = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
    for e in spec.einsums:
        assert e.op in ("sum", None) and e.filter is None and e.kind in ("map", "reduce")
        operands, subs = [], []
        for a in e.accesses:
            operands.append(values[a.tensor])
            subs.append("".join(a.indices))
        present_lhs = [v for v in e.lhs if any(v in s for s in subs)]
        result = np.einsum(",".join(subs) + "->" + "".join(present_lhs), *operands)
        # Left-hand variables read by no operand broadcast.
        for i, v in enumerate(e.lhs):
            if v not in present_lhs:
                result = np.expand_dims(result, i)
        shape = tuple(sizes[v.upper()] for v in e.lhs)
        values[e.name] = np.broadcast_to(result, shape)
    return {name: values[name] for name in spec.outputs}
