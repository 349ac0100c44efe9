"""A score's term linear in the key column, added by the matrix unit (schedule/biases.py):
what it folds and what it leaves, the host's flag, and the kernels it gives against the
float64 oracle in Triton's interpreter, with the flag on and off."""

import warnings

import pytest
import torch

import einsumattn
from einsumattn.backends import names
from einsumattn.backends.module import Plan
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.ir import expr as ir
from einsumattn.schedule import kernel_ir as k
from einsumattn.schedule.biases import _coefficient, _magnitude
from einsumattn.schedule.lower_attention import lower_attention
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

from conftest import ROOT, Forced, tuned

ALIBI = (ROOT / "examples" / "alibi.attn").read_text()
# The slope a param (bounded by the host's flag), and no scale of the scores.
PARAM_SLOPE = ALIBI.replace("param scale = 1 / sqrt(E)", "param slope = 0.25") \
    .replace(" * scale  where", "  where") \
    .replace("2 ** (-8 * (h + 1) / H) * (m - p)", "slope * (m - p)")
# A term the matrix unit cannot take: quadratic in the key.
QUADRATIC = ALIBI.replace("* (m - p)", "* (m - p) * (m - p)")


def _lowered(text: str, tmp_path):
    path = tmp_path / "spec.attn"
    path.write_text(text)
    cascade = einsumattn.load(path)
    return cascade, lower_attention(names.rename(Plan(cascade).kernel))


def _module(text: str, folder, name: str):
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f"{name}.attn"
    spec.write_text(text)
    return einsumattn.load(spec), import_file(compile_to_file(spec, folder / "out"),
                                              f"biases_{name}")


M0, P0 = ir.Index("m1_"), k.IndexBlock("m0_", (False, True))
ROW = k.IndexBlock("p_", (True, False))
SLOPE = ir.Op("**", (ir.Const(2), ir.Op("/", (ir.Op("*", (ir.Op("neg", (ir.Const(8),)), ir.Op(
    "+", (ir.Index("h_"), ir.Const(1))))), ir.Dim("H_")))))


def test_the_coefficient_of_the_key_column_is_read_off_affine_terms():
    key = ir.Op("+", (ir.Op("*", (M0, ir.Dim("m0__BLOCK"))), P0))
    term = ir.Op("*", (SLOPE, ir.Op("-", (key, ROW))))
    assert _coefficient(term, "m0_") == SLOPE
    assert _coefficient(ir.Op("-", (ROW, P0)), "m0_") == ir.Op("neg", (ir.Const(1),))
    assert _coefficient(ir.Op("/", (P0, ir.Dim("H_"))), "m0_") == \
        ir.Op("/", (ir.Const(1), ir.Dim("H_")))
    assert _coefficient(ROW, "m0_") == ir.Const(0)
    assert _coefficient(ir.Op("*", (P0, P0)), "m0_") is None          # quadratic
    assert _coefficient(ir.Op("exp", (P0,)), "m0_") is None
    assert _coefficient(ir.Op("/", (ir.Const(1), P0)), "m0_") is None


def test_the_slopes_bound_holds_for_every_size():
    """2 ** (-8 (h + 1) / H) <= 1 for every H >= 1 and head h >= 0: interval arithmetic
    bounds it without knowing h < H (the exponent is never positive)."""
    assert _magnitude(SLOPE) == 1.0
    assert _magnitude(ir.Op("/", (ir.Const(3), ir.Dim("H_")))) == 3.0
    assert _magnitude(ir.Dim("H_")) == float("inf")               # a size is unbounded
    assert _magnitude(ir.Op("*", (ir.Param("x"), ir.Const(2)))) == 2.0 ** 17


def _step_lets(lowered) -> dict:
    loops = [s for s in lowered.body if isinstance(s, k.Loop)]
    return {s.name: s.value for loop in loops for s in loop.body if isinstance(s, k.Let)}


def test_alibis_term_goes_through_the_dot_under_the_hosts_flag(tmp_path):
    cascade, lowered = _lowered(ALIBI, tmp_path)
    flags = {flag.name: flag for flag in lowered.flags}
    assert flags["SC__BIAS_DOTS"].param == "scale_"
    lets = _step_lets(lowered)
    dot = lets["SC__dot"]
    assert isinstance(dot, k.Dot) and dot.acc == k.Var("QK_sum_")
    assert isinstance(lets["SC_"], k.Specialized) and lets["SC_"].flag == "SC__BIAS_DOTS"
    # The max over the keys and the exponent read the biased dot, not the score tile.
    assert isinstance(lets["LGM_"], k.Specialized)
    assert k.Var("SC__dot") in list(k.nodes(lets["LGM_"].if_true))
    assert k.Var("SC_") not in list(k.nodes(lets["LSN_"].value.if_true))


def test_a_param_slope_without_a_scale_folds_and_the_host_bounds_it(tmp_path):
    cascade, lowered = _lowered(PARAM_SLOPE, tmp_path)
    (flag,) = [f for f in lowered.flags if f.name == "SC__BIAS_DOTS"]
    assert flag.param is None and flag.bounded == ("slope_",)


def test_a_term_not_linear_in_the_key_stays_per_score(tmp_path):
    cascade, lowered = _lowered(QUADRATIC, tmp_path)
    assert not [f for f in lowered.flags if "BIAS" in f.name]
    assert "SC__dot" not in _step_lets(lowered)


def _run(module, cascade, inputs, tiles, forced=None, **params):
    name = module.__all__[0]
    kernel_name = next(iter(module.TUNING_FUSED))
    kernel = getattr(module, kernel_name)
    try:
        if forced is not None:
            setattr(module, kernel_name, Forced(kernel, SC__BIAS_DOTS=forced))
        with tuned(module, **tiles), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(module, name)(backend="triton", **params)(*inputs.values())
    finally:
        setattr(module, kernel_name, kernel)


# 150 keys in tiles of 64: columns up to 63, the interior steps and the masked ones (the
# diagonal, the last partial tile); a wide head count gives slopes from 1/2 to 2**-8.
SIZES = dict(B=1, H=16, P=40, M=150, E=8, F=8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tiles", [dict(m0__BLOCK=16, p__BLOCK=16),
                                   dict(m0__BLOCK=64, p__BLOCK=32)])
def test_alibi_matches_the_oracle_with_the_term_in_the_dot_and_without(tmp_path, dtype,
                                                                         tiles):
    """The flag on (the host's choice here) and forced off give the oracle's result, to
    the check's tolerance: the two differ only by float32 roundings."""
    cascade, module = _module(ALIBI, tmp_path / "alibi", "alibi")
    inputs = case_inputs(cascade, Case(SIZES, dtype, 3.0, False, 0))
    for forced in (None, False):
        out = _run(module, cascade, inputs, tiles, forced)
        assert all(r.ok for r in compare(cascade, inputs, out, dtype,
                                         rounding=dot_rounding(cascade, module))), forced


@pytest.mark.parametrize("scale", [2.0 ** -70, 0.125, -0.125])
def test_a_scale_outside_the_flags_range_takes_the_per_score_form(tmp_path, scale):
    """2**-70 would make a / s overflow float32 times a column: the host clears the flag
    and the kernel adds the term per score; a negative scale too (the max is not s times
    the max there). Each matches the oracle."""
    cascade, module = _module(ALIBI, tmp_path / "alibi", "alibi")
    inputs = case_inputs(cascade, Case(SIZES, "float32", 3.0, False, 0))
    out = _run(module, cascade, inputs, dict(m0__BLOCK=32, p__BLOCK=16), scale=scale)
    assert all(r.ok for r in compare(cascade, inputs, out, "float32", {"scale": scale}))


@pytest.mark.parametrize("slope", [0.25, -3.0, 2.0 ** 20])
def test_a_param_slope_matches_the_oracle_in_and_outside_its_bound(tmp_path, slope):
    cascade, module = _module(PARAM_SLOPE, tmp_path / "param", "param_slope")
    inputs = case_inputs(cascade, Case(dict(SIZES, H=2), "float32", 1.0, False, 0))
    out = _run(module, cascade, inputs, dict(m0__BLOCK=32, p__BLOCK=16), slope=slope)
    assert all(r.ok for r in compare(cascade, inputs, out, "float32", {"slope": slope}))
    assert torch.isfinite(out).all()
