"""Which exponentials follow a max-shift: `exp(A - B)` where B is at least A at every point
A is present, so the exponent is never positive and the value lies in [0, 1].

Such an exponential may run as `exp2(A * log2(e) - B * log2(e))` on the GPU's `ex2`
unit with results below 2**-126 flushed to zero (what FlashAttention and Triton's
tutorial do): a flushed term is below 2**-126 in absolute value, against terms of 1 (the
shift's own point gives exp(0)) and float32 sums whose rounding is 2**-24 relative. An
exponential that is not shifted keeps `exp`, whose subnormal results count (exp(-100)
* exp(100) must stay 1).

The proof is read off the cascade's own Einsums (the forms the online rewrite derives,
whatever the spec's spelling was, since canonical form comes first). `B >= A` holds when B
reads, at the reader's point:
* `where(R == -inf, 0, R)`: R where R is finite; where R is -inf, every A it bounds is
  -inf (below), and exp(-inf - 0) is 0 either way;
* a running max `R[k+1] = max(R[k], X[k])`, at the step after: at least X[k] and R[k];
* `max[r] Y` (no filter): at least Y at every present point of r, A being a read of Y;
* an input saved as a bound of Y (ir Tensor.bounds: the backward's log-sum-exp, at least
  the max of the forward's scores Y over r), read at A's point less r. The backward
  recomputes Y in its own tiles, so its rounding may put A a few ulp above the bound:
  the exponent is then a few ulp above 0, which ex2 computes as exp does (the flush only
  touches results below 2**-126, and a shifted row keeps its terms of about 1).
"""

from __future__ import annotations

import math

from ..ir import Cascade, Einsum
from ..ir import expr as ir
from ..transform.algebra import substitute

LOG2E = 1.0 / math.log(2.0)


def distributed(value, factor: float):
    """`value * factor`, the constant distributed over sums and differences (each term
    times it: the rounding of one multiply-add per term, against the product's one)."""
    if isinstance(value, ir.Op) and value.op in ("+", "-") and len(value.args) == 2:
        return ir.Op(value.op, tuple(distributed(arg, factor) for arg in value.args))
    if isinstance(value, ir.Op) and value.op == "neg":
        return distributed(value.args[0], -factor)
    return ir.Op("*", (value, ir.Const(factor)))


def max_shifted(cascade: Cascade, exponent: ir.Expr) -> bool:
    """Whether `exponent` is `A - B` with B >= A wherever A is present."""
    if not (isinstance(exponent, ir.Op) and exponent.op == "-" and len(exponent.args) == 2):
        return False
    a, b = exponent.args
    return _bounds(cascade, a, b, depth=4)


def _bounds(cascade: Cascade, a: ir.Expr, b: ir.Expr, depth: int) -> bool:
    """Whether the read `b` is >= `a` wherever `a` is present."""
    if depth == 0 or not isinstance(b, ir.Read) or b.tensor not in cascade.tensors:
        return False
    if cascade.tensors[b.tensor].is_input:
        return _saved_bound(cascade, a, b)
    einsum = cascade.einsum(b.tensor)
    at = _at_reader(einsum, b)
    if at is None or einsum.filter is not None:
        return False
    body = einsum.body
    if einsum.reduce_op is None and _finite_part(body) is not None:
        return _bounds(cascade, a, substitute(_finite_part(body), at), depth - 1)
    if einsum.iterative is not None and einsum.reduce_op is None and \
            isinstance(body, ir.Op) and body.op == "max" and len(body.args) == 2:
        own = ir.Read(einsum.tensor, tuple(ir.Index(v) for v in einsum.indices))
        for x, other in (body.args, reversed(body.args)):
            if x == own:
                previous = substitute(own, at)
                return a == previous or _bounds(cascade, a, substitute(other, at), depth - 1)
        return False
    if einsum.reduce_op == "max" and len(einsum.reduced) == 1 and isinstance(body, ir.Read):
        var = einsum.reduced[0]
        if any(var in ir.index_vars(index) for index in at.values()):
            return False        # the reader's indices would capture the reduced variable
        return _same_point(substitute(body, at), a, var)
    return False


def _saved_bound(cascade: Cascade, a: ir.Expr, b: ir.Read) -> bool:
    """Whether the input read `b` is a saved bound of the tensor `a` reads (Tensor.bounds)
    at `a`'s point: the bounded tensor's ranks are the bound's with one more (the rank
    the max reduced), and `a` reads the others where `b` reads them."""
    bound = cascade.tensors[b.tensor]
    if bound.bounds is None or not isinstance(a, ir.Read) or a.tensor != bound.bounds:
        return False
    ranks = cascade.tensors[a.tensor].ranks
    kept = [i for i, rank in enumerate(ranks) if rank in bound.ranks]
    if len(kept) != len(ranks) - 1 or tuple(ranks[i] for i in kept) != bound.ranks:
        return False
    return tuple(a.indices[i] for i in kept) == b.indices


def _at_reader(einsum: Einsum, read: ir.Read) -> dict | None:
    """The Einsum's own left variables as the reader's expressions (a recurrence read at
    the step after the reader's: its own step variable is the reader's step); None where
    the read is not of that form."""
    if len(read.indices) != len(einsum.indices):
        return None
    at = {}
    for position, (var, index) in enumerate(zip(einsum.indices, read.indices)):
        if position == einsum.iterative:
            if not (isinstance(index, ir.Op) and index.op == "+" and
                    index.args[1] == ir.Const(1) and isinstance(index.args[0], ir.Index)):
                return None
            index = index.args[0]
        at[var] = index
    return at


def _finite_part(body: ir.Expr) -> ir.Read | None:
    """R of `where(R == -inf, 0, R)`."""
    found = guarded(body)
    if found is not None and found[0] == found[1] and isinstance(found[1], ir.Read):
        return found[1]
    return None


def guarded(value) -> tuple | None:
    """(R, X) of `where(R == -inf, 0, X)` (in the IR or the kernel IR); None for any
    other value."""
    if not (isinstance(value, ir.Op) and value.op == "where"):
        return None
    test, if_true, if_false = value.args
    if isinstance(test, ir.Op) and test.op == "==" and minus_infinity(test.args[1]) \
            and isinstance(if_true, ir.Const) and if_true.value == 0:
        return test.args[0], if_false
    return None


def minus_infinity(expr) -> bool:
    """-inf, as a constant or as the negation the parser makes of `-inf`."""
    if isinstance(expr, ir.Op) and expr.op == "neg":
        (inner,) = expr.args
        return isinstance(inner, ir.Const) and inner.value == math.inf
    return isinstance(expr, ir.Const) and expr.value == -math.inf


def _same_point(reduced: ir.Read, a: ir.Expr, var: str) -> bool:
    """Whether `a` reads the tensor the max reduces, at a point of the reduction: equal
    indices, the reduced variable standing for any one variable of the reader."""
    if not isinstance(a, ir.Read) or a.tensor != reduced.tensor \
            or len(a.indices) != len(reduced.indices):
        return False
    bound = None
    for mine, theirs in zip(reduced.indices, a.indices):
        if mine == ir.Index(var):
            if not isinstance(theirs, ir.Index) or bound not in (None, theirs):
                return False
            bound = theirs
        elif var in ir.index_vars(mine) or mine != theirs:
            return False
    return True
