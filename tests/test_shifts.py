"""schedule/shifts.py: which exponentials follow a max-shift (their exponent is never
positive), so that the fused kernels may take them as exp2 with flush-to-zero; and the
kernels that do agree with the oracle."""

from __future__ import annotations

import pytest

import einsumattn
from einsumattn.backends.module import Plan
from einsumattn.schedule import kernel_ir as k
from einsumattn.schedule.lower_attention import lower_attention
from einsumattn.schedule.shifts import max_shifted

from conftest import ROOT


def exponents(cascade):
    """tensor -> the exponent of each exp in its body."""
    found = {}
    for einsum in cascade.einsums:
        for node in einsumattn.ir.expr.walk(einsum.body):
            if isinstance(node, einsumattn.ir.expr.Op) and node.op == "exp":
                found.setdefault(einsum.tensor, []).append(node.args[0])
    return found


@pytest.mark.parametrize("name", ["causal_softmax", "softmax_3pass", "gqa", "alibi",
                                  "softcap", "sliding_window_sinks"])
def test_the_online_softmax_exponentials_are_max_shifted(name):
    """The per-tile exponentials against the running max (LSN) and the rescale factors
    (CGM) of the derived cascade; the 3-pass form's exp(QK - GM) with GM = max[m] QK."""
    for rewrite in (True, False):
        cascade = Plan(einsumattn.load(ROOT / "examples" / f"{name}.attn"),
                       rewrite=rewrite).kernel
        found = exponents(cascade)
        assert found and all(max_shifted(cascade, x) for xs in found.values() for x in xs), \
            (rewrite, found)


SPEC = """
attention shifts
dims B, P, M, E
input Q[b, p, e], K[b, m, e], S[b, p]
QK[b, p, m]   = Q[b, p, e] * K[b, m, e]
GM[b, p]      = max[m] QK[b, p, m]
GF[b, p]      = max[m] QK[b, p, m] where m <= p
{body}
output Y
"""


@pytest.mark.parametrize("body, shifted", [
    ("Y[b, p, m] = exp(QK[b, p, m] - GM[b, p])", True),
    # A shift that is not the max of what it shifts: the exponent may be positive.
    ("Y[b, p, m] = exp(QK[b, p, m] - S[b, p])", False),
    ("Y[b, p, m] = exp(GM[b, p] - QK[b, p, m])", False),
    # The max over a filtered range bounds only the points it covers.
    ("Y[b, p, m] = exp(QK[b, p, m] - GF[b, p])", False),
    ("Y[b, p, m] = exp(QK[b, p, m] + GM[b, p])", False),
])
def test_only_a_shift_by_the_max_of_the_same_values_counts(body, shifted):
    cascade = einsumattn.load(SPEC.format(body=body))
    (exponent,) = exponents(cascade)["Y"]
    assert max_shifted(cascade, exponent) is shifted


def test_the_fused_kernel_takes_the_shifted_exponentials_as_exp2():
    from einsumattn.backends import names
    plan = Plan(einsumattn.load(ROOT / "examples" / "causal_softmax.attn"))
    lowered = lower_attention(names.rename(plan.kernel))
    kinds = [n for n in k.nodes(lowered.body) if isinstance(n, (k.Exp2,))]
    plain = [n for n in k.nodes(lowered.body)
             if isinstance(n, einsumattn.ir.expr.Op) and n.op == "exp"]
    # LSN and CGM, in the loop without masks and in the one with them.
    assert len(kinds) == 4 and not plain


@pytest.mark.parametrize("name", ["softmax_3pass", "causal_softmax", "softmax_1pass",
                                  "sliding_window_sinks", "gqa"])
def test_the_backward_s_exponentials_are_shifted_by_the_saved_log_sum_exp(name):
    """The fast backward's `exp(QK - LSE)`: LSE, saved by the forward, is at least the
    scores' max (a log of a sum of at least 1, rule 3), so the input LSE bounds QK
    (Tensor.bounds) and its dQ and dK/dV kernels take exp2, as the forward does."""
    from einsumattn.backends import names
    from einsumattn.schedule.training import training_stages
    from einsumattn.transform.backward import fast_backward

    backward = fast_backward(einsumattn.load(ROOT / "examples" / f"{name}.attn"))
    (statistic,) = [t for t in backward.cascade.inputs if t.bounds is not None]
    shift = backward.forward.einsum(statistic.name).body.args[0].tensor
    assert statistic.bounds == backward.forward.einsum(shift).body.tensor
    found = exponents(backward.cascade)
    assert found and all(max_shifted(backward.cascade, x) for xs in found.values()
                         for x in xs)
    stages = training_stages(backward.cascade, backward.streamed).stages
    scored = [lower_attention(names.rename(s)) for s in stages
              if any(e.tensor in found for e in s.einsums)]      # dQ, and dK with dV
    assert len(scored) == 2
    for kernel in scored:
        assert any(isinstance(n, k.Exp2) for n in k.nodes(kernel.body))
        assert not [n for n in k.nodes(kernel.body)
                    if isinstance(n, einsumattn.ir.expr.Op) and n.op == "exp"]


@pytest.mark.parametrize("body, shifted", [
    ("Y[b, p, m] = exp(QK[b, p, m] - L[b, p])", True),
    ("Y[b, p, m] = exp(QK[b, p, m] - S[b, p])", False),       # not a saved bound
    ("Y[b, p, m] = exp(QK[b, m, p] - L[b, p])", False),       # QK read at another point
    ("Y[b, p, m] = exp(L[b, p] - QK[b, p, m])", False),
])
def test_only_a_saved_bound_of_the_same_scores_counts(body, shifted):
    import dataclasses

    cascade = einsumattn.load(SPEC.replace("S[b, p]", "S[b, p], L[b, p]")
                              .replace("dims B, P, M, E", "dims B, P, E, M = P")
                              .format(body=body))
    tensors = dict(cascade.tensors)
    tensors["L"] = dataclasses.replace(tensors["L"], bounds="QK")
    cascade = dataclasses.replace(cascade, tensors=tensors)
    (exponent,) = exponents(cascade)["Y"]
    assert max_shifted(cascade, exponent) is shifted


def test_a_log_sum_exp_of_a_filtered_max_bounds_nothing():
    """The max taken under a filter (`max[m] QK where m <= p`) bounds the scores only where
    the filter holds: the statistic saved from it is not marked a bound (the schedule
    does not follow the sum's own range), and the backward keeps exp."""
    from einsumattn.transform.backward import LSE, fast_backward

    text = (ROOT / "examples" / "causal_softmax.attn").read_text()
    text = text.replace("* scale  where m <= p", "* scale").replace(
        "= max[m] QK[b, h, p, m]", "= max[m] QK[b, h, p, m]  where m <= p")
    backward = fast_backward(einsumattn.load(text))
    assert LSE in [step.rule for step in backward.steps]
    assert all(t.bounds is None for t in backward.cascade.inputs)
    assert not any(max_shifted(backward.cascade, x)
                   for xs in exponents(backward.cascade).values() for x in xs)
