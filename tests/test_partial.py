"""transform/partial.py: a sum over several ranks as the total of partial sums over one,
the same values by the oracle (absent terms and filters included), and refused where
the terms would not be the same."""

import numpy
import pytest

import einsumattn
from einsumattn.ir.printer import cascade_text
from einsumattn.transform.partial import partial_sum
from einsumattn.verify import Case, case_inputs

GROUPED = """attention grouped
dims B, H, KH, P, M, E
input X[b, h, p, m], Y[b, kh, m, e], Z[b, h, p, e]
T[b, h, p, m] = X[b, h, p, m] * 2.0  where m <= p
dY[b, kh, m, e] = sum[h, p] T[b, h, p, m] * Z[b, h, p, e] where kh == h * KH // H
output dY
"""


def _same_values(before, after, sizes, seed):
    inputs = case_inputs(before, Case(sizes, "float64", 1.0, True, seed))
    expected = einsumattn.evaluate(before, inputs)
    got = einsumattn.evaluate(after, inputs)
    return all(numpy.allclose(expected[o], got[o], rtol=1e-12, atol=1e-12, equal_nan=True)
               for o in before.outputs)


@pytest.mark.parametrize("inner", ["p", "h"])
@pytest.mark.parametrize("heads", [(4, 2), (5, 2), (3, 1)])
def test_the_partial_sums_add_up_to_the_sum(inner, heads):
    cascade = einsumattn.load(GROUPED)
    after, name = partial_sum(cascade, "dY", inner)
    partial = after.einsum(name)
    assert partial.reduced == (inner,) and after.einsum("dY").reduced == \
        tuple(v for v in ("h", "p") if v != inner)
    # The condition on the partial's rank stays with it; the group's goes to the total.
    if inner == "p":
        assert partial.indices == ("b", "h", "m", "e") and partial.filter is None
        assert "kh == h * KH // H" in cascade_text(after)
    H, KH = heads
    sizes = dict(B=2, H=H, KH=KH, P=5, M=4, E=3)
    assert _same_values(cascade, after, sizes, H + KH)
    # It prints and loads back as the same cascade (a rewrite like the others).
    assert cascade_text(einsumattn.load(cascade_text(after))) == cascade_text(after)


def test_a_partial_keeps_the_rows_that_see_no_key_absent():
    """A row with no present term is absent in the partial and adds nothing to the
    total, as its terms added nothing before: the total of such rows alone is 0 where
    the sum was (a sum with no present term is 0 only as an output)."""
    spec = GROUPED.replace("where m <= p", "where m + 3 <= p")
    cascade = einsumattn.load(spec)
    after, _ = partial_sum(cascade, "dY", "p")
    assert _same_values(cascade, after, dict(B=1, H=2, KH=1, P=4, M=5, E=2), 0)


def test_a_condition_on_the_partial_s_rank_keeps_what_it_reads():
    """`p < kh + 3` reads the partial's rank: it stays in the partial, which then keeps
    kh too (the body does not read it)."""
    crossed = einsumattn.load(GROUPED.replace("where kh == h * KH // H",
                                              "where kh == h * KH // H and p < kh + 3"))
    after, name = partial_sum(crossed, "dY", "p")
    assert after.einsum(name).indices == ("b", "h", "kh", "m", "e")
    assert _same_values(crossed, after, dict(B=1, H=4, KH=2, P=6, M=4, E=2), 1)


def test_refused_where_it_does_not_apply():
    cascade = einsumattn.load(GROUPED)
    # not a sum over the variable, or over one variable only, or not a sum
    assert partial_sum(cascade, "dY", "m") is None
    assert partial_sum(cascade, "T", "p") is None
    single = einsumattn.load(GROUPED.replace("sum[h, p]", "sum[p]")
                             .replace(" where kh == h * KH // H", "")
                             .replace("dY[b, kh, m, e]", "dY[b, h, m, e]"))
    assert partial_sum(single, "dY", "p") is None
    maximum = einsumattn.load(GROUPED.replace("sum[h, p]", "max[h, p]"))
    assert partial_sum(maximum, "dY", "p") is None
