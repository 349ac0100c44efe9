"""Dims sized by other dims (LANGUAGE.md 1.1): `dims P = M, G = H // KH`. The grammar
and its diagnostics, the size as a sympy expression, the printed cascade parsing back
equal, binding in the oracle and in the generated module (computed, never bound from
an input; an input that disagrees is an error naming both), and causal self-attention
and GQA end to end: compile, check, and each backend against the float64 oracle."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import sympy
import torch

import einsumattn
from einsumattn import BindError, SpecError
from einsumattn.cli import main
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.evaluate import evaluate
from einsumattn.frontend import ast, parse
from einsumattn.ir import bind
from einsumattn.ir.build import size_symbol
from einsumattn.ir.printer import cascade_text
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

from conftest import compiled_specs

# Causal self-attention over one sequence: queries p and keys m bind one size.
SELF = """\
attention self_causal

dims  B, H, M, E, F, P = M
input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]
param scale = 1 / sqrt(E)

QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e] * scale  where m <= p
GM[b, h, p]    = max[m] QK[b, h, p, m]
SN[b, h, p, m] = exp(QK[b, h, p, m] - GM[b, h, p])
SD[b, h, p]    = sum[m] SN[b, h, p, m]
A[b, h, p, m]  = SN[b, h, p, m] / SD[b, h, p]
AV[b, h, p, f] = A[b, h, p, m] * V[b, h, m, f]

output AV
"""

# GQA with the group size as a dim: query head h reads kv head h // G.
GQA = """\
attention gqa_group

dims  B, H, KH, P, M, E, F, G = H // KH
input Q[b, h, p, e], K[b, kh, m, e], V[b, kh, m, f]
param scale = 1 / sqrt(E)

QK[b, h, p, m] = Q[b, h, p, e] * K[b, h // G, m, e] * scale
GM[b, h, p]    = max[m] QK[b, h, p, m]
SN[b, h, p, m] = exp(QK[b, h, p, m] - GM[b, h, p])
SD[b, h, p]    = sum[m] SN[b, h, p, m]
A[b, h, p, m]  = SN[b, h, p, m] / SD[b, h, p]
AV[b, h, p, f] = A[b, h, p, m] * V[b, h // G, m, f]

output AV
"""

# Definitions in any order, across statements, chained, as split parents and values.
MIXED = """\
attention mixed
dims W = 2 * E2 - (E + 1) // 2, M
dims E, E2 = E * E, P = M, X = 8, Y = 2 * 4
split P -> P1, P0 by 4
input A[p, e], B[m, w], C[e2], D[x], Z[y]
param s = 1 / sqrt(E2)
T[p1, p0, m] = A[p1 * P0 + p0, e] * B[m, w] * C[e2] * D[x] * Z[y] * s + P + W
output T
"""


# ------------------------------------------------------------------ grammar and AST

def test_a_sized_dim_parses_to_its_expression_and_a_literal_stays_a_fixed_size():
    spec = parse("dims M, E = 64, F = (8), P = M, G = H // KH, E2 = E * E\n")
    dims = {d.name: d for d in spec.statements[0].dims}
    assert (dims["M"].size, dims["M"].expr) == (None, None)
    assert (dims["E"].size, dims["E"].expr) == (64, None)        # exactly as in 1.0
    assert (dims["F"].size, dims["F"].expr) == (8, None)
    assert dims["P"].size is None and isinstance(dims["P"].expr, ast.Name)
    assert dims["P"].expr.id == "M"
    g = dims["G"].expr
    assert isinstance(g, ast.Binary) and g.op == "//" and (g.left.id, g.right.id) == \
        ("H", "KH")
    assert dims["E2"].expr.op == "*"


def test_sizes_are_sympy_expressions_of_the_other_dims():
    cascade = einsumattn.load(MIXED)
    m, e = size_symbol("M"), size_symbol("E")
    ranks = cascade.ranks
    assert ranks["P"].size == m and ranks["P"].sized and ranks["P"].fixed is None
    assert ranks["P"].var == "p"                   # its own rank and index variable
    assert ranks["E2"].size == e * e
    assert ranks["W"].size == 2 * e ** 2 - sympy.floor((e + 1) / 2)
    assert ranks["P1"].size == sympy.ceiling(m / 4)       # a split of a sized dim
    # With no dim in it, a definition is a fixed size like a literal.
    assert (ranks["Y"].size, ranks["Y"].fixed, ranks["Y"].sized) == (8, 8, False)
    gqa = einsumattn.load(GQA)
    assert gqa.ranks["G"].size == sympy.floor(size_symbol("H") / size_symbol("KH"))


@pytest.mark.parametrize("text", [SELF, GQA, MIXED], ids=["self", "gqa", "mixed"])
def test_the_printed_cascade_parses_back_to_an_equal_one(text):
    cascade = einsumattn.load(text)
    printed = cascade_text(cascade)
    again = einsumattn.load(printed)
    assert again.ranks == cascade.ranks             # sizes and definitions alike
    assert (again.splits, again.params, again.tensors, again.einsums, again.outputs) == \
        (cascade.splits, cascade.params, cascade.tensors, cascade.einsums, cascade.outputs)
    assert cascade_text(again) == printed


def test_the_printer_writes_the_definitions():
    assert "dims B, H, KH, P, M, E, F, G = H // KH\n" in cascade_text(einsumattn.load(GQA))
    assert "dims B, H, M, E, F, P = M\n" in cascade_text(einsumattn.load(SELF))
    assert "W = 2 * E2 - (E + 1) // 2" in cascade_text(einsumattn.load(MIXED))


# ------------------------------------------------------------------ diagnostics

BASE = "dims M, E, {dims}\ninput X[m, e]{extra}\nY[m] = X[m, e]\noutput Y\n"


@pytest.mark.parametrize("dims, extra, message, column, hint", [
    ("P = M / 2", "", "'/' in the size of dim P", 16, "write '//' for floor division"),
    ("P = M % 2", "", "'%' in the size of dim P", 16, "integers, dims, + - * //"),
    ("P = M ** 2", "", "'**' in the size of dim P", 16, "integers, dims, + - * //"),
    ("P = Q", "", "unknown dim 'Q' in the size of dim P", 16, "declare it with 'dims Q'"),
    ("P = Mx", "", "unknown dim 'Mx' in the size of dim P", 16, "did you mean 'M'"),
    ("P = P", "", "dim P is defined by itself: P = P", 12, "give one of them no '='"),
    ("P = Q + 1, Q = P", "", "a cycle between the sizes of dims: P -> Q -> P", 12,
     "give one of them no '='"),
    ("P = m", "", "'m' is an index variable, not a size", 16, "'M'"),
    ("P = s", "\nparam s = 2", "param 's' in the size of dim P", 16, "integers and other dims"),
    ("P = M1", "\nsplit M -> M1, M0 by 4", "'M1' is a part of a split", 16, "use M"),
    ("P = max", "", "'max' is a reserved word", 16, "rename it"),
    ("P = M - M", "", "the size of dim P, M - M, is below 1 for every size", 16,
     "positive integer expression of dims"),
    ("P = M // (M - 1)", "", "the divisor 'M - 1' in the size of dim P cannot be proved "
     "positive", 22, "a subtraction or a 0"),
    ("P = 2 * 3 - 6", "", "dim P has size 2 * 3 - 6 = 0", 16, "positive integer"),
    ("P = -1", "", "dim P has size -1", 16, "e.g. 'E = 64'"),
    ("P = 64.5", "", "unexpected '.5'", 18, "whole numbers"),
    ("P = 9007199254740993", "", "larger than 2**53", 16, "whole numbers up to 2**53"),
])
def test_a_bad_definition_is_a_located_diagnostic(dims, extra, message, column, hint):
    with pytest.raises(SpecError) as caught:
        einsumattn.load(BASE.format(dims=dims, extra=extra), )
    error = caught.value
    assert message in error.message
    assert (error.span.line, error.span.column) == (1, column)
    assert hint in error.hint
    rendered = error.render()
    line = f"dims M, E, {dims}"
    assert f":1:{column}: error: " in rendered and line in rendered
    caret = rendered.splitlines()[2]
    assert caret.rstrip().endswith("^") and caret.index("^") == rendered.splitlines()[1] \
        .index(line) + column - 1


def test_a_cycle_across_dims_statements_is_named():
    text = "dims M, P = Q\ninput X[m]\nY[m] = X[m]\ndims Q = R + 1, R = P\noutput Y\n"
    with pytest.raises(SpecError, match=re.escape(
            "a cycle between the sizes of dims: P -> Q -> R -> P")) as caught:
        einsumattn.load(text)
    assert (caught.value.span.line, caught.value.span.column) == (1, 9)


def test_a_sized_dim_is_never_bound_from_an_input():
    # P = M: an input over p does not give M a size.
    with pytest.raises(SpecError, match="the size of rank P cannot be bound") as caught:
        einsumattn.load("dims M, P = M\ninput X[p]\nY[p] = X[p]\noutput Y\n")
    assert "never bound from an input" in caught.value.hint
    assert "'dims M = 16'" in caught.value.hint
    # Through a chain: Z = P + 1, P = M.
    with pytest.raises(SpecError, match="the size of rank Z cannot be bound") as caught:
        einsumattn.load("dims M, P = M, Z = P + 1\ninput X[z]\nY[z] = X[z]\noutput Y\n")
    assert "nothing gives M a size" in caught.value.hint
    # An unused sized dim needs no size.
    einsumattn.load("dims M, N, P = N\ninput X[m]\nY[m] = X[m]\noutput Y\n")


# ------------------------------------------------------------------ the oracle

def _self_inputs(p, m, rng=None):
    rng = rng or np.random.default_rng(0)
    return {"Q": rng.standard_normal((1, 2, p, 4)), "K": rng.standard_normal((1, 2, m, 4)),
            "V": rng.standard_normal((1, 2, m, 3))}


def test_the_oracle_computes_causal_self_attention():
    inputs = _self_inputs(5, 5)
    out = evaluate(einsumattn.load(SELF), inputs)["AV"]
    q, k, v = inputs["Q"], inputs["K"], inputs["V"]
    scores = np.einsum("bhpe,bhme->bhpm", q, k) / 2.0
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bhpm,bhmf->bhpf", weights, v), rtol=1e-12)


def test_the_oracle_binds_the_computed_size_and_names_both_sides_of_a_mismatch():
    cascade = einsumattn.load(SELF)
    binding = bind(cascade, shapes={n: a.shape for n, a in _self_inputs(6, 6).items()})
    assert (binding.sizes["P"], binding.sizes["M"]) == (6, 6)
    with pytest.raises(BindError, match=re.escape(
            "rank P is M = 5, but input Q has 4 at position 2")):
        evaluate(cascade, _self_inputs(4, 5))
    with pytest.raises(BindError, match=re.escape(
            "rank P is M, computed and never given; give the size of M instead")):
        bind(cascade, sizes={"B": 1, "H": 1, "M": 3, "E": 2, "F": 2, "P": 3})
    gqa = einsumattn.load(GQA)
    assert bind(gqa, sizes=dict(B=1, H=6, KH=2, P=2, M=2, E=2, F=2)).sizes["G"] == 3
    with pytest.raises(BindError, match=re.escape(
            "rank G is H // KH = 0 at H=2, KH=4; a dim's size must be at least 1")):
        bind(gqa, sizes=dict(B=1, H=2, KH=4, P=2, M=2, E=2, F=2))


def test_the_oracle_checks_divisors_inside_a_definition():
    text = "dims H, KH, M, X = M // (H // KH)\ninput A[h], B[kh], C[x], D[m]\n" \
           "Y[x] = C[x] * A[0] * B[0] * D[0]\noutput Y\n"
    cascade = einsumattn.load(text)
    assert bind(cascade, sizes=dict(H=4, KH=2, M=8)).sizes["X"] == 4
    with pytest.raises(BindError, match=re.escape(
            "rank X is M // (H // KH), whose divisor 'H // KH' is 0 at H=2, KH=4, M=8")):
        bind(cascade, sizes=dict(H=2, KH=4, M=8))


# ------------------------------------------------------------------ generated modules

@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    return compiled_specs(tmp_path_factory.mktemp("sized_dims"), {"self": SELF, "gqa": GQA},
                          "sized_dims")


CASES = {"self": dict(B=1, H=2, M=19, E=16, F=16),
         "gqa": dict(B=1, H=4, KH=2, P=5, M=19, E=16, F=16)}


@pytest.mark.parametrize("backend", ["reference", "torch", "triton", "triton-unfused"])
@pytest.mark.parametrize("name", ["self", "gqa"])
def test_each_backend_matches_the_oracle(modules, name, backend):
    cascade, module = modules[name]
    inputs = case_inputs(cascade, Case(CASES[name], "float32", 1.0, True, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = getattr(module, module.__all__[0])(backend=backend)
    assert module.BACKENDS[backend] is None          # no fallback: the backend runs
    out = layer(*inputs.values())
    results = compare(cascade, inputs, out, "float32",
                      rounding=dot_rounding(cascade, module) if backend == "triton" else None)
    assert all(r.ok for r in results), [r.describe() for r in results]


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_the_generated_module_refuses_an_input_that_disagrees(modules, backend):
    _cascade, module = modules["self"]
    layer = module.SelfCausal(backend=backend)
    q, k, v = (torch.randn(1, 2, n, 4) for n in (4, 5, 5))
    with pytest.raises(ValueError, match=re.escape(
            "rank P is M = 5, but input Q has 4 at position 2")):
        layer(q, k, v)
    _cascade, gqa = modules["gqa"]
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 4, 3, 4), torch.randn(1, 4, 3, 4)
    with pytest.raises(ValueError, match=re.escape(
            "rank G is H // KH = 0 at H=2, KH=4; a dim's size must be at least 1")):
        gqa.GqaGroup(backend=backend)(q, k, v)


TWO_OVER_P = "attention two_over_p\ndims M, P = M\ninput Q[p], R[p], K[m]\n" \
             "Y[p, m] = Q[p] * R[p] * K[m]\noutput Y\n"


def test_an_input_is_checked_against_the_computed_size_not_another_input(tmp_path):
    """Q and R both have P: the first that disagrees with P = M is named, against the
    definition (not R against Q)."""
    want = re.escape("rank P is M = 5, but input Q has 4 at position 0")
    q, r, k = np.ones(4), np.ones(5), np.ones(5)
    with pytest.raises(BindError, match=want):
        evaluate(einsumattn.load(TWO_OVER_P), [q, r, k])
    spec = tmp_path / "two_over_p.attn"
    spec.write_text(TWO_OVER_P)
    module = import_file(compile_to_file(spec, tmp_path), "sized_dims_two_over_p")
    with pytest.raises(ValueError, match=want):
        module.TwoOverP(backend="torch")(*(torch.from_numpy(a).float() for a in (q, r, k)))
    ok = module.TwoOverP(backend="torch")(*(torch.ones(5) for _ in range(3)))
    assert ok.shape == (5, 5)


def test_the_generated_module_checks_divisors_inside_a_definition(tmp_path):
    spec = tmp_path / "divided.attn"
    spec.write_text("attention divided\ndims H, KH, M, X = M // (H // KH)\n"
                    "input A[h], B[kh], C[x], D[m]\nY[x] = C[x] * A[0] * B[0] * D[0]\n"
                    "output Y\n")
    module = import_file(compile_to_file(spec, tmp_path), "sized_dims_divided")
    ones = torch.ones
    out = module.Divided(backend="torch")(ones(4), ones(2), ones(4), ones(8))
    assert out.shape == (4,)
    with pytest.raises(ValueError, match=re.escape(
            "rank X is M // (H // KH), whose divisor 'H // KH' is 0 at H=2, KH=4, M=8")):
        module.Divided(backend="torch")(ones(2), ones(4), ones(4), ones(8))


def test_compile_and_check_from_the_command_line(tmp_path, capsys):
    spec = tmp_path / "self_causal.attn"
    spec.write_text(SELF)
    assert main(["compile", str(spec), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "self_causal.py").exists()
    assert main(["check", str(spec), "--backend", "torch", "--examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "all cases agree" in out and ",P=" not in out       # P is computed, not drawn
