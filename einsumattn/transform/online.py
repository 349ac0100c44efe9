"""Rule 3, the online max-shift: FuseMax's Cascade 4 -> Cascade 5 (FlashAttention-2).

A max reduction G[r] = max[m] X over the streamed rank M, read by exp(A - G) inside sums
over M, costs a pass: the sums cannot start before G is known. The rule splits M into
tiles (m = m1*M0 + m0) and replaces G, inside the sums, by the running max over the
tiles seen so far:

    LG[r, m1]    = max[m0] X                               local max of tile m1
    RG[r, m1+1]  = max(RG[r, m1], LG[r, m1])               running max, RG[r, 0] = -inf
    SG[r, m1]    = RG[r, m1+1] (0 while it is -inf)        the shift of tile m1
    CG[r, m1]    = exp(RG[r, m1] - SG[r, m1])              rescale factor of tile m1
                   (0 while RG[r, m1] is -inf: nothing to rescale yet)
    for each sum S = sum[m] exp(A - G) * W :
    LS[.., m1]   = sum[m0] exp(A - SG[r, m1]) * W          the tile's contribution
    RS[.., m1+1] = LS[.., m1] + RS[.., m1] * CG[r, m1]     running sum, RS[.., 0] = 0
    S            = RS[.., M1]                              exact once every tile is in

and G = RG[r, M1] for any other reader. Tensors between G and the sums (SN = exp(QK -
GM)) get a per-tile copy computed against the running max; a reader of such a copy must
scale with it, which sympy checks for each reader as the identity

    body(G := g, T := t) * exp(g - y) = body(G := y, T := t * exp(g - y))

(the reader is homogeneous of degree 1 in the rescale factor). A reader for which it
fails (clipped softmax: min/max after normalisation) keeps reading the exact values,
recomputed after the loop, and the report names it.

Rows whose every point so far is absent (a masked row or tile) or -inf (an additive -inf
mask) keep RG = -inf, where exp(RG[m1] - RG[m1+1]) would be exp(-inf + inf) = NaN. The
exponentials therefore use a shift SG = where(RG == -inf, 0, RG) (any shift is exact when
the rescale factors use the same one; the max only keeps exp in range), and the rescale
factor is 0 while RG[r, m1] is -inf: no point has been summed yet, since the rule
requires every point of a sum to be a point of the max (a max with a narrower filter than
its sums is blocked). Running sums of an empty row stay 0 (the empty sum), never NaN.
"""

from __future__ import annotations

import math

import sympy

from ..analysis.passes import rank_variables
from ..ir import Cascade, Einsum, Rank, Split
from ..ir import expr as ir
from ..ir.build import size_symbol
from .algebra import Algebra, is_zero, replace_reads, substitute
from .edit import assemble, fresh_name, with_body
from .steps import Blocked, Step

ONLINE = "online max-shift"
SPLIT = "split the streamed rank"
NEG_INF = ir.Op("neg", (ir.Const(math.inf),))


def _next(var: str) -> ir.Expr:
    return ir.Op("+", (ir.Index(var), ir.Const(1)))


# ------------------------------------------------------------------ split
def split_rank(cascade: Cascade, rank: str, tile: int):
    """Every Einsum that traverses `rank` iterates its two parts instead: reads of
    inputs at m become m1*M0 + m0, intermediates indexed by m get two ranks (M1, M0).
    Returns (cascade, outer var, inner var) or a Blocked."""
    if any(s.parent == rank or rank in (s.outer, s.inner) for s in cascade.splits):
        return Blocked(SPLIT, rank, f"{rank} is already split in the spec")
    for output in cascade.outputs:
        if rank in cascade.tensors[output].ranks:
            return Blocked(SPLIT, output, f"the output {output} is indexed by {rank}, "
                                          f"so its shape would change")
    var = cascade.ranks[rank].var
    outer = fresh_name(cascade, f"{rank}1")
    inner = fresh_name(cascade, f"{rank}0", {outer})
    outer_var, inner_var = outer.lower(), inner.lower()
    parent = cascade.ranks[rank]
    ranks = dict(cascade.ranks)
    inner_size = sympy.Symbol(inner, integer=True, positive=True)
    ranks[inner] = Rank(inner, inner_size, None, rank)
    ranks[outer] = Rank(outer, sympy.ceiling(parent.size / inner_size), None, rank)
    position = ir.Op("+", (ir.Op("*", (ir.Index(outer_var), ir.Dim(inner))),
                           ir.Index(inner_var)))
    # A tensor over the ranks of one input indexed by the rank (cosine attention's key
    # norms SK[b, h, m], over K's ranks) is a per-key value computed from the inputs: it
    # keeps the whole rank and is read at m1*M0 + m0 like an input, so that a kernel of
    # its own can compute it before the loop (a split copy would be absent in the last
    # tile's padding and could not cross a cut).
    # Only where the scores are a matrix (a reader of it also reads a tensor over the
    # rank and another: cosine's S[p, m] reads QK[p, m]); where the scores themselves are
    # per key (Aaren: one query per head), the spec's passes are over a vector, cheaper
    # than the online form's rescaled tiles (sm_90a: 822 instructions in the three
    # passes' loops against 1253 and an 84 B spill in the one loop;
    # benchmarks/results/sm90-per-key-2026-12-01-session32.txt), and the split stays.
    def matrix(name: str) -> bool:
        ranks = cascade.tensors[name].ranks
        return rank in ranks and not cascade.has_input_over(ranks)

    kept: set[str] = set()
    for einsum in cascade.einsums:
        own = cascade.tensors[einsum.tensor].ranks
        readers = [cascade.einsum(r) for r in cascade.consumers(einsum.tensor)]
        if rank in own and einsum.iterative is None and cascade.has_input_over(own) and \
                all(cascade.tensors[r].is_input or r in kept for r in einsum.reads) and \
                readers and all(any(matrix(r) for r in e.reads) for e in readers):
            kept.add(einsum.tensor)
    indexed = {t.name for t in cascade.tensors.values()
               if not t.is_input and rank in t.ranks and t.name not in kept}

    def split_vars(variables: tuple[str, ...]) -> tuple[str, ...]:
        result: list[str] = []
        for v in variables:
            result.extend((outer_var, inner_var) if v == var else (v,))
        return result

    problem: list[str] = []

    def read(node: ir.Read):
        if node.tensor not in indexed:
            return None
        indices: list[ir.Expr] = []
        for r, index in zip(cascade.tensors[node.tensor].ranks, node.indices):
            if r != rank:
                indices.append(substitute(index, {var: position}))
            elif index == ir.Index(var):
                indices.extend((ir.Index(outer_var), ir.Index(inner_var)))
            else:
                problem.append(f"{ir.to_text(node)} reads {rank} at a shifted position")
                indices.append(index)
        return ir.Read(node.tensor, tuple(indices))

    def convert(expr: ir.Expr | None) -> ir.Expr | None:
        if expr is None:
            return None
        return substitute(replace_reads(expr, read), {var: position})

    einsums = []
    for einsum in cascade.einsums:
        if einsum.tensor in kept or \
                var not in einsum.variables and not set(einsum.reads) & indexed:
            einsums.append(einsum)
            continue
        if einsum.iter_var == var:
            return Blocked(SPLIT, einsum.tensor, f"a recurrence over {rank}")
        iterative = einsum.iterative
        if iterative is not None and var in einsum.indices[:iterative]:
            iterative += 1
        einsums.append(with_body(einsum, indices=tuple(split_vars(einsum.indices)),
                                 reduced=tuple(split_vars(einsum.reduced)),
                                 body=convert(einsum.body), filter=convert(einsum.filter),
                                 init=convert(einsum.init), iterative=iterative,
                                 explicit_reduction=True))
    if problem:
        return Blocked(SPLIT, rank, problem[0])
    split = Split(rank, outer, inner, tile, tunable=True)
    return (assemble(cascade, einsums, ranks=ranks, splits=cascade.splits + (split,)),
            outer_var, inner_var)


# ------------------------------------------------------------------ the rule
def _scales(algebra: Algebra, einsum: Einsum, g_reads: set, scaled: dict) -> bool:
    """Whether the Einsum's body is homogeneous of degree 1 in the rescale factor: with
    G read as g (before) or y (after) and each scaled tensor t as t or t*exp(g - y)."""
    g, y = algebra.fresh("g"), algebra.fresh("y")
    factor = sympy.exp(g - y)
    before, after = {}, {}
    for node in ir.reads(einsum.body):
        symbol = algebra.to_sympy(node)
        if node in g_reads:
            before[symbol], after[symbol] = g, y
        elif node.tensor in scaled:
            after[symbol] = symbol * factor
    if not before and not after:
        return False
    body = algebra.to_sympy(einsum.body)
    return is_zero(body.xreplace(before) * factor - body.xreplace({**before, **after}))


def online_max_shift(cascade: Cascade, outer: str, inner: str, max_einsum: Einsum):
    """Rule 3 for one max reduction over the split rank. Returns (cascade, step,
    blocked) or a Blocked when nothing would be gained."""
    G = max_einsum
    if not {outer, inner} <= set(G.reduced) or G.filter is not None and \
            set(ir.index_vars(G.filter)) - set(G.variables):
        return Blocked(ONLINE, G.tensor, "not a max over the whole split rank")
    rank_vars = {outer, inner}
    algebra = Algebra()
    scaled: dict[str, str] = {}              # tensor -> its per-tile copy
    g_index: dict[str, tuple] = {}           # scaled tensor -> G's coordinates, its vars
    accumulators: list[Einsum] = []
    blocked: list[Blocked] = []
    taken: set[str] = set()

    def name(base: str) -> str:
        chosen = fresh_name(cascade, base, taken)
        taken.add(chosen)
        return chosen

    for einsum in cascade.einsums:
        g_reads = {r for r in ir.reads(einsum.body) if r.tensor == G.tensor}
        touched = g_reads or any(r.tensor in scaled for r in ir.reads(einsum.body))
        if not touched or not rank_vars & set(einsum.variables):
            continue  # untouched, or reads G after the loop: its exact final value
        index = _g_index(cascade, einsum, g_reads, g_index, scaled)
        side = [r for e in (einsum.filter, einsum.init) if e is not None for r in ir.reads(e)]
        ok = index is not None and einsum.iterative is None and \
            not any(r.tensor == G.tensor or r.tensor in scaled for r in side) and \
            set(ir.index_vars(ir.Read("", index))) <= set(einsum.indices) | rank_vars and \
            _scales(algebra, einsum, g_reads, scaled)
        if ok and rank_vars <= set(einsum.indices) and einsum.reduce_op is None:
            scaled[einsum.tensor] = name(f"L{einsum.tensor}")
            g_index[einsum.tensor] = index
        elif ok and einsum.reduce_op == "sum" and rank_vars <= set(einsum.reduced):
            accumulators.append(einsum)
            g_index[einsum.tensor] = index
        else:
            blocked.append(Blocked(ONLINE, einsum.tensor, _why_not(einsum, G.tensor)))
    narrower = [e.tensor for e in accumulators if not set(ir.conjuncts(G.filter)) <=
                set(ir.conjuncts(e.filter))]
    if narrower:
        # Terms of a sum at points the max skips would be exponentiated before the
        # running max exists: no finite rescaling keeps them exact.
        return Blocked(ONLINE, narrower[0],
                       f"{G.tensor}'s filter {ir.to_text(G.filter)} skips points "
                       f"{narrower[0]} sums")
    if not accumulators:
        return blocked[0] if blocked else Blocked(
            ONLINE, G.tensor, f"no sum over the rank reads exp(... - {G.tensor})")

    r_vars = G.indices
    left = tuple(ir.Index(v) for v in r_vars)
    local, running = name(f"L{G.tensor}"), name(f"R{G.tensor}")
    shift, rescale = name(f"S{G.tensor}"), name(f"C{G.tensor}")
    outer_rank = cascade.var_rank(outer)
    at = lambda tensor, idx, step: ir.Read(tensor, idx + (step,))  # noqa: E731
    new: list[Einsum] = [
        Einsum(local, r_vars + (outer,), G.body, "max",
               tuple(v for v in G.reduced if v != outer), G.filter, explicit_reduction=True),
        Einsum(running, r_vars + (outer,),
               ir.Op("max", (at(running, left, ir.Index(outer)),
                             at(local, left, ir.Index(outer)))),
               iterative=len(r_vars), init=NEG_INF),
    ]
    # The shift each tile's exponentials use: the running max, or 0 while it is still
    # -inf (only -inf scores so far), so that exp(-inf - -inf) = NaN is never formed.
    def safe(position: ir.Expr) -> ir.Expr:
        value = at(running, left, position)
        return ir.Op("where", (ir.Op("==", (value, NEG_INF)), ir.Const(0.0), value))

    new.append(Einsum(shift, r_vars + (outer,), safe(_next(outer))))
    # Before the row's first point the running sums are 0 (every point of a sum is a
    # point of the max: checked above), so the factor is 0 there rather than
    # exp(0 - shift), which overflows for a very negative first shift (0 * inf = NaN).
    previous = at(running, left, ir.Index(outer))
    new.append(Einsum(rescale, r_vars + (outer,), ir.Op("where", (
        ir.Op("==", (previous, NEG_INF)), ir.Const(0.0),
        ir.Op("exp", (ir.Op("-", (previous, at(shift, left, ir.Index(outer)))),))))))

    def per_tile(expr: ir.Expr) -> ir.Expr:
        """G -> this tile's shift; scaled tensors -> their per-tile copies."""
        def swap(read: ir.Read):
            if read.tensor == G.tensor:
                return ir.Read(shift, read.indices + (ir.Index(outer),))
            if read.tensor in scaled:
                return ir.Read(scaled[read.tensor], read.indices)
            return None
        return replace_reads(expr, swap)

    replaced: dict[str, list[Einsum]] = {G.tensor: [with_body(
        G, body=ir.Read(running, left + (ir.Dim(outer_rank),)), reduce_op=None, reduced=(),
        filter=None, explicit_reduction=False)]}
    for einsum in cascade.einsums:
        if einsum.tensor in scaled:
            copy = with_body(einsum, tensor=scaled[einsum.tensor], body=per_tile(einsum.body))
            replaced.setdefault(einsum.tensor, [einsum]).insert(0, copy)
    produced = [local, running, shift, rescale, *scaled.values()]
    for acc in accumulators:
        tile_sum, run_sum = name(f"L{acc.tensor}"), name(f"R{acc.tensor}")
        keep = acc.indices
        own = tuple(ir.Index(v) for v in keep)
        g_at = g_index[acc.tensor]
        replaced[acc.tensor] = [
            Einsum(tile_sum, keep + (outer,), per_tile(acc.body), "sum",
                   tuple(v for v in acc.reduced if v != outer), acc.filter,
                   explicit_reduction=True),
            Einsum(run_sum, keep + (outer,), ir.Op("+", (
                at(tile_sum, own, ir.Index(outer)),
                ir.Op("*", (at(run_sum, own, ir.Index(outer)),
                            ir.Read(rescale, g_at + (ir.Index(outer),)))))),
                   iterative=len(keep), init=ir.Const(0.0)),
            with_body(acc, body=ir.Read(run_sum, own + (ir.Dim(outer_rank),)), reduce_op=None,
                      reduced=(), filter=None, explicit_reduction=False),
        ]
        produced += [tile_sum, run_sum]
    einsums: list[Einsum] = []
    for einsum in cascade.einsums:
        if einsum.tensor == G.tensor:
            einsums.extend(new)
        einsums.extend(replaced.get(einsum.tensor, [einsum]))
    result = assemble(cascade, einsums, removable={G.tensor, *scaled})
    names = ", ".join(a.tensor for a in accumulators)
    step = Step(ONLINE, f"{names} no longer wait for {G.tensor}: running max "
                        f"{running} over the {outer_rank} tiles, each running sum rescaled "
                        f"by {rescale} = exp(old max - new max)",
                tuple(t for t in produced if t in result.tensors) +
                tuple(a.tensor for a in accumulators) + (G.tensor,),
                "exp(a - g) * exp(g - y) = exp(a - y) for every reader (sympy)")
    return result, step, blocked


def _g_index(cascade: Cascade, einsum: Einsum, g_reads: set, g_index: dict,
             scaled: dict) -> tuple | None:
    """G's coordinates in this Einsum's own variables (read directly, or through the
    scaled tensors it reads); None unless every source agrees."""
    found = {read.indices for read in g_reads}
    for read in ir.reads(einsum.body):
        if read.tensor in scaled:
            producer = cascade.einsum(read.tensor)
            values = dict(zip(producer.indices, read.indices))
            found.add(tuple(substitute(i, values) for i in g_index[read.tensor]))
    return found.pop() if len(found) == 1 else None


def _why_not(einsum: Einsum, g: str) -> str:
    if einsum.iterative is not None:
        return "a recurrence"
    if einsum.reduce_op not in (None, "sum"):
        return f"a {einsum.reduce_op} reduction of values relative to {g}"
    return (f"{ir.to_text(einsum.body)} is not proportional to exp(-{g}) (sympy: it does "
            f"not scale with the running max's rescale factor), so it needs the final "
            f"{g} and the exact values after a full pass")
