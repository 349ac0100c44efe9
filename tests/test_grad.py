"""The gradient cascade (transform/grad.py) against finite differences of the float64
oracle: independent of the derivation, for every example and paper spec it derives, with
absent points (masks, fully masked rows, an absent operand of a sum), ties of a max, and
the refusals."""

import math

import numpy as np
import pytest

import einsumattn
from einsumattn.evaluate import evaluate
from einsumattn.ir.printer import cascade_text
from einsumattn.transform.grad import GradientUnsupported, gradient
from einsumattn.verify import drawn_ranks, finite_differences

from conftest import ROOT

NO_GRADIENT: set[str] = set()      # every example and paper spec derives its gradient
SPECS = [path for path in sorted((ROOT / "examples").glob("*.attn")) +
         sorted((ROOT / "benchmarks" / "specs").glob("*.attn"))
         if path.stem not in NO_GRADIENT]
RECURRENT = {"gla_recurrent", "softmax_1pass"}      # their gradients run in reverse time
SIZES = dict(B=2, H=2, KH=1, P=5, M=7, E=3, F=2, C=4, W=3)


def _sizes(cascade) -> dict:
    return {r: SIZES.get(r, 3) for r in drawn_ranks(cascade)}


def directional(cascade, sizes: dict, seed: int = 0):
    """(finite difference, gradient) of L = sum over outputs of <dO, O> along a random
    direction of every input the gradient covers, in float64 (verify.finite_differences,
    what `einsumattn check` runs), the gradient cascade's values there, and the gradient."""
    grad = gradient(cascade)
    return (*finite_differences(cascade, grad, sizes, seed), grad)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_gradient_matches_finite_differences(path, seed):
    cascade = einsumattn.load(path)
    finite, analytic, grads, _ = directional(cascade, _sizes(cascade), seed)
    # 1e-6 relative: the central difference's error at eps = 1e-6 in float64
    assert analytic == pytest.approx(finite, rel=1e-6, abs=1e-6)
    assert all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_the_gradient_cascade_prints_back(path):
    grad = gradient(einsumattn.load(path))
    # The text (a comment per rule) parses back to the same cascade.
    assert cascade_text(einsumattn.load(grad.text())) == cascade_text(grad.cascade)
    assert all(output.startswith("d") for output in grad.cascade.outputs)


def test_softmax_gradient_reads_what_flashattention_s_backward_reads():
    """The derivation for softmax_3pass: dV from the probabilities and dO, dQ and dK from
    dQK, which the exp and the max-shift make (the max's share of it sums to zero)."""
    grad = gradient(einsumattn.load(ROOT / "examples" / "softmax_3pass.attn"))
    assert grad.gradients == {"Q": "dQ", "K": "dK", "V": "dV"}
    assert grad.cotangents == {"AV": "dAV"}
    assert grad.cascade.einsum("dV").reads == ["dAV", "A"]
    assert set(grad.cascade.einsum("dQ").reads) == {"dQK", "K"}


ABSENT_OPERAND = """attention a
dims P, M, E
input Q[p, e], K[m, e], U[p, m]
V[p, m] = Q[p, e] * K[m, e] where m <= p
T[p, m] = U[p, m] + V[p, m]
W[p] = sum[m] U[p, m] * U[p, m]
R[p] = sum[m] T[p, m] + W[p]
output R
"""

NO_KEY_ROWS = """attention a
dims P, M, E, F
input Q[p, e], K[m, e], V[m, f]
QK[p, m] = Q[p, e] * K[m, e] where m + 2 <= p
GM[p] = max[m] QK[p, m]
SN[p, m] = exp(QK[p, m] - GM[p])
SD[p] = sum[m] SN[p, m]
O[p, f] = SN[p, m] * V[m, f] / SD[p]
output O
"""


def test_an_absent_operand_gives_no_gradient_and_its_sum_skips_it():
    """d(U + V)/dU is 1, but U's term counts only where V is present; dU sums three
    readers' terms, one of them absent above the diagonal."""
    cascade = einsumattn.load(ABSENT_OPERAND)
    finite, analytic, grads, grad = directional(cascade, dict(P=4, M=4, E=2))
    assert analytic == pytest.approx(finite, rel=1e-6)
    assert "where(T[p, m] != T[p, m], 1.0, 1.0)" in grad.text()
    assert "TERMS3" in grad.cascade.ranks


def test_terms_present_at_the_same_points_are_added_with_plus():
    """Causal softmax's dQK sums what SN and the max contribute: both are absent exactly
    where QK is (past the diagonal), so `+` is exact and no rank of terms is made; the
    gradient still agrees with central differences."""
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    grad = gradient(cascade)
    assert not any(rank.startswith("TERMS") for rank in grad.cascade.ranks)
    assert "dQK[b, h, p, m] = dQK_SN[b, h, p, m] + dQK_GM[b, h, p, m]" in grad.text()
    finite, analytic, _, _ = directional(cascade, dict(B=1, H=1, P=4, M=4, E=2, F=2))
    assert analytic == pytest.approx(finite, rel=1e-6)


def test_rows_that_see_no_key_get_zero_gradients_not_nan():
    cascade = einsumattn.load(NO_KEY_ROWS)
    finite, analytic, grads, grad = directional(cascade, dict(P=5, M=5, E=2, F=2))
    assert analytic == pytest.approx(finite, rel=1e-6)
    dq = grads[grad.gradients["Q"]]
    assert np.isfinite(dq).all() and (dq[:2] == 0).all() and (dq[2:] != 0).any()


def test_a_max_shares_its_cotangent_among_tied_points():
    cascade = einsumattn.load("""attention t
dims P, M
input X[p, m]
T[p] = max[m] X[p, m]
output T
""")
    grad = gradient(cascade)
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, -1.0, 0.5, 0.0]])
    got = evaluate(grad.cascade, {"X": x, "dT": np.array([1.0, 4.0])})["dX"]
    assert got.tolist() == [[0.0, 0.5, 0.5, 0.0], [4.0, 0.0, 0.0, 0.0]]


def test_a_recurrence_s_gradient_runs_in_reverse_time():
    """GLA's state: its cotangent is a recurrence over the same rank, started from what
    the last output adds (init at position 0 is step T) and read back at T - 1 - t."""
    grad = gradient(einsumattn.load(ROOT / "examples" / "gla_recurrent.attn"))
    reverse = grad.cascade.einsum("dS")
    assert reverse.iterative == 2 and reverse.init is not None
    text = grad.text()
    assert "init dS[b, h, 0, d, f] = dS_O[b, h, T - 1, d, f]" in text
    assert "dK[b, h, t, d] = sum[f] dS[b, h, T - 1 - t, d, f] * V[b, h, t, f]" in text


@pytest.mark.parametrize("read, why", [
    ("S[p, 0]", "only t, t\\+1 and the final value"),
    ("S[p, m]", None)])
def test_a_recurrence_read_at_another_step_is_refused(read, why):
    cascade = einsumattn.load(f"""attention r
dims P, M
input X[p, m]
init S[p, 0] = 0
S[p, m+1] = S[p, m] * 0.5 + X[p, m]
O[p, m] = {read} * X[p, m]
output O
""")
    if why is None:                      # the step itself: derived, and right
        finite, analytic, _, _ = directional(cascade, dict(P=2, M=4))
        assert analytic == pytest.approx(finite, rel=1e-6)
        return
    with pytest.raises(GradientUnsupported, match=why):
        gradient(cascade)


def test_a_coordinate_that_needs_a_used_variable_is_refused():
    cascade = einsumattn.load("""attention d
dims P
input X[p]
T[p] = X[2 * p]
output T
""")
    with pytest.raises(GradientUnsupported, match="already uses"):
        gradient(cascade)


def test_each_function_s_derivative_matches_finite_differences():
    functions = ["exp", "log", "sqrt", "tanh", "sigmoid", "relu", "elu", "abs", "softplus",
                 "logsigmoid", "log1p", "expm1", "silu", "erf"]
    body = " + ".join(f"{f}(X[p] * X[p] + 0.5)" for f in functions)
    cascade = einsumattn.load(f"attention f\ndims P\ninput X[p]\nT[p] = {body} + "
                              f"max(X[p], 0.25) * min(X[p], 0.5) + X[p] ** 3 / (1 + X[p] ** 2)"
                              f"\noutput T\n")
    finite, analytic, _, _ = directional(cascade, dict(P=6), seed=3)
    assert analytic == pytest.approx(finite, rel=1e-6)
    assert not math.isnan(analytic)


def test_the_grad_command_prints_the_derivation_and_refuses_with_the_reason(capsys, tmp_path):
    from einsumattn import cli

    assert cli.main(["grad", str(ROOT / "examples" / "gqa.attn")]) == 0
    text = capsys.readouterr().out
    assert "# what QK contributes to dK" in text
    assert "dK[b, kh, m, e] = sum[h, p]" in text and "where kh == h * KH // H" in text
    out = tmp_path / "g.attn"
    assert cli.main(["grad", str(ROOT / "examples" / "softcap.attn"), "-o", str(out)]) == 0
    assert einsumattn.load(out).outputs == ("dQ", "dK", "dV")
    capsys.readouterr()
    refused = tmp_path / "r.attn"
    refused.write_text("attention r\ndims P, M\ninput X[p, m]\ninit S[p, 0] = 0\n"
                       "S[p, m+1] = S[p, m] + X[p, m]\nO[p, m] = S[p, 0] * X[p, m]\n"
                       "output O\n")
    assert cli.main(["grad", str(refused)]) == 2
    assert "reads the recurrence S at step 0" in capsys.readouterr().err


def test_check_compares_the_derivation_with_finite_differences():
    """`einsumattn check` runs the gradient cascade against central differences of the
    oracle first, independent of the derivation; a wrong gradient cascade fails it."""
    from einsumattn.verify import _check_derivation

    text = (ROOT / "examples" / "softmax_3pass.attn").read_text()
    cascade = einsumattn.load(text)
    said = []
    assert _check_derivation(cascade, gradient(cascade), said.append)
    assert said[-1].startswith("gradient cascade vs central differences") and "ok" in said[-1]
    wrong = gradient(einsumattn.load(text.replace("1 / sqrt(E)", "1.01 / sqrt(E)")))
    said.clear()
    assert not _check_derivation(cascade, wrong, said.append)
    assert "MISMATCH" in said[-1]


def test_a_read_at_a_variable_of_another_rank_of_the_same_size_is_differentiated():
    """stick_breaking's LS[p, m] = sum[j] logsigmoid(-Z[p, j]) where m < j < p reads Z (rank
    M) at j, a variable of rank J = M, beside m: LS's contribution to dZ is over J
    (dZ_LS[p, j], m summed), read at m by Z's cotangent. It used to be refused."""
    cascade = einsumattn.load(ROOT / "examples" / "stick_breaking.attn")
    finite, analytic, _, grad = directional(cascade, dict(B=1, H=2, P=6, M=6, E=3, F=2))
    assert analytic == pytest.approx(finite, rel=1e-6, abs=1e-6)
    term = grad.cascade.einsum("dZ_LS")
    assert term.indices == ("b", "h", "p", "j") and term.reduced == ("m",)
    assert grad.cascade.tensors["dZ_LS"].ranks[3] == "J"


def test_a_read_at_a_variable_of_another_rank_of_another_size_is_refused():
    """The same read where J's size is not M's: Z at j is absent past M, and the
    contribution over J would not be Z's cotangent at any point."""
    text = (ROOT / "examples" / "stick_breaking.attn").read_text().replace(
        "J = M", "J = M + 1")
    with pytest.raises(GradientUnsupported, match="already uses"):
        gradient(einsumattn.load(text))
