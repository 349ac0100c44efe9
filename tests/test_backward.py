"""The fast backward (transform/backward.py): the gradient cascade rewritten by shift
invariance, delta by reassociation and the log-sum-exp statistic, then split into what
the forward saves and what the backward recomputes. Every rewritten backward is checked
against the raw gradient cascade (itself checked against finite differences in
tests/test_grad.py) by the float64 oracle: the forward (with its saved statistics) runs
first, the backward reads what it saved."""

import numpy as np
import pytest

import einsumattn
from einsumattn.evaluate import evaluate
from einsumattn.ir import expr as ir
from einsumattn.ir.printer import cascade_text
from einsumattn.transform.backward import fast_backward
from einsumattn.verify import Case, case_inputs

from conftest import ROOT
from test_grad import NO_KEY_ROWS, SPECS, _sizes

SOFTMAX_FAMILY = ["alibi", "causal_softmax", "gqa", "sliding_window_sinks", "softcap",
                  "softmax_3pass"]


def both(cascade, sizes: dict, seed: int = 0):
    """(the raw gradient's outputs, the fast backward's outputs, the backward) in
    float64 on the same random inputs of `sizes` and cotangents."""
    inputs = {name: value.double().numpy() for name, value in
              case_inputs(cascade, Case(sizes, "float32", 1.0, True, seed)).items()}
    return both_on(cascade, inputs, seed)


def both_on(cascade, inputs: dict, seed: int = 0, backward=None):
    """`both` on the given inputs: the forward (with its statistics) runs first, the
    fast backward reads what it saved; the raw gradient cascade recomputes everything."""
    backward = backward or fast_backward(cascade)
    raw = backward.raw
    rng = np.random.default_rng(seed)
    outputs = evaluate(backward.forward, inputs)
    cotangents = {raw.cotangents[o]: rng.standard_normal(np.shape(outputs[o]))
                  for o in cascade.outputs}
    expected = evaluate(raw.cascade, {**inputs, **cotangents})
    saved = {name: outputs[name] for name in backward.saved}
    got = evaluate(backward.cascade, {**inputs, **cotangents, **saved})
    return expected, got, backward


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_fast_backward_computes_the_gradient(path, seed):
    cascade = einsumattn.load(path)
    expected, got, backward = both(cascade, _sizes(cascade), seed)
    assert backward.gradients == backward.raw.gradients
    for name in backward.gradients.values():
        assert np.isfinite(got[name]).all()
        # float64: the rules reassociate sums and cancel a shift, a few ulps of each term
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_backward_has_flashattention_2_s_structure(name):
    """Statistics saved (one value per row), scores recomputed, delta by reassociation,
    no share of the max's cotangent: read off the derived backward, not asserted by hand
    in a template."""
    backward = fast_backward(einsumattn.load(ROOT / "examples" / f"{name}.attn"))
    rules = [step.rule for step in backward.steps]
    assert rules == ["shift invariance", "delta by reassociation", "log-sum-exp statistic"]
    forward = backward.raw.forward
    (output,) = forward.outputs
    assert backward.saved.keys() == {"LSE", output}
    assert "LSE" in backward.forward.outputs
    streamed = einsumattn.analyze(forward).primary_rank
    # Nothing the forward saves has the streamed rank: training memory stays O(N).
    assert all(streamed not in backward.cascade.tensors[n].ranks for n in backward.saved)
    text = backward.text()
    # No max count (tie rule), no GM or SD read: they cancelled.
    assert "NGM" not in text and not {"GM", "SD"} & set(backward.cascade.tensors)
    delta = backward.cascade.einsum("DELTA")
    assert delta.reduce_op == "sum" and len(delta.reduced) == 1
    assert {r.tensor for r in delta.accesses()} == {backward.cotangents[output], output}
    # The pass analysis of the backward: every reduction over the keys (dQ) or the
    # queries (dK, dV) is one pass; the per-row delta needs no pass over the keys.
    report = einsumattn.analyze(backward.cascade)
    assert all(r.passes <= 2 for r in report.ranks.values())


def test_sigmoid_backward_has_no_delta_and_saves_nothing():
    backward = fast_backward(einsumattn.load(ROOT / "examples" / "sigmoid_attention.attn"))
    assert backward.steps == [] and backward.saved == {}
    assert "DELTA" not in backward.cascade.tensors
    assert set(backward.recomputed) == {"QK", "A"}


def test_rows_that_see_no_key_get_zero_gradients_not_nan():
    cascade = einsumattn.load(NO_KEY_ROWS)
    expected, got, backward = both(cascade, dict(P=5, M=5, E=2, F=2))
    dq = got[backward.gradients["Q"]]
    assert np.isfinite(dq).all() and (dq[:2] == 0).all()
    np.testing.assert_allclose(dq, expected[backward.gradients["Q"]], rtol=1e-9)


def test_logits_up_to_1e4_stay_finite():
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    rng = np.random.default_rng(3)
    inputs = {"Q": rng.standard_normal((1, 1, 6, 4)) * 100,
              "K": rng.standard_normal((1, 1, 6, 4)) * 100,
              "V": rng.standard_normal((1, 1, 6, 3))}
    expected, got, _ = both_on(cascade, inputs, 3)
    for name in ("dQ", "dK", "dV"):
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-8, atol=1e-8)


def test_an_output_that_depends_on_the_max_keeps_its_cotangent():
    """Shift invariance must be proved, not assumed: an unnormalised exp changes with
    the max, so the max keeps its share (and its tie rule)."""
    cascade = einsumattn.load("""attention t
dims P, M, F
input X[p, m], V[m, f]
GM[p] = max[m] X[p, m]
SN[p, m] = exp(X[p, m] - GM[p])
O[p, f] = sum[m] SN[p, m] * V[m, f]
output O
""")
    backward = fast_backward(cascade)
    assert "shift invariance" not in [step.rule for step in backward.steps]
    assert "NGM" in backward.cascade.tensors
    expected, got, _ = both(cascade, dict(P=3, M=4, F=2))
    np.testing.assert_allclose(got["dX"], expected["dX"], rtol=1e-9)


@pytest.mark.parametrize("name", SOFTMAX_FAMILY + ["sigmoid_attention"])
def test_the_fast_backward_prints_back(name):
    backward = fast_backward(einsumattn.load(ROOT / "examples" / f"{name}.attn"))
    text = backward.text()
    assert text.startswith("# saved by the forward") or not backward.saved
    assert cascade_text(einsumattn.load(text)) == cascade_text(backward.cascade)


@pytest.mark.parametrize("name", SOFTMAX_FAMILY)
def test_softmax_backward_kernels_are_flashattention_2_s(name):
    """The stages the back end schedules: the per-row delta first, then one kernel that
    loops over query tiles accumulating dK and dV per key tile, and one that loops over
    key tiles for dQ; each the attention schedule (the scores recomputed in registers),
    skipping masked tiles where the forward does, without atomics."""
    from einsumattn.schedule.lower_attention import lower_attention
    from einsumattn.schedule.training import training_stages

    backward = fast_backward(einsumattn.load(ROOT / "examples" / f"{name}.attn"))
    staged = training_stages(backward.cascade, backward.streamed)
    stages = staged.stages
    if name == "gqa":
        # dK and dV sum the query heads of a group: per query head first (the partial
        # sums, FlashAttention-2's GQA backward), then each summed over its group.
        assert staged.partials == {"dK": "dK_p", "dV": "dV_p"}
        assert [stage.outputs for stage in stages] == \
            [("DELTA",), ("dQ",), ("dK_p", "dV_p"), ("dK",), ("dV",)]
        dk, dv = staged.backward.einsum("dK"), staged.backward.einsum("dV")
        assert dk.reduced == dv.reduced == ("h",)
    else:
        assert [stage.outputs for stage in stages] == [("DELTA",), ("dQ",), ("dK", "dV")]
    schedules = {stage.outputs: lower_attention(stage).schedule for stage in stages
                 if stage.outputs not in (("dK",), ("dV",)) or name != "gqa"}
    dq = schedules[("dQ",)]
    # (A sum-only kernel may split its keys over programs with atomic adds, a knob the
    # module pins to 1 for the backward: tests/test_triton_training.py.)
    assert (dq.row, dq.loops[0].var) == ("p", "m")
    dkv = schedules[("dK_p", "dV_p") if name == "gqa" else ("dK", "dV")]
    assert (dkv.row, dkv.loops[0].var) == ("m", "p")
    assert {t.name for t in dkv.tensors} >= {"QK", "A"}     # recomputed per tile
    if name in ("causal_softmax", "sliding_window_sinks"):
        assert dq.skipping is None or "skip" in dq.description


def test_sigmoid_backward_kernels_need_no_statistics():
    from einsumattn.schedule.training import training_stages

    backward = fast_backward(einsumattn.load(ROOT / "examples" / "sigmoid_attention.attn"))
    stages = training_stages(backward.cascade, backward.streamed).stages
    assert [stage.outputs for stage in stages] == [("dQ",), ("dK", "dV")]


def test_the_grad_command_prints_the_fast_backward(capsys):
    from einsumattn import cli

    assert cli.main(["grad", "--fast", str(ROOT / "examples" / "causal_softmax.attn")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# saved by the forward: LSE (GM + log(SD): one value per row)")
    assert "# delta by reassociation:" in text and "# log-sum-exp statistic:" in text
    assert einsumattn.load(text).outputs == ("dQ", "dK", "dV")


# Found by the randomized profile (tests/test_backward_properties.py), kept as cases.
CLIPPED_DIFFERENCE = """attention clipped_difference
dims P, M, E, F
input Q1[p, e], K1[m, e], Q2[p, e], K2[m, e], V[m, f]
param scale = 1 / sqrt(E)
param W = 3
param post = 0.5
param lam = 0.75
QK1[p, m] = Q1[p, e] * K1[m, e] * scale  where m <= p and p - m < W
G1[p] = max[m] QK1[p, m]
N1[p, m] = exp(QK1[p, m] - G1[p])
D1[p] = sum[m] N1[p, m]
QK2[p, m] = Q2[p, e] * K2[m, e] * scale  where m <= p and p - m < W
G2[p] = max[m] QK2[p, m]
N2[p, m] = exp(QK2[p, m] - G2[p])
D2[p] = sum[m] N2[p, m]
A[p, m] = (min(max(1.5 * (N1[p, m] / D1[p] - lam * N2[p, m] / D2[p]) - 0.1, 0.0), 1.0)) * post
O[p, f] = sum[m] A[p, m] * V[m, f]
output O
"""


def test_the_statistic_never_splits_a_shifted_exponential():
    """Clipped weights of two softmaxes: substituting G2 = LSE2 - log(D2) into A let
    sympy split exp(QK1 - G1) into exp(QK1) / exp(G1), which overflows at logits near
    100 (inf / inf): every exponential of a rewritten body must be one it had or one
    of the statistic."""
    from test_rewrites import _inputs

    cascade = einsumattn.load(CLIPPED_DIFFERENCE)
    backward = fast_backward(cascade)
    for einsum in backward.cascade.einsums:
        for node in ir.walk(einsum.body):
            if getattr(node, "op", None) == "exp":
                assert len(ir.reads(node.args[0])) >= 2, einsum
    inputs = _inputs(cascade, {"P": 4, "M": 3, "E": 2, "F": 2}, 100.0, 65535)
    expected, got, _ = both_on(cascade, inputs, 0, backward)
    for name in backward.gradients.values():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-8, atol=1e-9)


def test_a_recurrence_or_a_tensor_with_absent_points_is_recomputed_not_saved():
    """The forward returns an absent point as 0 and a recurrence has one position more
    than its rank: neither can be an input of the backward."""
    cascade = einsumattn.load("""attention kept
dims M, B, P
input X[m, b, p], Y[m, p]
init R[m, 0] = 1
R[m, b+1] = R[m, b] * 0.9 + X[m, b, 0]
T[m] = R[m, B]
U[m] = Y[m, 0] * T[m] where Y[m, 0] > 0
O[m] = sum[p] U[m] * Y[m, p]
output O
""")
    backward = fast_backward(cascade)
    assert not {"R", "U"} & set(backward.saved)
    expected, got, _ = both(cascade, dict(M=3, B=4, P=5))
    for name in backward.gradients.values():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12)


def test_one_delta_serves_every_reader_of_the_same_sum():
    """A softmax whose denominator adds a term that grows with the max (so the outputs
    change with it: no shift invariance) has dSD and dGM that both reduce to sum[f] dO O: rule 2 computes
    it once and both read it (it made DELTA and an identical DELTA2 before; softpick did,
    until its max was shown to cancel)."""
    from einsumattn.transform.backward import DELTA, fast_backward

    cascade = einsumattn.load("""attention softmax_eps
dims  B, P, M, E, F
input Q[b, p, e], K[b, m, e], V[b, m, f]
param eps = 0.5
QK[b, p, m] = Q[b, p, e] * K[b, m, e]
GM[b, p]    = max[m] QK[b, p, m]
SN[b, p, m] = exp(QK[b, p, m] - GM[b, p])
SD[b, p]    = sum[m] SN[b, p, m]
A[b, p, m]  = SN[b, p, m] / (SD[b, p] + eps * exp(GM[b, p]))
AV[b, p, f] = A[b, p, m] * V[b, m, f]
output AV
""")
    backward = fast_backward(cascade)
    deltas = [e for e in backward.cascade.einsums if e.tensor.startswith("DELTA")]
    assert [e.tensor for e in deltas] == ["DELTA"]
    readers = {e.tensor for e in backward.cascade.einsums if "DELTA" in e.reads}
    assert {"dSD_A", "dGM_A"} <= readers
    assert sum(step.rule == DELTA for step in backward.steps) == 2


def test_softpick_s_clamped_max_cancels_through_abs_and_relu():
    """softpick divides relu(e^(x-G) - e^-G) by sum |e^(x-G) - e^-G| + eps e^-G with
    G = max(max[m] x, 0): every term carries e^-G, which abs and relu let through (it is
    positive), so the outputs do not depend on G. Rule 1 proves it for G, a function of
    the max alone: no tie rule, no count of tied keys, no cotangent of the max."""
    from einsumattn.transform.backward import SHIFT, fast_backward

    backward = fast_backward(einsumattn.load(ROOT / "examples" / "softpick.attn"))
    shifts = [step for step in backward.steps if step.rule == SHIFT]
    assert [step.tensors for step in shifts] == [("GM",)]
    assert "SD -> SD * exp(-t" in shifts[0].identity
    names = {e.tensor for e in backward.cascade.einsums}
    assert not {"NLM", "dGM", "dLM_GM", "dQK_LM"} & names
    assert not any(rank.startswith("TERMS") for rank in backward.cascade.ranks)
    # Rule 2's factor reads GM, not the max(0, LM) it was inlined to: LM is not saved.
    assert set(backward.saved) == {"GM", "SD", "AV"}


def test_a_positive_factor_goes_through_abs_relu_and_sign_only():
    import sympy

    from einsumattn.transform.algebra import Algebra, positive_factors_out

    algebra = Algebra()
    t, x = algebra.fresh("t"), sympy.Symbol("x", real=True)
    op = {name: algebra.function(name, [x]).func for name in ("abs", "relu", "sign", "tanh")}
    e = sympy.exp(-t)
    assert positive_factors_out(op["abs"](e * x), t) == e * op["abs"](x)
    assert positive_factors_out(op["relu"](e * x), t) == e * op["relu"](x)
    assert positive_factors_out(op["sign"](e * x), t) == op["sign"](x)
    assert positive_factors_out(op["abs"](-e * x), t) == e * op["abs"](-x)
    for kept in (op["tanh"](e * x), op["abs"](x + e), op["relu"](t * x)):
        assert positive_factors_out(kept, t) == kept   # not homogeneous, a sum, t not > 0


def test_a_reduction_of_the_inputs_over_a_feature_is_saved_not_recomputed():
    """Cosine attention's query and key norms (SQ[p] = sum[e] Q Q, SK[m] = sum[e] K K)
    are a value per row and per key that the forward computes in kernels of their own;
    a backward stage's attention loop cannot reduce a feature, so they are saved (O(N))
    and the stages read them. The scores and probabilities are still recomputed."""
    from einsumattn.transform.backward import fast_backward

    backward = fast_backward(einsumattn.load(ROOT / "examples" / "cosine_attention.attn"))
    assert backward.saved["SQ"] == backward.saved["SK"] == \
        "a reduction of the inputs over a feature rank"
    assert {"QK", "A"} <= set(backward.recomputed)
    assert "SQ" not in {e.tensor for e in backward.cascade.einsums}
