"""Property-based tests over random valid specs (`tests/spec_generator.py`) and fuzzing of
the parser.

(a) every generated spec loads and the oracle evaluates it on small random sizes, with
    outputs of the right shape and no NaN; the IR agrees with the generator on each
    Einsum's reduction; the CLI's parse / eval / analyze succeed on it;
(b) the oracle agrees with independent computations: `numpy.einsum` and `torch.einsum`
    for single contractions, `numpy.einsum` step by step for sum-only cascades, and
    the generator's own numpy evaluator (`spec_generator.reference_evaluate`, with its
    own account of absent points) for every generated cascade;
(c) absent points: filters that remove everything, causal masks with fully masked
    rows, out-of-range reads, the worked examples of docs/language.md 2.7-2.8;
(d) parse/load of arbitrary text (random text, random bytes, token soups, mutations of
    valid specs, long flat chains) either succeeds or raises `SpecError`, whose
    rendering names `file:LINE:COL: error:` when it has a span.

Tolerances: the oracle and the references compute in float64 in different orders, so
they differ by rounding only: rtol=1e-9 and an absolute term of 1e-9 times the largest
magnitude involved.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import einsumattn
from einsumattn import SpecError
from einsumattn.diagnostics import BindError
from einsumattn.frontend import parse

try:
    from . import spec_generator as gen
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import spec_generator as gen

# The thorough hypothesis profile scales these counts (tests/conftest.py, README).
from conftest import examples  # noqa: E402
PROPS = settings(max_examples=examples(80), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(max_examples=examples(100), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

RTOL = 1e-9


def _close(actual, expected, what: str, spec_text: str):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != " \
        f"{expected.shape}\n{spec_text}"
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_array_equal(np.isfinite(actual), finite,
                                  err_msg=f"{what}: inf pattern differs\n{spec_text}")
    np.testing.assert_array_equal(actual[~finite], expected[~finite],
                                  err_msg=f"{what}: inf values differ\n{spec_text}")
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=RTOL,
                               atol=1e-9 * scale, err_msg=f"{what}\n{spec_text}")


def _evaluate(spec: gen.GeneratedSpec, sizes, seed=0):
    cascade = einsumattn.load(spec.text)
    inputs = gen.random_inputs(spec, sizes, seed)
    return cascade, inputs, einsumattn.evaluate(cascade, inputs)


# ============================================================================== (a)

@PROPS
@given(spec=gen.cascades(), data=st.data())
def test_generated_spec_loads_and_evaluates(spec, data):
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    cascade, inputs, out = _evaluate(spec, sizes, data.draw(st.integers(0, 2**16)))
    assert tuple(t.name for t in cascade.inputs) == tuple(t.name for t in spec.inputs)
    for got, want in zip(cascade.inputs, spec.inputs):
        assert tuple(got.ranks) == tuple(v.upper() for v in want.vars), spec.text
    assert tuple(cascade.outputs) == spec.outputs
    assert set(out) == set(spec.outputs)
    for name in spec.outputs:
        value = np.asarray(out[name])
        assert value.shape == spec.output_shape(name, sizes), spec.text
        assert not np.isnan(value).any(), f"NaN in {name}\n{spec.text}\nsizes={sizes}"
        if not spec.tensors[name].may_be_inf:
            assert np.isfinite(value).all(), f"inf in {name}\n{spec.text}\nsizes={sizes}"


@PROPS
@given(spec=gen.cascades())
def test_cascade_einsums_match_generator(spec):
    """The IR agrees with the generator on each Einsum's reduction and reduced vars."""
    cascade = einsumattn.load(spec.text)
    by_name = {}
    for e in cascade.einsums:
        by_name.setdefault(e.tensor, e)
    order = [e.tensor for e in cascade.einsums]
    for e in spec.einsums:
        assert e.name in by_name, f"{e.name} missing from cascade.einsums\n{spec.text}"
        got = by_name[e.name]
        if e.kind in ("map", "reduce"):
            assert got.reduce_op == e.op, f"{e.name}: {got.reduce_op} != {e.op}\n{spec.text}"
            assert set(got.reduced) == set(e.reduced), f"{e.name}\n{spec.text}"
        # Dataflow order: every tensor comes after the ones it reads.
        for r in e.reads:
            if r in by_name and r != e.name:
                assert order.index(r) < order.index(e.name), spec.text


@settings(max_examples=examples(30), deadline=None)
@given(spec=gen.cascades(comments=False))
def test_render_round_trip(spec):
    """`spec_generator.render` re-renders a spec from its parts, byte for byte."""
    assert gen.render(spec) == spec.text


# ============================================================================== (b)

@PROPS
@given(spec=gen.contractions(), data=st.data())
def test_single_contraction_matches_numpy_einsum(spec, data):
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    _, inputs, out = _evaluate(spec, sizes, data.draw(st.integers(0, 2**16)))
    (e,) = spec.einsums
    operands = [inputs[a.tensor] for a in e.accesses]
    subscripts = ",".join("".join(a.indices) for a in e.accesses) + "->" + "".join(e.lhs)
    expected = np.einsum(subscripts, *operands)
    _close(out[e.name], expected, f"{e.name} vs np.einsum('{subscripts}')", spec.text)
    # ... and torch.einsum on float64 tensors agrees too (a third opinion).
    expected_t = torch.einsum(subscripts, *[torch.from_numpy(o) for o in operands])
    _close(out[e.name], expected_t.numpy(), "vs torch.einsum", spec.text)


@PROPS
@given(spec=gen.cascades(sum_only=True, min_steps=2), data=st.data())
def test_sum_only_cascade_matches_numpy_einsum(spec, data):
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    _, inputs, out = _evaluate(spec, sizes, data.draw(st.integers(0, 2**16)))
    expected = gen.einsum_reference(spec, inputs, sizes)
    for name in spec.outputs:
        _close(out[name], expected[name], name, spec.text)


@PROPS
@given(spec=gen.cascades(), data=st.data())
def test_oracle_matches_generator_reference(spec, data):
    """Every generated cascade (maps, filters, max/min, recurrences) against the
    generator's own numpy evaluation of its expression trees."""
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    _, inputs, out = _evaluate(spec, sizes, data.draw(st.integers(0, 2**16)))
    expected = gen.reference_evaluate(spec, inputs, sizes)
    for name in spec.outputs:
        _close(out[name], expected[name], f"{name} sizes={sizes}", spec.text)


@settings(max_examples=examples(20), deadline=None)
@given(spec=gen.cascades(), data=st.data())
def test_inputs_as_torch_sequence(spec, data):
    """Inputs given as a sequence of torch tensors in declaration order evaluate the same
    as a dict of numpy arrays."""
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    cascade, inputs, out = _evaluate(spec, sizes)
    seq = [torch.from_numpy(inputs[t.name]) for t in spec.inputs]
    out2 = einsumattn.evaluate(cascade, seq)
    for name in spec.outputs:
        np.testing.assert_array_equal(np.asarray(out2[name]), np.asarray(out[name]))


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=gen.cascades(), data=st.data())
def test_cli_in_process_on_generated_specs(spec, data):
    """`parse`, `eval` and `analyze` of the CLI (in process) succeed on generated specs:
    exit 0, nothing on stderr that says error."""
    import contextlib
    import io
    import tempfile

    from einsumattn.cli import main

    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    shapes = ",".join(f"{r}={n}" for r, n in sizes.items() if r not in spec.fixed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{spec.name}.attn")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(spec.text)
        for argv in (["parse", path], ["eval", path, "--shapes", shapes],
                     ["analyze", path, "--format", "json"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(argv)
            assert status == 0, f"{argv[0]} exit {status}\n{err.getvalue()}\n{spec.text}"
            assert "error" not in err.getvalue(), f"{argv[0]}: {err.getvalue()}\n{spec.text}"


# ============================================================================== (c)

def _eval_text(text, inputs):
    return einsumattn.evaluate(einsumattn.load(text), inputs)


HEAD = "dims P, M\ninput X[p, m]\n"
sizes_pm = st.tuples(st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=examples(25), deadline=None)
@given(pm=sizes_pm, seed=st.integers(0, 1000),
       false_filter=st.sampled_from(["m < 0", "p > P", "m >= M", "p != p",
                                     "m < 0 and p >= 0", "not (m >= 0)"]))
def test_filter_removing_everything(pm, seed, false_filter):
    P, M = pm
    x = np.random.default_rng(seed).uniform(-1, 1, (P, M))
    text = HEAD + f"""
S[p] = sum[m] X[p, m] where {false_filter}
I[p] = X[p, m] where {false_filter}
G[p] = max[m] X[p, m] where {false_filter}
N[p] = min[m] X[p, m] where {false_filter}
EG[p] = exp(G[p])
EN[p] = exp(-N[p])
SG[p] = sigmoid(G[p]) + sigmoid(-N[p])
Y[p, m] = X[p, m] where {false_filter}
YS[p] = sum[m] Y[p, m]
YM[p] = max[m] Y[p, m]
YE[p] = exp(YM[p])
Z[p, m] = Y[p, m] * 2 + 1
output S, I, EG, EN, SG, Y, YS, YE, Z, G, N
"""
    out = _eval_text(text, {"X": x})
    zeros_p, zeros_pm = np.zeros(P), np.zeros((P, M))
    for name in ("S", "I", "EG", "EN", "SG", "YS", "YE"):
        np.testing.assert_array_equal(out[name], zeros_p, err_msg=f"{name}\n{text}")
    for name in ("Y", "Z"):   # absent everywhere: returned as 0
        np.testing.assert_array_equal(out[name], zeros_pm, err_msg=f"{name}\n{text}")
    # G and N, output directly (docs/language.md 2.7): a filter that mentions the
    # reduced m removes terms, and the empty reduction yields its identity (-inf, +inf);
    # one on p alone makes each p absent, returned as 0.
    if "m" in false_filter:
        np.testing.assert_array_equal(out["G"], np.full(P, -np.inf))
        np.testing.assert_array_equal(out["N"], np.full(P, np.inf))
    else:
        np.testing.assert_array_equal(out["G"], zeros_p)
        np.testing.assert_array_equal(out["N"], zeros_p)


@settings(max_examples=examples(25), deadline=None)
@given(pm=sizes_pm, seed=st.integers(0, 1000), shift=st.integers(0, 3))
def test_causal_softmax_fully_masked_rows_are_zero(pm, seed, shift):
    """`where m <= p - shift`: rows p < shift are fully masked and give 0, never NaN;
    the others are an ordinary masked softmax."""
    P, M = pm
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(P, 3)), rng.normal(size=(M, 3)), rng.normal(size=(M, 2))
    text = f"""
dims P, M, E, F
input Q[p, e], K[m, e], V[m, f]
QK[p, m] = Q[p, e] * K[m, e] where m <= p - {shift}
GM[p] = max[m] QK[p, m]
SN[p, m] = exp(QK[p, m] - GM[p])
SD[p] = sum[m] SN[p, m]
A[p, m] = SN[p, m] / SD[p]
AV[p, f] = A[p, m] * V[m, f]
output AV, SD
"""
    out = _eval_text(text, {"Q": q, "K": k, "V": v})
    s = q @ k.T
    mask = np.arange(M)[None, :] <= np.arange(P)[:, None] - shift
    s = np.where(mask, s, -np.inf)
    expected = np.zeros((P, 2))
    expected_sd = np.zeros(P)
    for i in range(P):
        if mask[i].any():
            w = np.exp(s[i] - s[i].max())
            expected_sd[i] = w.sum()
            expected[i] = (w / w.sum()) @ v
    assert not np.isnan(out["AV"]).any()
    _close(out["AV"], expected, "AV", text)
    _close(out["SD"], expected_sd, "SD", text)


def test_filter_on_contraction_masks_left_points():
    """`where m <= p` on an Einsum that also reduces e (the causal mask of LANGUAGE.md's
    first example and of examples/causal_softmax.attn) makes the scores with m > p
    absent, so `max[m]` skips them. If they were present with value 0 (the sum's
    identity over an empty set of e), GM would be 0 wherever p < M - 1."""
    text = """
dims P, M, E
input Q[p, e], K[m, e]
QK[p, m] = Q[p, e] * K[m, e] where m <= p
GM[p] = max[m] QK[p, m]
output GM, QK
"""
    out = _eval_text(text, {"Q": -np.ones((3, 2)), "K": np.ones((3, 2))})
    np.testing.assert_array_equal(out["QK"], [[-2, 0, 0], [-2, -2, 0], [-2, -2, -2]])
    np.testing.assert_array_equal(out["GM"], [-2, -2, -2])


def test_documented_absence_examples():
    """The examples of docs/language.md 2.7-2.8, against values worked out by hand."""
    P, M, E = 3, 3, 2
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (P, M))
    y = rng.uniform(-1, 1, (P, M, E))
    a = rng.uniform(-1, 1, P)
    text = """
dims P, M, E
input X[p, m], Y[p, m, e], A[p]
AB[p] = A[p] where p != 1
QA[p, m] = sum[e] Y[p, m, e]  where m <= p and e < 1
QO[p, m] = sum[e] Y[p, m, e]  where m <= p or e < 1
GM[p]    = max[m] X[p, m]     where m < p
C        = max[m] X[0, m]     where 1 > 2
S1[p]    = sum[m] X[p + 1, m]
S2[p]    = sum[m] X[p, m + 1]
CA[p]    = sum[m] AB[p] * X[p, m]
GA[p]    = max[m] AB[p] + X[p, m]
W[p]     = where(p < 2, A[p], A[p + 10])
W1[p]    = W[p] + 1
output QA, QO, GM, C, S1, S2, CA, GA, W1
"""
    out = _eval_text(text, {"X": x, "Y": y, "A": a})
    causal = np.arange(M)[None, :] <= np.arange(P)[:, None]
    np.testing.assert_allclose(out["QA"], np.where(causal, y[:, :, 0], 0), rtol=RTOL)
    np.testing.assert_allclose(out["QO"], np.where(causal, y.sum(-1), y[:, :, 0]),
                               rtol=RTOL)
    np.testing.assert_allclose(out["GM"], [-np.inf, x[1, 0], x[2, :2].max()], rtol=RTOL)
    assert out["C"] == 0                         # absent: returned as 0
    np.testing.assert_allclose(out["S1"], [x[1].sum(), x[2].sum(), 0], rtol=RTOL)
    np.testing.assert_allclose(out["S2"], x[:, 1:].sum(1), rtol=RTOL)
    ab = np.where(np.arange(P) != 1, a, np.nan)
    np.testing.assert_allclose(out["CA"], np.nan_to_num(ab * x.sum(1)), rtol=RTOL)
    np.testing.assert_allclose(out["GA"], np.nan_to_num(ab + x.max(1)), rtol=RTOL)
    np.testing.assert_allclose(out["W1"], [a[0] + 1, a[1] + 1, 0], rtol=RTOL)


def test_where_branch_absence_depends_on_the_variables_written_in_it():
    """docs/language.md 2.8: a `where(c, a, b)` with a cause of absence is one condition on
    every index variable written inside it. S's where writes m (reduced): at the last p
    its terms are removed (max of nothing: -inf). U's where writes only p: at the last p
    the left point itself is absent (returned as 0)."""
    text = """
dims P, M
input Y[p], Z[m]
S[p] = max[m] where(p >= 0, Y[p + 1], Z[m])
U[p] = max[m] where(p >= 0, Y[p + 1], 0) + Z[m]
output S, U
"""
    y, z = np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0])
    out = _eval_text(text, {"Y": y, "Z": z})
    np.testing.assert_array_equal(out["S"], [2.0, 3.0, -np.inf])
    np.testing.assert_array_equal(out["U"], [8.0, 9.0, 0.0])


@pytest.mark.parametrize("m", [2, 3])
def test_where_branch_absence_does_not_depend_on_other_points(m):
    """At p = 1 the picked branch reads T[2, m], out of range. A where(...) with a cause
    of absence is one condition on every index variable written in it (p and m), so it
    removes terms of the max, and S[1] is max's identity. Whether T is absent somewhere
    else (at m = 2, when M = 3) must not matter: the classification is syntactic."""
    text = """
dims P, M
input X[p, m]
T[p, m] = X[p, m] where m < 2
S[p] = max[m] where(p >= 0, T[p + 1, m], 0)
output S
"""
    out = _eval_text(text, {"X": np.ones((2, m))})
    np.testing.assert_array_equal(out["S"], [1.0, -np.inf])


@settings(max_examples=examples(25), deadline=None)
@given(m=st.integers(1, 6), seed=st.integers(0, 1000), shift=st.integers(1, 3))
def test_out_of_range_access_is_absent(m, seed, shift):
    x = np.random.default_rng(seed).uniform(-1, 1, m)
    text = f"""
dims M
input X[m]
D[m] = X[m + {shift}] - X[m]
S = sum[m] X[m + {shift}]
L = max[m] X[m - {shift}]
EL = exp(tanh(L) * 0 + L)
output D, S, L, EL
"""
    out = _eval_text(text, {"X": x})
    d = np.zeros(m)
    d[:max(0, m - shift)] = x[shift:] - x[:max(0, m - shift)]
    np.testing.assert_allclose(out["D"], d, rtol=RTOL, atol=1e-12, err_msg=text)
    np.testing.assert_allclose(out["S"], x[shift:].sum(), rtol=RTOL, atol=1e-12)
    want_l = x[:max(0, m - shift)].max() if m > shift else -np.inf
    assert out["L"] == want_l
    # exp(-inf) is 0; tanh(-inf) * 0 would be NaN if the identity leaked a NaN.
    np.testing.assert_allclose(out["EL"], math.exp(want_l), rtol=RTOL)


def test_generated_absent_reference_spot_check():
    """A fixed generated-style cascade whose filters empty some rows entirely."""
    text = """
dims P, M
input X[p, m]
T1[p] = max[m] X[p, m] where p - m > 2
T2[p] = sigmoid(T1[p])
T3[p, m] = X[p, m] where m < 0
T4[p] = sum[m] T3[p, m] + 1
output T2, T4
"""
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    out = _eval_text(text, {"X": x})
    t1 = np.array([max((x[p, m] for m in range(3) if p - m > 2), default=-np.inf)
                   for p in range(5)])
    np.testing.assert_allclose(out["T2"], 1 / (1 + np.exp(-t1)), rtol=RTOL)
    # T3 is absent everywhere; T4's points are all absent, so the sum has no present
    # point: 0 (the sum runs over the whole right-hand side, `T3 + 1`).
    np.testing.assert_array_equal(out["T4"], np.zeros(5))


# ============================================================================== (d)

LONG_CHAINS = {
    "sum of scalars": lambda n: "input a\nY = " + " + ".join(["a"] * n) + "\noutput Y\n",
    "product of accesses": lambda n: "dims M\ninput a[m]\nY[m] = "
    + " * ".join(["a[m]"] * n) + "\noutput Y\n",
    "and in a filter": lambda n: "dims M\ninput X[m]\nY[m] = X[m] where "
    + " and ".join(["m < 3"] * n) + "\noutput Y\n",
    "or in a filter": lambda n: "dims M\ninput X[m]\nY[m] = X[m] where "
    + " or ".join(["m < 3"] * n) + "\noutput Y\n",
    "affine index": lambda n: "dims M\ninput X[m]\nY[m] = X["
    + " + ".join(["m"] * n) + "]\noutput Y\n",
    "param default": lambda n: "input x\nparam c = " + " + ".join(["1"] * n)
    + "\nY = x * c\noutput Y\n",
}


@pytest.mark.parametrize("kind", sorted(LONG_CHAINS))
def test_load_long_flat_chain(kind):
    """A long left-associative chain (flat in the grammar, a deep left-leaning tree after
    folding) is loaded and evaluated, or rejected with a SpecError: never a
    RecursionError from a recursive walk of the tree."""
    text = LONG_CHAINS[kind](1000)
    try:
        cascade = einsumattn.load(text)
    except SpecError as err:
        assert err.render().startswith("<spec>")
        return
    inputs = [np.ones((3,) * len(t.ranks)) for t in cascade.inputs]
    try:
        einsumattn.evaluate(cascade, inputs)
    except SpecError:
        pass

SPAN_RE = re.compile(r":(\d+):(\d+): error: ")


def _check_parse_and_load(text: str) -> None:
    """parse/load either succeed or raise SpecError, rendered with file:line:col."""
    for fn, label in ((lambda t: parse(t, "fuzz.attn"), "parse"),
                      (einsumattn.load, "load")):
        if label == "load" and len(text) < 4096 and os.path.isfile(text):
            continue  # an existing file's path is read as that file
        try:
            fn(text)
        except SpecError as err:
            rendered = err.render()
            assert isinstance(rendered, str) and "error:" in rendered
            if err.span is not None:
                m = SPAN_RE.search(rendered.splitlines()[0])
                assert m, f"{label}: span but no :LINE:COL: in {rendered!r}"
                assert (int(m.group(1)), int(m.group(2))) == (err.span.line,
                                                             err.span.column), rendered
                assert err.span.line >= 1 and err.span.column >= 1


@FUZZ
@given(st.text(max_size=300))
@example("")
@example("\n\n\n")
@example("# only a comment")
@example("output")
@example("X[")
@example("X[p] = ")
@example("dims M\ninput X[m]\nY = sum[m] X[m]\noutput Y\noutput Y")
@example("Y = max[m]")
@example("\r\r\r")
@example("\u2028\u2029\x0c\x0b")
@example("1e999999")
@example("dims M = 99999999999999999999999999\ninput X[m]\nY[m] = X[m]\noutput Y")
def test_parse_random_text(text):
    _check_parse_and_load(text)


@FUZZ
@given(st.binary(max_size=400))
def test_parse_random_bytes(data):
    _check_parse_and_load(data.decode("utf-8", errors="replace"))


TOKENS = (
    "attention", "dims", "input", "param", "split", "init", "output", "where", "and",
    "or", "not", "sum", "max", "min", "inf", "exp", "log", "sqrt", "tanh", "sigmoid",
    "relu", "elu", "abs", "sign", "by", "->", "X", "Y", "Q", "K", "T", "b", "p", "m",
    "m1", "m0", "M", "P", "M1", "M0", "E", "0", "1", "2", "0.5", "1e-6", "64", "+", "-",
    "*", "/", "//", "%", "**", "<", "<=", ">", ">=", "==", "!=", "=", ",", "(", ")",
    "[", "]", "\n", "\n", "\n", " ", " ", "# c", "\t",
)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.sampled_from([" ", ""]))
def test_parse_token_soup(tokens, sep):
    _check_parse_and_load(sep.join(tokens))


@st.composite
def _mutated_spec(draw):
    spec = draw(gen.cascades())
    text = spec.text
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        kind = draw(st.integers(0, 4))
        if kind == 0:                                   # delete a character
            text = text[:i] + text[i + 1:]
        elif kind == 1:                                 # duplicate a character
            text = text[:i] + text[i] + text[i:]
        elif kind == 2 and i + 1 < len(text):           # swap neighbours
            text = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        elif kind == 3:                                 # delete a run
            j = draw(st.integers(i, min(len(text), i + 12)))
            text = text[:i] + text[j:]
        else:                                           # insert a token
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
    return spec, text


@FUZZ
@given(_mutated_spec())
def test_parse_mutated_valid_specs(spec_and_text):
    _, text = spec_and_text
    _check_parse_and_load(text)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_mutated_spec())
def test_mutated_spec_that_loads_also_evaluates(spec_and_text):
    """A mutated spec that still loads is evaluated on inputs of the declared ranks (size
    2 unless fixed): it returns arrays, or raises SpecError, or BindError (inputs that
    do not fit, e.g. a shape that cannot bind), never another exception."""
    spec, text = spec_and_text
    try:
        cascade = einsumattn.load(text)
    except SpecError:
        return
    dims_lines = [line for line in text.splitlines() if line.startswith("dims")]
    fixed = {m.group(1): int(m.group(2)) for line in dims_lines
             for m in re.finditer(r"\b([A-Z][A-Za-z0-9_]*)\s*=\s*(\d+)", line)}
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, size=tuple(min(fixed.get(r, 2), 6) for r in t.ranks))
              for t in cascade.inputs]
    try:
        out = einsumattn.evaluate(cascade, inputs)
    except SpecError as err:
        assert "error:" in err.render()
        return
    except BindError as err:
        assert str(err)
        return
    for name in cascade.outputs:
        assert isinstance(np.asarray(out[name]), np.ndarray)
