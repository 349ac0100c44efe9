"""Spelling must not matter (issue 11, item 3): every file in tests/spellings/ writes
causal softmax attention another way (the scale inline or a param, a temperature, an
additive -inf mask, the division after V, BSHD, keys-first scores, GQA, ...). Each
compiles, through the canonical form (einsumattn/transform/canonical.py), to the one
fused kernel of examples/causal_softmax.attn with the same passes, and its backends
agree with the oracle. A new spelling is a new .attn file there."""

import functools
import math

import numpy as np
import pytest

import einsumattn
from einsumattn.codegen.compile import compile_to_file, import_file
from einsumattn.backends.module import Plan
from einsumattn.ir import bind
from einsumattn.ir import expr as ir
from einsumattn.transform import rewrite
from einsumattn.transform.canonical import (COPY, EPILOGUE, FILTER, LOG, MASK, REDUNDANT, SHIFT,
                                            TERMS, canonicalize)
from einsumattn.verify import run_check

from conftest import ROOT

SPELLINGS = sorted((ROOT / "tests" / "spellings").glob("*.attn"))
REFERENCE = ROOT / "examples" / "causal_softmax.attn"
TILE = 16        # hypothesis's sizes (up to 17) then take two key tiles

# Spellings whose canonical form the fuser (backends/triton_fused.py) still rejects, with its
# reason (a strict xfail: it fails loudly once the fuser takes it). None today: gqa_group's
# `h // (H // KH)` leaves the kv heads when KH does not divide H, which makes whole rows
# absent, a condition of the row alone that the fused schedule folds into its masks.
FUSER_REJECTS: dict[str, str] = {}
# What the schedules must share with the reference (batch ranks differ by spelling).


def _shape(kernel) -> dict:
    """What a fused kernel's schedule says about its structure (not its names of
    intermediates): the form, the passes, the loops, the row and the ranks held."""
    return {"form": kernel.form, "passes": len(kernel.passes), "row": kernel.row,
            "loops": tuple((loop.extent, loop.kind) for loop in kernel.loops),
            "held": kernel.held}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))


def _cases(fused_only: bool):
    for path in SPELLINGS:
        reason = FUSER_REJECTS.get(path.stem)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason and fused_only \
            else []
        yield pytest.param(path, id=path.stem, marks=marks)


@functools.lru_cache(maxsize=None)
def _schedule(path) -> tuple[Plan, list[dict]]:
    """The plan of a spec and the schedules of its fused kernels (none if it has none)."""
    plan = Plan(einsumattn.load(path), tile=TILE)
    return plan, [_shape(kernel.schedule) for kernel in plan.triton.fused]


def test_the_family_is_there():
    assert len(SPELLINGS) >= 15
    assert set(FUSER_REJECTS) <= {path.stem for path in SPELLINGS}


@pytest.mark.parametrize("path", _cases(fused_only=True))
def test_spelling_compiles_to_the_single_fused_kernel(path):
    plan, facts = _schedule(path)
    _, reference = _schedule(REFERENCE)
    assert len(reference) == 1 and reference[0]["passes"] == 1
    assert plan.triton.not_fused is None
    assert len(plan.triton.fused) == 1, plan.triton.schedule_note
    assert plan.kernel is plan.rewritten.cascade, plan.note
    assert facts == reference


@pytest.mark.slow
@pytest.mark.parametrize("path", _cases(fused_only=False))
def test_spelling_backends_agree_with_the_oracle(path, tmp_path):
    """Both backends against the float64 oracle of the spelling's own cascade."""
    module = import_file(compile_to_file(path, tmp_path, tile=TILE), f"spelling_{path.stem}")
    reports = []
    assert run_check(einsumattn.load(path), module, ("torch", "triton"), examples=3,
                     report=reports.append), "\n".join(reports)


# ------------------------------------------------------------------ the canonical form
SIZES = dict(B=1, H=4, KH=2, G=2, P=6, M=7, E=3, F=2)


def _random_inputs(cascade, seed: int, scale: float = 3.0) -> dict:
    binding = bind(cascade, sizes={r: s for r, s in SIZES.items() if r in cascade.ranks})
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(binding.extent(cascade, t.name)) * scale
            for t in cascade.inputs}


def _same_values(before, after, seed: int, params: dict | None = None) -> None:
    inputs = _random_inputs(before, seed)
    want = einsumattn.evaluate(before, inputs, params)
    got = einsumattn.evaluate(after, inputs, params)
    for name in before.outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12,
                                   equal_nan=True, err_msg=name)


@pytest.mark.parametrize("path", _cases(fused_only=False))
def test_canonical_form_keeps_the_oracle_values(path):
    """Every canonical step is exact: the oracle gives the same outputs (float64; the
    only difference is the order of a few roundings) before and after."""
    cascade = einsumattn.load(path)
    canonical, steps, _ = canonicalize(cascade)
    for seed in range(3):
        _same_values(cascade, canonical, seed)


@pytest.mark.parametrize("path", _cases(fused_only=False))
def test_canonical_form_has_no_scale_inside_a_contraction_and_no_inf_mask(path):
    """The normal form the fuser sees: a contraction's body is a product of factors that
    each depend on the contracted variables, and no -inf constant is left."""
    canonical, _, _ = canonicalize(einsumattn.load(path))
    for einsum in canonical.einsums:
        if einsum.reduce_op == "sum":
            for factor in ir.product_factors(einsum.body):
                assert set(ir.index_vars(factor)) & set(einsum.reduced), einsum
        assert ir.Const(math.inf) not in list(ir.walk(einsum.body)), einsum


def _masked_rows_spec(tmp_path, mask: str):
    """masked_rows (rows p = 0, 1 see no key) with its mask written as an additive bias."""
    text = (ROOT / "tests" / "rewrites" / "masked_rows.attn").read_text().replace(
        "* scale  where m + 2 <= p", f"* scale + {mask}")
    assert mask in text
    path = tmp_path / "masked_bias.attn"
    path.write_text(text)
    return path


def test_an_inf_mask_over_a_row_that_may_be_empty_stays_a_bias(tmp_path):
    """Absent and -inf differ on a fully masked row: the bias gives NaN there
    (exp(-inf - -inf)), the filter 0. The step is blocked and says why."""
    path = _masked_rows_spec(tmp_path, "where(m + 2 <= p, 0, -inf)")
    cascade = einsumattn.load(path)
    canonical, steps, blocked = canonicalize(cascade)
    assert [s.rule for s in steps] == [EPILOGUE]
    assert [b.rule for b in blocked] == [MASK]
    assert "fully masked row" in blocked[0].reason
    out = einsumattn.evaluate(cascade, _random_inputs(cascade, 0))["AV"]
    assert np.isnan(out[:, :, :2]).all() and not np.isnan(out[:, :, 2:]).any()
    _same_values(cascade, canonical, 0)


def test_a_visible_first_key_makes_the_mask_a_filter(tmp_path):
    """The same bias with the causal mask m <= p: key 0 is visible from every row
    (the witness m = 0), so the bias becomes the filter and the kernel fuses."""
    path = _masked_rows_spec(tmp_path, "where(m <= p, 0, -inf)")
    result = rewrite(path, tile=TILE)
    assert [s.rule for s in result.canonical] == [EPILOGUE, MASK]
    qk = canonicalize(einsumattn.load(path))[0].einsum("QK")
    assert qk.filter == ir.Op("<=", (ir.Index("m"), ir.Index("p"))) and qk.reduce_op is None


def test_a_sum_that_may_lose_terms_keeps_its_factors(tmp_path):
    """sum[m] X * c where m <= p: moving c out would give c * 0 for an empty sum (NaN for
    an infinite c), so the factor stays, with the reason."""
    path = tmp_path / "losing.attn"
    path.write_text("dims P, M\ninput X[p, m]\nparam c = 2\n"
                    "Y[p] = sum[m] X[p, m] * c  where m + 1 <= p\noutput Y\n")
    canonical, steps, blocked = canonicalize(einsumattn.load(path))
    assert steps == [] and [b.rule for b in blocked] == [EPILOGUE]
    assert "may lose terms" in blocked[0].reason


def test_the_rewrite_text_names_the_canonical_steps_and_parses_back():
    result = rewrite(ROOT / "tests" / "spellings" / "bias_inline.attn", tile=TILE)
    text = result.text()
    assert "# canonical form, move out of a contraction" in text
    assert "# canonical form, -inf mask to a filter" in text
    again = einsumattn.load(text)
    assert again.einsums == result.cascade.einsums


@pytest.mark.parametrize("readers", [
    # T sums every key: the mask of G is not T's, so it stays with G.
    "G[p] = max[m] S[p, m]  where m <= p\nT[p] = sum[m] S[p, m]\noutput G, T",
    # p < 3 decides R's points, but an absent S[p, m] would only drop terms (R = 0).
    "R[p] = sum[m] S[p, m]  where p < 3\noutput R",
])
def test_a_filter_moves_to_its_producer_only_where_absence_does_the_same(tmp_path, readers):
    path = tmp_path / "filters.attn"
    path.write_text(f"dims P, M\ninput X[p, m]\nS[p, m] = X[p, m] * X[p, m]\n{readers}\n")
    cascade = einsumattn.load(path)
    canonical, steps, _ = canonicalize(cascade)
    assert steps == [] and canonical.einsums == cascade.einsums


def test_a_filter_every_reader_applies_moves_to_its_producer():
    cascade = einsumattn.load(ROOT / "tests" / "spellings" / "mask_on_weights.attn")
    canonical, steps, _ = canonicalize(cascade)
    assert [s.rule for s in steps] == [EPILOGUE, FILTER]
    assert canonical.einsum("QK").filter == ir.Op("<=", (ir.Index("m"), ir.Index("p")))
    assert canonical.einsum("GM").filter is None and canonical.einsum("SN").filter is None


# ------------------------------------------------------------------ combined spellings
# The choices compose: every scale (before or after the max-shift) with every mask and
# either normalisation.
SCALES = {"param": (" * scale", "param scale = 1 / sqrt(E)"), "sqrt": (" / sqrt(E)", ""),
          "reciprocal": (" * (1 / sqrt(E))", ""), "temperature": (" / T", "param T = sqrt(E)"),
          "power": (" * E ** -0.5", ""), "after_shift": ("", "")}   # exp((S - GM) / sqrt(E))
# under_reductions: max[m] where(m <= p, QK, -inf) and sum[m] where(m <= p, SN, 0).
MASKS = ("filter", "bias", "bias_tensor", "masked_fill", "on_weights", "under_reductions")
NORMALISATIONS = ("before_v", "after_v")


def _combined(scale: str, mask: str, normalisation: str) -> str:
    factor, param = SCALES[scale]
    scores = "S" if mask in ("bias_tensor", "masked_fill") else "QK"
    lines = ["dims  B, H, P, M, E, F", "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]",
             param,
             "QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e]" + factor +
             {"filter": "  where m <= p", "bias": " + where(m <= p, 0, -inf)"}.get(mask, "")]
    if mask == "bias_tensor":
        lines.append("S[b, h, p, m] = QK[b, h, p, m] + where(m <= p, 0, -inf)")
    if mask == "masked_fill":
        lines.append("S[b, h, p, m] = where(m > p, -inf, QK[b, h, p, m])")
    weights = "  where m <= p" if mask == "on_weights" else ""
    shift = f"{scores}[b, h, p, m] - GM[b, h, p]"
    if scale == "after_shift":
        shift = f"({shift}) / sqrt(E)"
    def term(read: str, identity: str) -> str:
        return f"where(m <= p, {read}, {identity})" if mask == "under_reductions" else read

    lines += [f"GM[b, h, p] = max[m] {term(f'{scores}[b, h, p, m]', '-inf')}{weights}",
              f"SN[b, h, p, m] = exp({shift}){weights}",
              f"SD[b, h, p] = sum[m] {term('SN[b, h, p, m]', '0')}"]
    weighted = "sum[m] " if mask == "under_reductions" else ""   # implicit elsewhere
    if normalisation == "before_v":
        lines += ["A[b, h, p, m] = SN[b, h, p, m] / SD[b, h, p]",
                  f"AV[b, h, p, f] = {weighted}{term('A[b, h, p, m]', '0')} * V[b, h, m, f]"]
    else:
        lines += [f"SNV[b, h, p, f] = {weighted}{term('SN[b, h, p, m]', '0')} * "
                  f"V[b, h, m, f]",
                  "AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]"]
    return "\n".join(lines + ["output AV", ""])


@pytest.mark.slow
@pytest.mark.parametrize("normalisation", NORMALISATIONS)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("scale", list(SCALES))
def test_combined_spellings_compile_to_the_single_fused_kernel(tmp_path, scale, mask,
                                                               normalisation):
    path = tmp_path / f"{scale}_{mask}_{normalisation}.attn"
    path.write_text(_combined(scale, mask, normalisation))
    cascade = einsumattn.load(path)
    _same_values(cascade, canonicalize(cascade)[0], 0)
    plan, facts = _schedule(path)
    _, reference = _schedule(REFERENCE)
    assert plan.triton.not_fused is None and len(facts) == 1, plan.note
    assert facts == reference


@pytest.mark.parametrize("shift", ["GM[p]", "2 * GM[p] - GM[p]"])
def test_a_row_value_seen_through_another_tensor_still_blocks_an_empty_row(tmp_path, shift):
    """The row max reaches the exponent through G: on the empty rows (p < 2) G is -inf
    too, so exp(-inf - G) is NaN there and the bias must stay."""
    path = tmp_path / "through.attn"
    path.write_text("dims P, M\ninput X[p, m], V[m]\n"
                    "S[p, m] = X[p, m] + where(m + 2 <= p, 0, -inf)\n"
                    "GM[p] = max[m] S[p, m]\n"
                    f"G[p] = {shift}\n"
                    "SN[p, m] = exp(S[p, m] - G[p])\n"
                    "SD[p] = sum[m] SN[p, m]\n"
                    "O[p] = sum[m] SN[p, m] * V[m] / SD[p]\noutput O\n")
    cascade = einsumattn.load(path)
    canonical, steps, blocked = canonicalize(cascade)
    assert MASK not in [s.rule for s in steps] and [b.rule for b in blocked] == [MASK]
    _same_values(cascade, canonical, 0)


@pytest.mark.parametrize("body, redundant", [
    ("S[p, m]", True),
    # where(...) needs only the branch it picks: S's absence does not reach m >= 2.
    ("where(m < 2, S[p, m], 1.0)", False),
])
def test_a_filter_a_read_already_applies_is_written_once(tmp_path, body, redundant):
    path = tmp_path / "twice.attn"
    path.write_text("dims P, M\ninput X[p, m]\nS[p, m] = X[p, m] * 2  where m <= p\n"
                    f"R[p] = sum[m] {body}  where m <= p\noutput R\n")
    cascade = einsumattn.load(path)
    canonical, steps, _ = canonicalize(cascade)
    assert [s.rule for s in steps] == ([REDUNDANT] if redundant else [])
    assert (canonical.einsum("R").filter is None) == redundant
    _same_values(cascade, canonical, 0)


def test_a_log_leaves_an_exponential_only_for_a_nonnegative_argument(tmp_path):
    """exp(x - log(y)) is NaN where y < 0 and x / y is not: an input y stays in the log,
    a sum of exponentials leaves it."""
    path = tmp_path / "logs.attn"
    path.write_text("dims P, M\ninput X[p, m], Y[p]\nS[p] = sum[m] exp(X[p, m])\n"
                    "A[p, m] = exp(X[p, m] - log(S[p]))\nB[p, m] = exp(X[p, m] - log(Y[p]))\n"
                    "output A, B\n")
    cascade = einsumattn.load(path)
    canonical, steps, blocked = canonicalize(cascade)
    assert [(s.rule, s.tensors[-1]) for s in steps] == [(LOG, "A")]
    assert [(b.rule, b.tensor) for b in blocked] == [(LOG, "B")]
    _same_values(cascade, canonical, 0)


# ------------------------------------------------------------------ masked terms
@pytest.mark.parametrize("body, reduction", [
    ("where(m <= p, X[p, m], -inf)", "max"),
    ("where(m > p, -inf, X[p, m]) + 1", "max"),
    ("where(m <= p, X[p, m], 0) * W[m]", "sum"),
    ("exp(where(m <= p, X[p, m], -inf) - X[p, 0])", "sum"),
    ("where(m <= p, X[p, m], inf)", "min"),
    # Rows p = 0, 1 keep no term: the where gives the identity there, and so does the
    # filter (a row with every term removed gets the identity).
    ("exp(where(m + 2 <= p, X[p, m], -inf))", "sum"),
])
def test_a_where_that_gives_the_identity_under_a_reduction_becomes_its_filter(
        tmp_path, body, reduction):
    path = tmp_path / "terms.attn"
    path.write_text(f"dims P, M\ninput X[p, m], W[m]\nR[p] = {reduction}[m] {body}\n"
                    "output R\n")
    cascade = einsumattn.load(path)
    canonical, steps, blocked = canonicalize(cascade)
    assert [s.rule for s in steps] == [TERMS] and blocked == []
    r = canonical.einsum("R")
    assert r.filter is not None and set(ir.index_vars(r.filter)) == {"m", "p"}
    assert not [n for n in ir.walk(r.body) if isinstance(n, ir.Op) and n.op == "where"]
    _same_values(cascade, canonical, 0)


@pytest.mark.parametrize("spec, why", [
    # p < 3 mentions no reduced variable: as a filter it makes R[p] absent (0 at the
    # output) for p >= 3, where the where gives max = -inf.
    ("R[p] = max[m] where(m <= p and p < 3, X[p, m], -inf)", "mentions no reduced"),
    # S[p] is absent for p >= 3: inside the where that removes the terms m <= p (the
    # others are -inf, R = -inf); as the body of a filtered max it removes R[p].
    ("S[p] = X[p, 0] where p < 3\nR[p] = max[m] where(m <= p, X[p, m] + S[p], -inf)",
     "absent at a whole point"),
])
def test_a_where_is_not_a_filter_where_absence_would_decide_the_point(tmp_path, spec, why):
    path = tmp_path / "points.attn"
    path.write_text(f"dims P, M\ninput X[p, m]\n{spec}\noutput R\n")
    cascade = einsumattn.load(path)
    canonical, steps, blocked = canonicalize(cascade)
    assert TERMS not in [s.rule for s in steps]
    assert [(b.rule, b.tensor) for b in blocked] == [(TERMS, "R")] and why in blocked[0].reason
    _same_values(cascade, canonical, 0)


# ------------------------------------------------------------------ scaled shifts
@pytest.mark.parametrize("scale", [0.7, -0.7, 0.0])
def test_a_param_scale_after_the_shift_moves_before_the_max_for_any_sign(scale):
    """exp((QK - GM) * scale): with scale < 0 the max of the scaled scores is not scale *
    GM, but the weights then differ by one factor per row, which the normalisation
    cancels: the outputs are the same for every value of the param."""
    cascade = einsumattn.load(ROOT / "tests" / "spellings" / "shift_then_scale.attn")
    canonical, steps, blocked = canonicalize(cascade)
    assert SHIFT in [s.rule for s in steps] and blocked == []
    gm = [e for e in canonical.einsums if e.reduce_op == "max"]
    assert len(gm) == 1 and "GM" not in canonical.tensors
    assert canonical.einsum("SN").body == ir.Op("exp", (ir.Op("-", (
        ir.Read("QK_scaled", tuple(map(ir.Index, "bhpm"))),
        ir.Read(gm[0].tensor, tuple(map(ir.Index, "bhp"))))),))
    for seed in range(2):
        _same_values(cascade, canonical, seed, {"scale": scale})


def _shift_spec(tmp_path, scale: str, readers: str):
    path = tmp_path / "shift.attn"
    path.write_text("dims P, M\ninput X[p, m]\nparam s = 0.5\n"
                    "G[p] = max[m] X[p, m]\n"
                    f"N[p, m] = exp((X[p, m] - G[p]) * {scale})\n{readers}\n")
    return einsumattn.load(path)


@pytest.mark.parametrize("readers, why", [
    ("output N", "the output N is proportional"),
    ("O[p] = sum[m] N[p, m] + X[p, m]\noutput O", "O is not proportional"),
    ("O[p] = sum[m] N[p, m]  where N[p, m] > 0.5\noutput O", "in a filter"),
])
def test_a_param_scale_stays_after_the_shift_unless_the_outputs_cancel_the_row_factor(
        tmp_path, readers, why):
    cascade = _shift_spec(tmp_path, "s", readers)
    canonical, steps, blocked = canonicalize(cascade)
    assert SHIFT not in [s.rule for s in steps]
    assert [(b.rule, b.tensor) for b in blocked] == [(SHIFT, "N")] and why in blocked[0].reason
    assert "s may be negative" in blocked[0].reason


@pytest.mark.parametrize("scale", ["0.5", "1 / sqrt(M)", "2 / M"])
def test_a_positive_scale_moves_before_the_max_pointwise(tmp_path, scale):
    """For a scale proved positive, max[m] X * s = s * max[m] X: the exponential keeps
    its values, so even an output may read it."""
    cascade = _shift_spec(tmp_path, scale, "output N")
    canonical, steps, blocked = canonicalize(cascade)
    assert [s.rule for s in steps] == [SHIFT] and blocked == []
    assert "> 0" in steps[0].identity
    _same_values(cascade, canonical, 0)


def test_a_copy_of_an_input_is_read_in_place():
    """FuseMax's Cascade 5 copies K and V into chunks; the copies are read in place (the
    step runs first), and the values stay (the last chunk's padded keys absent both
    ways)."""
    cascade = einsumattn.load(ROOT / "tests" / "fusemax" / "cascade5.attn")
    canonical, steps, _ = canonicalize(cascade)
    assert [(s.rule, s.tensors) for s in steps][:2] == [(COPY, ("BQK",)), (COPY, ("SLNV",))]
    assert "BK" not in canonical.tensors and "BV" not in canonical.tensors
    assert canonical.einsum("BQK").body == ir.Op("*", (
        ir.Read("Q", (ir.Index("e"), ir.Index("p"))),
        ir.Read("K", (ir.Index("e"), ir.Op("+", (ir.Op("*", (ir.Index("m1"), ir.Dim("M0"))),
                                                  ir.Index("m0")))))))
    inputs = {"Q": np.ones((3, 5)), "K": np.arange(3 * 7.0).reshape(3, 7) / 20,
              "V": np.ones((2, 7))}
    want = einsumattn.evaluate(cascade, inputs)["AV"]
    np.testing.assert_allclose(einsumattn.evaluate(canonical, inputs)["AV"], want, rtol=1e-12)


@pytest.mark.parametrize("text", [
    # read past its own extent: X2[p + 1] is absent at the last p, X[p + 1] need not be
    "dims P = 4, M\ninput X[m]\nX2[p] = X[p]\nY[p] = X2[p + 1]\noutput Y\n",
    # an output
    "dims P\ninput X[p]\nX2[p] = X[p]\nY[p] = X2[p] * 2\noutput X2, Y\n",
    # a filter
    "dims P\ninput X[p]\nX2[p] = X[p] where p < 2\nY[p] = X2[p] * 2\noutput Y\n",
], ids=["past_its_extent", "an_output", "a_filter"])
def test_a_copy_stays_where_reading_it_in_place_could_change_a_value(text):
    cascade = einsumattn.load("attention copies\n" + text)
    canonical, steps, _ = canonicalize(cascade)
    assert COPY not in [s.rule for s in steps]
    assert "X2" in canonical.tensors
