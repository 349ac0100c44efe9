"""transform/offline.py: the online form written by hand (a running max and rescaled
sums over the tiles of a split, read at their final values) back to the max and the sums
over every key, the same values by the float64 oracle, and left alone where the closed
form would not be the same."""

import numpy as np
import pytest

import einsumattn
from einsumattn.ir.printer import cascade_text
from einsumattn.transform.backward import fast_backward
from einsumattn.transform.offline import OFFLINE, closed_forms
from einsumattn.verify import Case, case_inputs

from conftest import ROOT

ONE_PASS = (ROOT / "examples" / "softmax_1pass.attn").read_text()


def _same(before, after, sizes, seed=0, scale=1.0):
    inputs = case_inputs(before, Case(sizes, "float64", scale, True, seed))
    expected = einsumattn.evaluate(before, inputs)
    got = einsumattn.evaluate(after, inputs)
    return all(np.allclose(expected[o], got[o], rtol=1e-12, atol=1e-14)
               for o in before.outputs)


@pytest.mark.parametrize("M", [1, 15, 16, 37])
def test_the_online_softmax_is_the_softmax_over_every_key(M):
    """Keys in one partial tile, one whole tile, several (the last partial); logits
    scaled up 30x so that the running max moves."""
    cascade = einsumattn.load(ONE_PASS)
    after, (step,) = closed_forms(cascade)
    assert step.rule == OFFLINE and "exp(s) = 0" in step.identity
    assert not after.splits and not any(e.iterative is not None for e in after.einsums)
    text = cascade_text(after)
    assert "RM_all[b, h, p] = max[m] BQK_all[b, h, p, m]" in text
    assert "RD_all[b, h, p] = sum[m] SLN_all[b, h, p, m]" in text
    assert _same(cascade, after, dict(B=1, H=2, P=3, M=M, E=4, F=2), M, scale=30.0)
    assert cascade_text(einsumattn.load(text)) == text


@pytest.mark.parametrize("change", [
    # the rescale factor is not exp(RM[m1] - RM[m1+1])
    ("exp(RM[b, h, p, m1] - RM[b, h, p, m1+1])", "exp(RM[b, h, p, m1] - RM[b, h, p, m1+1]) * 0.5"),
    # a term that does not scale as exp(-RM[m1+1]): the identity fails
    ("SLN[b, h, p, m1, m0] = exp(BQK[b, h, p, m1, m0] - RM[b, h, p, m1+1])",
     "SLN[b, h, p, m1, m0] = exp(BQK[b, h, p, m1, m0] - RM[b, h, p, m1+1]) + 1"),
    # the running sum read at a step other than the last
    ("AV[b, h, p, f]       = RNV[b, h, p, M1, f] / RD[b, h, p, M1]",
     "AV[b, h, p, f]       = RNV[b, h, p, M1, f] / RD[b, h, p, 1]"),
    # a mask: a row without a key would be NaN in the closed form, 0 in the recurrence
    ("BQK[b, h, p, m1, m0] = Q[b, h, p, e] * K[b, h, m1*M0 + m0, e] * scale",
     "BQK[b, h, p, m1, m0] = Q[b, h, p, e] * K[b, h, m1*M0 + m0, e] * scale"
     "  where m1*M0 + m0 <= p"),
])
def test_left_alone_where_the_closed_form_would_differ(change):
    old, new = change
    assert old in ONE_PASS
    cascade = einsumattn.load(ONE_PASS.replace(old, new))
    after, steps = closed_forms(cascade)
    assert not steps and after is cascade


def test_the_fast_backward_of_the_online_form_saves_rows_and_recomputes_tiles():
    """Differentiated through its closed form: per-row values saved (no recurrence, no
    value per key), the scores recomputed, and the same gradient as the raw one through
    the recurrences in reverse time."""
    from test_backward import both

    cascade = einsumattn.load(ONE_PASS)
    backward = fast_backward(cascade)
    assert backward.steps[0].rule == OFFLINE
    assert not any(e.iterative is not None for e in backward.cascade.einsums)
    assert all(backward.streamed not in backward.cascade.tensors[n].ranks
               for n in backward.saved)
    assert {"BQK_all", "SLN_all"} <= set(backward.recomputed)
    sizes = dict(B=1, H=2, P=5, M=37, E=3, F=2)
    expected, got, _ = both(cascade, sizes, 3)
    for name in backward.gradients.values():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12)


def test_the_online_form_gets_flashattention_2_s_kernels():
    """Its per-row values (dO / RD_all, the delta term) are computed first, as softmax's
    DELTA is: dO / RD_all is a factor of the dK/dV kernel's contraction over F, a tile
    that kernel loads, since it streams the queries and cannot compute a per-query value.
    Then one kernel for dQ and one for dK and dV."""
    from einsumattn.schedule.lower_attention import lower_attention
    from einsumattn.schedule.training import training_stages

    backward = fast_backward(einsumattn.load(ONE_PASS))
    stages = training_stages(backward.cascade, backward.streamed).stages
    assert [s.outputs for s in stages] == \
        [("dRNV_all_AV", "dRD_all_AV"), ("dQ",), ("dK", "dV")]
    dkdv = lower_attention(stages[2]).schedule
    assert (dkdv.row, dkdv.loops[0].var) == ("m", "p")
