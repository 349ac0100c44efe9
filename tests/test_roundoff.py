"""Half-precision tl.dot operands and the roundoff bound that judges them.

The fused kernels feed tl.dot in the inputs' precision (tensor cores with float16 and
bfloat16 inputs); a computed operand (P of P V) is rounded. The equivalence check widens
its tolerance by exactly the first-order reach of those roundings, computed by the oracle
on an extended cascade (analysis/roundoff.py). These tests check the bound itself (it
equals the closed form for a dot and for softmax attention, it holds for simulated
roundings and is not vacuous, each elementwise rule matches a finite difference), what
the kernels round, and that a kernel rounding more than it says fails the check.
"""

import math

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.analysis.roundoff import roundoff_cascade
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.evaluate import evaluate
from einsumattn.transform import rewrite
from einsumattn.verify import (UNIT_ROUNDOFF, Case, case_inputs, compare, dot_rounding,
                               run_check)

from conftest import ROOT

DOT = """attention dot
dims P, M, F
input S[p, m], V[m, f]
X[p, m] = exp(S[p, m])
N[p, f] = sum[m] X[p, m] * V[m, f]
output N
"""


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float64 -> bfloat16 (round to nearest even), back as float64 (through torch)."""
    return torch.from_numpy(x).to(torch.bfloat16).double().numpy()


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64) if dtype == "float16" else _round_bf16(x)


def test_the_bound_of_a_dot_is_u_times_the_sum_of_absolute_products():
    cascade = einsumattn.load(DOT)
    u = UNIT_ROUNDOFF["bfloat16"]
    extended, names = roundoff_cascade(cascade, {"N": u})
    rng = np.random.default_rng(0)
    s, v = rng.normal(size=(5, 7)), rng.normal(size=(7, 3))
    bound = evaluate(extended, {"S": s, "V": v})[names["N"]]
    np.testing.assert_allclose(bound, u * np.exp(s) @ np.abs(v), rtol=1e-12)


def test_an_unrounded_cascade_has_no_bound_tensors():
    cascade = einsumattn.load(DOT)
    extended, names = roundoff_cascade(cascade, {})
    assert names == {} and len(extended.einsums) == len(cascade.einsums)
    with pytest.raises(ValueError, match="no Einsum defines Z"):
        roundoff_cascade(cascade, {"Z": 1e-3})


@pytest.mark.parametrize("spec", ["softmax_3pass", "causal_softmax"])
def test_the_bound_through_the_online_softmax_is_the_closed_form(spec):
    """Rounding LSNV's P tile in the derived cascade (running max, rescaled running sums,
    a division at the end) reaches the output as u * sum_m P |V| / sum_m P: the
    recurrence's rescaling and the final division are followed exactly."""
    cascade = einsumattn.load(ROOT / "examples" / f"{spec}.attn")
    derived = rewrite(cascade, tile=4).cascade
    u = UNIT_ROUNDOFF["float16"]
    extended, names = roundoff_cascade(derived, {"LSNV": u})
    rng = np.random.default_rng(1)
    b, h, p, m, e, f = 1, 2, 6, 11, 5, 3
    q, k, v = (rng.normal(size=s) * 3 for s in ((b, h, p, e), (b, h, m, e), (b, h, m, f)))
    bound = evaluate(extended, {"Q": q, "K": k, "V": v})[names["AV"]]
    scores = np.einsum("bhpe,bhme->bhpm", q, k) / math.sqrt(e)
    if spec == "causal_softmax":
        scores = np.where(np.arange(m)[None, :] <= np.arange(p)[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(bound, u * np.einsum("bhpm,bhmf->bhpf", weights, np.abs(v)),
                               rtol=1e-9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_bound_holds_for_simulated_roundings_and_is_not_vacuous(dtype):
    """Round the weights A of AV = sum A V to the dtype by hand (float64 otherwise): the
    change of the output stays within the bound at every element, and reaches a fair
    part of it somewhere."""
    cascade = einsumattn.load(ROOT / "examples" / "softmax_3pass.attn")
    u = UNIT_ROUNDOFF[dtype]
    extended, names = roundoff_cascade(cascade, {"AV": u})
    ratios = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        q, k, v = (rng.normal(size=(1, 2, 9, 16)) * 2 for _ in range(3))
        values = evaluate(extended, {"Q": q, "K": k, "V": v}, intermediates=True)
        exact = values["AV"]
        rounded = np.einsum("bhpm,bhmf->bhpf", _round(values["A"], dtype), v)
        change, bound = np.abs(rounded - exact), values[names["AV"]]
        assert np.all(change <= bound * (1 + 1e-9)), float((change / bound).max())
        ratios.append(float((change / bound).max()))
    assert max(ratios) > 0.3      # measured 0.58 to 0.80: the bound is what rounding does


# Elementwise rules against a central difference: Y = f(X), X = A * 1 rounded by u.
RULES = {
    "exp": ("exp(X[p])", lambda x: np.exp(x), (-3, 3)),
    "log": ("log(X[p])", np.log, (0.1, 5)),
    "sqrt": ("sqrt(X[p])", np.sqrt, (0.1, 5)),
    "tanh": ("tanh(X[p])", np.tanh, (-3, 3)),
    "sigmoid": ("sigmoid(X[p])", lambda x: 1 / (1 + np.exp(-x)), (-3, 3)),
    "power": ("X[p] ** 3", lambda x: x ** 3, (-3, 3)),
    "quotient": ("1 / X[p]", lambda x: 1 / x, (0.5, 3)),
    "product": ("X[p] * X[p]", lambda x: x * x, (-3, 3)),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_elementwise_rule_is_the_derivative(rule):
    body, fn, (lo, hi) = RULES[rule]
    cascade = einsumattn.load(f"dims P\ninput A[p]\nX[p] = A[p] * 1.0\nY[p] = {body}\n"
                              f"output Y\n")
    u = 1e-6
    extended, names = roundoff_cascade(cascade, {"X": u})
    a = np.linspace(lo, hi, 12)   # no point at 0: the step below is relative
    bound = evaluate(extended, {"A": a})[names["Y"]]
    h = 1e-6 * np.abs(a)
    slope = np.abs(fn(a + h) - fn(a - h)) / (2 * h)
    # X * X rounds X once (the same value twice): |2 X| u |X|, which is the derivative.
    np.testing.assert_allclose(bound, slope * u * np.abs(a), rtol=1e-5, atol=1e-15)


# ---------------------------------------------------------------- what the kernels round
@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roundoff")
    return import_file(compile_to_file(ROOT / "examples" / "causal_softmax.attn", folder),
                       "roundoff_causal")


def test_only_computed_dot_operands_are_rounded(causal):
    """QK = Q K^T takes two input tiles (exact in their own dtype); P V rounds P."""
    assert causal.DOT_ROUNDING == {"LSNV": 1}
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    from einsumattn.backends.module import Plan
    from einsumattn.schedule import kernel_ir as k
    (kernel,) = Plan(cascade).triton.fused
    dots = [node for node in k.nodes(kernel.body) if isinstance(node, k.Dot)]
    # Two per copy of the step (the loop without masks, the one with them).
    assert sorted(dot.rounded for dot in dots) == [0, 0, 1, 1]
    # The input tiles enter their dot as stored (Q converted once, before the loop),
    # by TMA or through pointers (the host's flag: both forms are in the kernel).
    loads = [node for dot in dots for node in k.nodes((dot.left, dot.right))
             if isinstance(node, k.Load)]
    assert [load.tensor for load in loads if load.raw] == ["K_", "K_", "V_", "V_"] * 2
    assert all(load.raw for load in loads if load.tensor in ("K_", "V_"))
    rounding = dot_rounding(cascade, causal)
    assert set(rounding.operands) <= {e.tensor for e in rounding.cascade.einsums}


def test_dot_precision_follows_the_inputs(causal):
    tl = pytest.importorskip("triton.language")
    half = torch.zeros(2, dtype=torch.float16)
    assert causal._dot_dtype(half, half) == tl.float16
    assert causal._dot_dtype(half.bfloat16(), half.bfloat16()) == tl.bfloat16
    assert causal._dot_dtype(half, half.float()) == tl.float32   # mixed: no rounding
    assert causal._dot_dtype(half.float()) == tl.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_kernels_agree_with_the_oracle(causal, dtype):
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    rounding = dot_rounding(cascade, causal)
    for seed, scale in ((0, 1.0), (1, 10.0)):
        sizes = {"B": 1, "H": 2, "P": 19, "M": 23, "E": 8, "F": 5}
        inputs = case_inputs(cascade, Case(sizes, dtype, scale, seed % 2 == 0, seed))
        out = causal.CausalSoftmax(backend="triton")(*inputs.values())
        results = compare(cascade, inputs, out, dtype, rounding=rounding)
        assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_kernel_rounding_more_than_it_says_fails(tmp_path):
    """float16 inputs, but the kernel's dot rounds P to bfloat16 (8 times coarser): the
    tolerance, which allows float16's rounding of P, must reject it."""
    path = compile_to_file(ROOT / "examples" / "softmax_3pass.attn", tmp_path)
    source = path.read_text()
    honest = "    if dtypes == {torch.float16}:\n        return tl.float16"
    assert honest in source
    broken = tmp_path / "coarse_dot.py"
    broken.write_text(source.replace(honest, "    if dtypes == {torch.float16}:\n"
                                             "        return tl.bfloat16"))
    module = import_file(broken, "coarse_dot")
    cascade = einsumattn.load(ROOT / "examples" / "softmax_3pass.attn")
    rounding = dot_rounding(cascade, module)
    failed = 0
    for seed in range(3):
        inputs = case_inputs(cascade, Case({"B": 1, "H": 2, "P": 16, "M": 16, "E": 8,
                                            "F": 8}, "float16", 1.0, True, seed))
        out = module.Softmax3pass(backend="triton")(*inputs.values())
        failed += not all(r.ok for r in compare(cascade, inputs, out, "float16",
                                                rounding=rounding))
    assert failed == 3


def test_check_reports_half_precision_cases(causal):
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    reports = []
    assert run_check(cascade, causal, ("triton",), examples=8, report=reports.append), \
        "\n".join(reports)
    assert any("float16" in line or "bfloat16" in line for line in reports)
