"""The oracle's semantics, rule by rule (LANGUAGE.md: absent points, reductions,
recurrences, splits, numbers), each against an independent computation."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn import BindError


def run(text, inputs, params=None, **kw):
    return einsumattn.evaluate(einsumattn.load(text), inputs, params, **kw)


def test_out_of_range_reads_are_absent_and_skipped_by_sums():
    # Shifted read: Y[p] = X[p+1] + 1 is absent at the last p, returned as 0; the sum skips it.
    out = run("dims P\ninput X[p]\nY[p] = X[p + 1] + 1\nS = sum[p] X[p + 1] + 1\noutput Y, S",
              {"X": np.array([1.0, 2.0, 3.0])})
    np.testing.assert_array_equal(out["Y"], [3.0, 4.0, 0.0])
    assert out["S"] == 7.0


def test_reduction_over_no_present_point_yields_its_identity():
    text = """
dims P, M
input X[p, m]
GM[p] = max[m] X[p, m] where m < p
GN[p] = min[m] X[p, m] where m < p
GS[p] = sum[m] X[p, m] where m < p
output GM, GN, GS
"""
    out = run(text, {"X": np.ones((2, 2))})
    assert out["GM"][0] == -math.inf and out["GN"][0] == math.inf and out["GS"][0] == 0.0
    assert (out["GM"][1], out["GN"][1], out["GS"][1]) == (1.0, 1.0, 1.0)


def test_fully_masked_softmax_row_is_zero_not_nan():
    text = """
dims P, M, F
input S[p, m], V[m, f]
QK[p, m] = S[p, m] where m < p
GM[p] = max[m] QK[p, m]
SN[p, m] = exp(QK[p, m] - GM[p])
SD[p] = sum[m] SN[p, m]
AV[p, f] = SN[p, m] / SD[p] * V[m, f]
output AV
"""
    s, v = np.random.default_rng(0).standard_normal((3, 3)), np.ones((3, 2))
    out = run(text, [s, v])["AV"]
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], [0.0, 0.0])
    np.testing.assert_allclose(out[1:], 1.0)


def test_where_needs_only_the_branch_it_picks():
    text = "dims P\ninput X[p]\nY[p] = where(p < 2, X[p], X[p + 10])\noutput Y"
    out = run(text, {"X": np.array([5.0, 6.0, 7.0])})["Y"]
    np.testing.assert_array_equal(out, [5.0, 6.0, 0.0])  # p = 2 picks an absent read


def test_filters_may_read_integer_tensors():
    # Document masking: keys of the same document only (a tensor read in a filter).
    text = """
dims P, M
input S[p, m], DOC[m]
T[p] = sum[m] S[p, m] where DOC[p] == DOC[m]
output T
"""
    s = np.arange(16, dtype=float).reshape(4, 4)
    doc = torch.tensor([0, 0, 1, 1], dtype=torch.int64)
    same = (doc[:, None] == doc[None, :]).numpy()
    np.testing.assert_array_equal(run(text, [s, doc])["T"], (s * same).sum(1))


def test_split_padding_points_are_absent():
    # M = 5 split by 2: (m1, m0) = (2, 1) is position 5, outside M.
    text = """
dims P, M, E
input Q[p, e], K[m, e]
split M -> M1, M0 by 2
S[p, m1, m0] = Q[p, e] * K[m1*M0 + m0, e]
C[p] = sum[m1, m0] 1 + 0 * S[p, m1, m0]
L[p, m1] = max[m0] S[p, m1, m0]
output S, C, L
"""
    q, k = np.ones((1, 2)), -np.ones((5, 2))
    out = run(text, [q, k])
    assert out["S"].shape == (1, 3, 2) and out["S"][0, 2, 1] == 0.0   # absent -> 0
    assert out["C"][0] == 5.0                     # 6 points of M1 x M0, 5 of them in M
    np.testing.assert_array_equal(out["L"], [[-2.0, -2.0, -2.0]])  # not max(-2, 0)


def test_recurrence_reads_earlier_positions_of_itself():
    # Fibonacci-like: T[x+1] = T[x] + T[x-1] (T[-1] is absent, so step 0 is absent too).
    text = """
dims X
input A[x]
init T[0] = 1
T[x+1] = T[x] + where(x > 0, T[x - 1], 0) + 0 * A[x]
output T
"""
    out = run(text, {"A": np.zeros(6)})["T"]
    np.testing.assert_array_equal(out, [1, 1, 2, 3, 5, 8, 13])


def test_recurrence_final_value_read_by_rank_name():
    text = """
dims B, T
input G[b, t], X[b, t]
init S[b, 0] = 0
S[b, t+1] = G[b, t] * S[b, t] + X[b, t]
F[b] = S[b, T]
output F
"""
    g, x = np.random.default_rng(1).random((2, 2, 5))
    expected = np.zeros(2)
    for t in range(5):
        expected = g[:, t] * expected + x[:, t]
    np.testing.assert_allclose(run(text, [g, x])["F"], expected, rtol=1e-14)


def test_scalars_inputs_and_tensors():
    text = "dims K\ninput A[k], B[k], alpha\nY = A[k] * B[k]\nZ = Y * alpha\noutput Z"
    out = run(text, [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.float64(0.5)])
    assert out["Z"] == pytest.approx(5.5)


def test_integer_division_and_modulo_follow_python():
    text = "dims P\ninput X[p]\nY[p] = (p - 3) // 2 + 10 * ((p - 3) % 2) + 0 * X[p]\noutput Y"
    out = run(text, {"X": np.zeros(6)})["Y"]
    np.testing.assert_array_equal(out, [(p - 3) // 2 + 10 * ((p - 3) % 2) for p in range(6)])


@pytest.mark.parametrize("func, reference", [
    ("exp", np.exp), ("tanh", np.tanh), ("abs", np.abs), ("sign", np.sign),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))), ("relu", lambda x: np.maximum(x, 0)),
    ("elu", lambda x: torch.nn.functional.elu(torch.from_numpy(x)).numpy()),
])
def test_functions(func, reference):
    x = np.array([-3.0, -0.5, 0.0, 0.25, 4.0])
    out = run(f"dims P\ninput X[p]\nY[p] = {func}(X[p])\noutput Y", [x])["Y"]
    np.testing.assert_allclose(out, reference(x), rtol=1e-15, atol=0)


def test_sigmoid_does_not_overflow():
    out = run("dims P\ninput X[p]\nY[p] = sigmoid(X[p])\noutput Y", [np.array([-1e4, 1e4])])
    np.testing.assert_array_equal(out["Y"], [0.0, 1.0])


def test_inputs_of_any_float_dtype_are_evaluated_in_float64():
    x = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    out = run("dims P\ninput X[p]\nY[p] = X[p] / 3\noutput Y", [x])["Y"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.array([1.0, 2.0]) / 3)


def test_intermediates_are_available_on_request():
    out = run("dims P\ninput X[p]\nY[p] = X[p] + 1\nZ[p] = Y[p] * 2\noutput Z",
              [np.ones(2)], intermediates=True)
    assert set(out) == {"X", "Y", "Z"}


def test_input_errors_are_clear():
    cascade = einsumattn.load("dims P\ninput X[p], W[p]\nY[p] = X[p] * W[p]\noutput Y")
    with pytest.raises(BindError, match="expected 2 inputs"):
        einsumattn.evaluate(cascade, [np.ones(2)])
    with pytest.raises(BindError, match="missing input 'W'"):
        einsumattn.evaluate(cascade, {"X": np.ones(2)})
    with pytest.raises(BindError, match="rank P is 3 from input W"):
        einsumattn.evaluate(cascade, [np.ones(2), np.ones(3)])


def test_filter_on_a_contraction_masks_the_left_point():
    # QK sums over e; `where m <= p` involves no reduced variable, so it removes the (p, m)
    # point itself (causal masking), instead of leaving an empty sum of 0.
    text = """
dims P, M, E
input A[p, e], B[m, e]
X[p, m] = A[p, e] * B[m, e]  where m <= p
Y[p, m] = exp(X[p, m])
output Y
"""
    out = run(text, [np.ones((2, 1)), np.ones((3, 1))])["Y"]
    np.testing.assert_array_equal(out, [[math.e, 0, 0], [math.e, math.e, 0]])


def test_conditions_on_the_point_versus_on_the_terms():
    # A condition on p alone makes G[p] absent (returned as 0); a condition involving the
    # reduced m only skips terms, and a row with none yields max's identity, -inf.
    # `and` splits a filter into conditions that are judged separately.
    text = """
dims P, M
input X[p, m]
G[p] = max[m] X[p, m] where m < p and p < 2
output G
"""
    out = run(text, [np.full((3, 3), 5.0)])["G"]
    np.testing.assert_array_equal(out, [-math.inf, 5.0, 0.0])


def test_absent_factor_on_the_left_point_propagates_through_a_sum():
    # Z[p + 1] is out of range at the last p for every m: the sum at that p is absent.
    text = "dims P, M\ninput X[p, m], Z[p]\nY[p] = X[p, m] * Z[p + 1]\noutput Y"
    out = run(text, [np.ones((2, 3)), np.array([1.0, 2.0])], intermediates=False)["Y"]
    np.testing.assert_array_equal(out, [6.0, 0.0])


def test_where_inside_a_reduction_drops_only_the_terms_that_pick_an_absent_branch():
    # At p = 1, A2[p + 1] is out of range; only the m = 0 term picks it.
    text = "dims P, M\ninput A2[p], X[p, m]\nWH[p] = sum[m] where(m < 1, A2[p + 1], X[p, m])\n" \
           "output WH"
    out = run(text, [np.ones(2), np.full((2, 3), 2.0)])["WH"]
    np.testing.assert_array_equal(out, [1.0 + 2.0 + 2.0, 2.0 + 2.0])


# ------------------------------------------------------------------ memory

SOFTMAX = (Path(__file__).resolve().parent.parent / "examples" / "softmax_3pass.attn")


def test_a_case_past_the_memory_limit_is_refused_before_anything_is_allocated(
        monkeypatch):
    """The estimate comes from the shapes alone: inputs that would take terabytes to
    convert (zero-copy broadcast views here) are never converted, and no Einsum runs."""
    import importlib

    oracle = importlib.import_module("einsumattn.evaluate")  # the name is the function

    def never(*args, **kwargs):
        raise AssertionError("allocated before refusing")

    monkeypatch.setattr(oracle, "_to_numpy", never)
    monkeypatch.setattr(oracle, "_evaluate_einsum", never)
    cascade = einsumattn.load(SOFTMAX)
    b, h, p, m, e, f = 64, 64, 4096, 4096, 128, 128
    inputs = [np.broadcast_to(np.float64(0), shape)
              for shape in ((b, h, p, e), (b, h, m, e), (b, h, m, f))]
    with pytest.raises(BindError) as caught:
        einsumattn.evaluate(cascade, inputs, max_bytes=2**40)
    message = str(caught.value)
    assert "the largest array: the iteration space of QK (b, h, p, m, e), 64 TiB" in message
    assert "more than the limit of 1 TiB" in message
    assert "EINSUMATTN_EVAL_MEMORY" in message


@pytest.mark.parametrize("path", sorted(SOFTMAX.parent.glob("*.attn")),
                         ids=lambda p: p.stem)
def test_the_memory_estimate_bounds_what_the_oracle_allocates(path):
    """numpy reports its allocations to tracemalloc: the peak of a whole evaluation stays
    under the estimate (which also counts the inputs, already allocated here)."""
    import tracemalloc

    from einsumattn.evaluate import estimate_memory
    from einsumattn.ir import bind
    from einsumattn.verify import drawn_ranks

    cascade = einsumattn.load(path)
    free = {r: 5 for r in drawn_ranks(cascade)}
    binding = bind(cascade, sizes=free)
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.standard_normal(binding.extent(cascade, t.name))
              for t in cascade.inputs}
    tracemalloc.start()
    try:
        einsumattn.evaluate(cascade, inputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate_memory(cascade, binding)[0]


@pytest.mark.parametrize("text, expected", [("2G", 2 * 2**30), ("512m", 512 * 2**20),
                                            ("1.5GB", 3 * 2**29), ("1000", 1000)])
def test_the_memory_limit_is_read_from_the_environment(text, expected, monkeypatch):
    from einsumattn.evaluate import memory_limit

    monkeypatch.setenv("EINSUMATTN_EVAL_MEMORY", text)
    assert memory_limit() == expected


def test_a_memory_limit_that_is_not_a_size_is_a_bind_error(monkeypatch):
    monkeypatch.setenv("EINSUMATTN_EVAL_MEMORY", "lots")
    with pytest.raises(BindError, match="is not a size"):
        run("dims P\ninput X[p]\nY[p] = X[p]\noutput Y", [np.ones(2)])
    monkeypatch.setenv("EINSUMATTN_EVAL_MEMORY", "100")
    with pytest.raises(BindError, match="more than the limit of 100 bytes"):
        run("dims P\ninput X[p]\nY[p] = X[p]\noutput Y", [np.ones(200)])


# ------------------------------------------------------------------ numbers

def test_the_largest_exact_integers_compile_and_run_on_torch():
    """The boundary of the integer rule (2**53, as a literal, a param default and an
    integer step) and a large float written as a decimal: the torch backend runs them
    without OverflowError and agrees with the oracle."""
    text = ("dims P, E\ninput Q[p, e]\nparam big = 2 ** 52 * 2\n"
            "Y[p, e] = elu(Q[p, e]) + 9007199254740992 / big + 1e23 * 0 + 2.0 ** 100 / 1e30\n"
            "output Y\n")
    module = einsumattn.compile(text, backend="torch")
    q = torch.randn(3, 4)
    got = module.attention(q, backend="torch")
    expected = einsumattn.evaluate(einsumattn.load(text), [q])["Y"]
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=1e-6)
    x = q.double().numpy()
    assert np.allclose(expected, np.where(x > 0, x, np.expm1(x)) + 1 + 2.0 ** 100 / 1e30)


# ------------------------------------------------------------------ index divisors

GQA_PAPER = (SOFTMAX.parent / "gqa.attn").read_text().replace("h * KH // H", "h // (H // KH)")


def _gqa_inputs(h, kh, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, h, 3, 4)), rng.standard_normal((2, kh, 5, 4)),
            rng.standard_normal((2, kh, 5, 3))]


def _softmax_attention(q, k, v, group):
    """Softmax attention where query head h reads kv head group(h), absent (0) past the
    kv heads: written out in numpy, independently of the cascade."""
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    for head in range(q.shape[1]):
        kv = group(head)
        if kv >= k.shape[1]:
            continue
        scores = np.einsum("bpe,bme->bpm", q[:, head], k[:, kv]) / np.sqrt(q.shape[-1])
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[:, head] = np.einsum("bpm,bmf->bpf", weights, v[:, kv])
    return out


@pytest.mark.parametrize("h, kh", [(4, 2), (6, 3), (4, 4), (4, 1), (5, 2)])
def test_gqa_as_papers_write_it(h, kh):
    """K[b, h // (H // KH), m, e]: query head h reads kv head h // (H / KH); with H = 5,
    KH = 2 the last head reads kv head 2, outside K, and its rows are absent (0)."""
    q, k, v = _gqa_inputs(h, kh)
    got = run(GQA_PAPER, [q, k, v])["AV"]
    expected = _softmax_attention(q, k, v, lambda head: head // (h // kh))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_gqa_as_papers_write_it_refuses_fewer_query_heads_than_kv_heads():
    with pytest.raises(BindError, match=r"'H // KH' in K\[b, h // \(H // KH\), m, e\] is 0 "
                                        r"at H=2, KH=4"):
        run(GQA_PAPER, _gqa_inputs(2, 4))


def test_gqa_as_papers_write_it_compiles_and_agrees_on_torch():
    module = einsumattn.compile(GQA_PAPER, backend="torch")
    cascade = einsumattn.load(GQA_PAPER)
    for h, kh in ((4, 2), (5, 2)):
        inputs = [torch.tensor(x, dtype=torch.float32) for x in _gqa_inputs(h, kh, seed=h)]
        got = module.gqa(*inputs, backend="torch").double().numpy()
        expected = einsumattn.evaluate(cascade, inputs)["AV"]
        # float32 against float64 on outputs of order 1: a few roundings of 2**-24 each.
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"'H // KH' .* is 0 at H=2, KH=4"):
        module.gqa(*[torch.tensor(x, dtype=torch.float32) for x in _gqa_inputs(2, 4)],
                   backend="torch")


def test_check_cases_respect_the_divisors():
    """`einsumattn check` draws sizes for every free rank: only those the spec allows."""
    from hypothesis import given, settings

    from einsumattn.verify import cases

    cascade = einsumattn.load(GQA_PAPER)

    @settings(max_examples=40, deadline=None, database=None)
    @given(cases(cascade))
    def drawn(case):
        assert case.sizes["H"] >= case.sizes["KH"]

    drawn()
