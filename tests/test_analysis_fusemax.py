"""The pass analysis against the published results of FuseMax (Nayak et al., MICRO 2024,
arXiv 2406.10491, section III), on the paper's own Einsum cascades in `tests/fusemax/`.

Where each cascade comes from, and which are reconstructions: `tests/fusemax/README.md`.

Expected pass counts (the paper's): Cascade 1: 2, Cascade 2: 1, Cascade 3: 1 over rank K;
Cascade 4 (3-pass softmax): 3, Cascade 4 with the deferred division: 2, Cascade 5
(FlashAttention-2's): 1 over rank M.

The tests named `test_analyze_*` use `einsumattn.analyze`; the others need only the parser
and the float64 oracle (`pytest tests/test_analysis_fusemax.py -k "not analyze"`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sympy

import einsumattn
from einsumattn import ir

FUSEMAX = Path(__file__).resolve().parent / "fusemax"

# fixture -> (the rank the paper's count refers to, the paper's pass count)
PAPER_PASSES = {
    "cascade1": ("K", 2),
    "cascade2": ("K", 1),
    "cascade3": ("K", 1),
    "cascade4": ("M", 3),
    "cascade4_deferred": ("M", 2),
    "cascade5": ("M", 1),
}
FIXTURES = list(PAPER_PASSES)
ATTENTION = ["cascade4", "cascade4_deferred", "cascade5"]
MULTI_PASS = [name for name, (_, n) in PAPER_PASSES.items() if n > 1]

# Small sizes: every rank 3, but M = 5 so that Cascade 5's split (M0 = 4) has a padded
# last chunk (M1 = 2, keys 5..7 absent), and K = 4 so the recurrences of Cascade 3 run
# several steps.
SIZES = {"K": 4, "P": 3, "M": 5, "E": 3, "F": 3}


def sym(name: str) -> sympy.Symbol:
    """A rank-size symbol, as the analysis writes them."""
    return sympy.Symbol(name, integer=True, positive=True)


def path(name: str) -> Path:
    return FUSEMAX / f"{name}.attn"


def load(name: str):
    return einsumattn.load(path(name))


def random_inputs(cascade, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal float64 inputs, shaped by binding the cascade's input
    ranks to SIZES."""
    input_ranks = {rank for tensor in cascade.inputs for rank in tensor.ranks}
    binding = ir.bind(cascade, sizes={r: SIZES[r] for r in input_ranks})
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(binding.extent(cascade, t.name))
            for t in cascade.inputs}


def numpy_attention(q, k, v) -> np.ndarray:
    """Softmax attention in the fixtures' layout: Q[e, p], K[e, m], V[f, m] -> AV[f, p]
    (one head, no scale, as in the paper's cascades)."""
    scores = q.T @ k                                   # [p, m]
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return (weights @ v.T).T                           # [f, p]


def cascade1_reference(a, b) -> float:
    """Z = Y × A_k with Y = A_k × B_k: k is summed in both, so Z = (A . B) * sum(A)."""
    return float(np.dot(a, b) * a.sum())


# ------------------------------------------------------------------- parse and evaluate

@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_parses_and_cites_the_paper(name):
    text = path(name).read_text()
    assert "FuseMax" in text and "2406.10491" in text, "header must cite the paper"
    cascade = load(name)
    rank, _ = PAPER_PASSES[name]
    input_ranks = {r for t in cascade.inputs for r in t.ranks}
    assert rank in input_ranks, f"{name}: the counted rank {rank} must be an input rank"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_evaluates(name):
    cascade = load(name)
    outputs = einsumattn.evaluate(cascade, random_inputs(cascade))
    assert outputs, f"{name} produced no outputs"
    for out_name, value in outputs.items():
        assert np.all(np.isfinite(value)), f"{name}: {out_name} is not finite"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cascade1_matches_numpy(seed):
    cascade = load("cascade1")
    inputs = random_inputs(cascade, seed)
    z = einsumattn.evaluate(cascade, inputs)["Z"]
    np.testing.assert_allclose(z, cascade1_reference(inputs["A"], inputs["B"]),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["cascade2", "cascade3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cascades_2_and_3_compute_cascade1s_z(name, seed):
    """Cascades 2 and 3 are the paper's rewrites of Cascade 1: same Z, fewer passes."""
    inputs = random_inputs(load("cascade1"), seed)
    z = einsumattn.evaluate(load(name), inputs)["Z"]
    np.testing.assert_allclose(z, cascade1_reference(inputs["A"], inputs["B"]),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_cascades_agree(seed):
    """Cascades 4, 4 with the deferred division, and 5 compute the same attention."""
    inputs = random_inputs(load("cascade4"), seed)
    results = {name: einsumattn.evaluate(load(name), inputs)["AV"] for name in ATTENTION}
    expected = numpy_attention(inputs["Q"], inputs["K"], inputs["V"])
    assert results["cascade4"].shape == expected.shape == (SIZES["F"], SIZES["P"])
    for name, av in results.items():
        assert av.dtype == np.float64
        np.testing.assert_allclose(av, results["cascade4"], rtol=1e-12, atol=0,
                                   err_msg=f"{name} differs from cascade4")
        np.testing.assert_allclose(av, expected, rtol=1e-12, atol=0,
                                   err_msg=f"{name} differs from numpy softmax attention")


def test_cascade5_split_has_a_padded_chunk():
    """The sizes above exercise the absent keys of Cascade 5's last chunk."""
    cascade = load("cascade5")
    binding = ir.bind(cascade, sizes={r: SIZES[r] for r in ("P", "M", "E", "F")})
    assert binding.sizes["M0"] == 4 and binding.sizes["M1"] == 2
    assert binding.sizes["M1"] * binding.sizes["M0"] > SIZES["M"]


# ---------------------------------------------------------------------- the analysis

@pytest.mark.parametrize("name", FIXTURES)
def test_analyze_passes_match_the_paper(name):
    rank, expected = PAPER_PASSES[name]
    report = einsumattn.analyze(path(name))
    assert report.passes[rank] == expected, (
        f"{name}: the paper gives {expected} pass(es) over {rank}; "
        f"the analysis says {report.passes[rank]}")


@pytest.mark.parametrize("name, expected", [
    ("cascade4", sym("P") * sym("M")),           # A[m, p] = SN[m, p] / SD[p]
    ("cascade4_deferred", sym("P") * sym("F")),  # AV[f, p] = SNV[f, p] / SD[p]
    ("cascade5", sym("P") * sym("F")),           # AV[f, p] = RNV[M1, f, p] / RD[M1, p]
])
def test_analyze_division_count(name, expected):
    """Deferring the division moves it from every score (P*M) to every output (P*F)."""
    report = einsumattn.analyze(path(name))
    divisions = report.cost.total["div"]
    assert sympy.simplify(divisions - expected) == 0, (
        f"{name}: expected {expected} divisions, the analysis counts {divisions}")


def test_analyze_cascade5_onchip_state_is_independent_of_sequence_length():
    """The 1-pass cascade keeps per-program state that does not grow with M (the
    paper's claim for FuseMax: on-chip buffers independent of sequence length)."""
    report = einsumattn.analyze(path("cascade5"))
    state = sympy.sympify(report.buffers.onchip_state)
    names = {s.name for s in state.free_symbols}
    assert "M" not in names, f"on-chip state {state} grows with M"
    assert "M1" not in names, f"on-chip state {state} grows with the number of chunks M1"


@pytest.mark.parametrize("name", MULTI_PASS)
def test_analyze_boundaries_one_per_pass_boundary(name):
    rank, expected = PAPER_PASSES[name]
    report = einsumattn.analyze(path(name))
    assert report.passes[rank] == expected
    assert len(report.buffers.boundaries) == expected - 1, (
        f"{name}: {expected} passes over {rank} have {expected - 1} boundaries, "
        f"the analysis lists {len(report.buffers.boundaries)}")
