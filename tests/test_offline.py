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
    assert {"BQK_all", "A"} <= set(backward.recomputed)
    sizes = dict(B=1, H=2, P=5, M=37, E=3, F=2)
    expected, got, _ = both(cascade, sizes, 3)
    for name in backward.gradients.values():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12)


def test_the_online_form_gets_flashattention_2_s_backward():
    """Its closed form divides after V (`AV = RNV_all / RD_all`); rule 0b moves the
    division before V (`A = SLN_all / RD_all`, `AV = sum[m] A V`), and then the rules of
    the textbook form apply: the max's shift, the delta term, the log-sum-exp statistic.
    The forward saves LSE and AV, the backward recomputes the scores, and its kernels
    are softmax_3pass's: DELTA first, then dQ, then dK and dV."""
    from einsumattn.schedule.lower_attention import lower_attention
    from einsumattn.schedule.training import training_stages
    from einsumattn.transform.backward import DELTA, LSE, NORMALISED, SHIFT

    backward = fast_backward(einsumattn.load(ONE_PASS))
    assert [step.rule for step in backward.steps] == [OFFLINE, NORMALISED, SHIFT, DELTA, LSE]
    assert set(backward.saved) == {"LSE", "AV"}
    assert set(backward.recomputed) == {"BQK_all", "A"}
    stages = training_stages(backward.cascade, backward.streamed).stages
    assert [s.outputs for s in stages] == [("DELTA",), ("dQ",), ("dK", "dV")]
    dkdv = lower_attention(stages[2]).schedule
    assert (dkdv.row, dkdv.loops[0].var) == ("m", "p")
    textbook = fast_backward(einsumattn.load(ROOT / "examples" / "softmax_3pass.attn"))
    assert [s.outputs for s in training_stages(textbook.cascade, textbook.streamed).stages] \
        == [s.outputs for s in stages]


@pytest.mark.parametrize("change", [
    # a normaliser that is not a sum of exponentials (its sign is not known)
    ("SLD[b, h, p, m1]     = sum[m0] SLN[b, h, p, m1, m0]",
     "SLD[b, h, p, m1]     = sum[m0] SLN[b, h, p, m1, m0] - 0.5"),
    # the numerator is read by another output too
    ("output AV", "XS[b, h, p, f] = RNV[b, h, p, M1, f] * 2.0\noutput AV, XS"),
])
def test_the_division_stays_after_the_contraction_where_moving_it_is_not_proved(change):
    from einsumattn.transform.backward import NORMALISED, _normalised_first

    old, new = change
    assert old in ONE_PASS
    closed, _ = closed_forms(einsumattn.load(ONE_PASS.replace(old, new)))
    after, steps = _normalised_first(closed)
    assert not [s for s in steps if s.rule == NORMALISED] and after is closed


def test_the_division_before_the_contraction_computes_the_same_forward():
    """The rewritten closed form against the spec by the float64 oracle (every key in
    one sum now: a last partial tile, logits 30x)."""
    from einsumattn.transform.backward import _normalised_first

    cascade = einsumattn.load(ONE_PASS)
    closed, _ = closed_forms(cascade)
    after, (step,) = _normalised_first(closed)
    assert "A[b, h, p, m] = SLN_all[b, h, p, m] / RD_all[b, h, p]" in cascade_text(after)
    assert _same(cascade, after, dict(B=1, H=2, P=3, M=37, E=4, F=2), 5, scale=30.0)


def test_a_division_it_cannot_move_keeps_its_per_row_values_first():
    """Where rule 0b is refused (the running sum RNV is read by a second output), the
    backward keeps the closed form's division after V: its per-row values (dO / RD_all
    among them, a factor of the contraction over F that the dK/dV kernel loads as a tile
    of the queries) are a stage of their own, first."""
    from einsumattn.schedule.training import training_stages

    text = ONE_PASS.replace("output AV", "XS[b, h, p, f] = RNV[b, h, p, M1, f] * 2.0\n"
                                         "output AV, XS")
    backward = fast_backward(einsumattn.load(text))
    assert [step.rule for step in backward.steps] == [OFFLINE]
    stages = training_stages(backward.cascade, backward.streamed).stages
    assert "dRNV_all" in stages[0].outputs
    assert [s.outputs for s in stages[1:]] == [("dQ",), ("dK", "dV")]
