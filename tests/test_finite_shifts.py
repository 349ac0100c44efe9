"""The -inf guards of the running max, dropped on interior key tiles whose scores are
finite (schedule/finite.py) and kept wherever a score may be -inf: what the lowering
leaves, and a bias input holding -inf over a whole interior tile against the oracle."""

import math
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
from einsumattn.schedule.finite import _finite, finite_shifts
from einsumattn.schedule.lower_attention import lower_attention
from einsumattn.verify import Case, case_inputs, compare

from conftest import ROOT, tuned

SOFTMAX = (ROOT / "examples" / "softmax_3pass.attn").read_text()
BIASED = SOFTMAX.replace("input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]",
                         "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f], "
                         "Bias[b, h, p, m]") \
    .replace("GM[b, h, p]    = max[m] QK[b, h, p, m]",
             "S[b, h, p, m] = QK[b, h, p, m] + Bias[b, h, p, m]\n"
             "GM[b, h, p]    = max[m] S[b, h, p, m]") \
    .replace("exp(QK[b, h, p, m] - GM", "exp(S[b, h, p, m] - GM")
# log(x) is -inf at x = 0: no finite score.
LOGGED = SOFTMAX.replace("GM[b, h, p]    = max[m] QK[b, h, p, m]",
                         "S[b, h, p, m] = log(QK[b, h, p, m] * QK[b, h, p, m])\n"
                         "GM[b, h, p]    = max[m] S[b, h, p, m]") \
    .replace("exp(QK[b, h, p, m] - GM", "exp(S[b, h, p, m] - GM")


def _loops(text: str, tmp_path) -> list:
    """The fused kernel's key loops, each as its Lets by name, in order."""
    path = tmp_path / "spec.attn"
    path.write_text(text)
    lowered = lower_attention(names.rename(Plan(einsumattn.load(path)).kernel))
    return [{s.name: s.value for s in loop.body if isinstance(s, k.Let)}
            for loop in lowered.body if isinstance(loop, k.Loop)]


def _guarded(value) -> bool:
    return isinstance(value, ir.Op) and value.op == "where"


@pytest.mark.parametrize("example", ["softmax_3pass", "causal_softmax", "alibi", "softcap",
                                     "gqa"])
def test_interior_tiles_drop_the_guards_and_masked_tiles_keep_them(tmp_path, example):
    interior, *masked = _loops((ROOT / "examples" / f"{example}.attn").read_text(), tmp_path)
    assert interior["SGM_"] == k.Var("RGM_")
    assert isinstance(interior["CGM_"], k.Exp2)
    assert masked and all(_guarded(lets["SGM_"]) and _guarded(lets["CGM_"])
                          for lets in masked)


@pytest.mark.parametrize("text", [BIASED, LOGGED], ids=["input bias", "log"])
def test_a_score_that_may_be_minus_infinity_keeps_its_guards(tmp_path, text):
    loops = _loops(text, tmp_path)
    # the interior tiles' loop and the masked one
    assert len(loops) == 2 and all(_guarded(lets["SGM_"]) and _guarded(lets["CGM_"])
                                   for lets in loops)


def test_finite_values_are_read_off_the_kernel_ir():
    q = k.Var("QK_sum_")
    values = {"QK_sum_": k.Dot(k.Var("rows"), k.Var("keys")),
              "B": k.Load("Bias_", (), None), "G": ir.Op("+", (ir.Const(-math.inf),
                                                              ir.Const(0.0)))}
    assert _finite(ir.Op("*", (ir.Param("cap_"), ir.Op("tanh", (ir.Op("/", (
        q, ir.Param("cap_"))),)))), values)
    assert _finite(ir.Op("**", (ir.Const(2), ir.Op("neg", (ir.Index("h_"),)))), values)
    assert not _finite(k.Var("B"), values)          # an input may hold a -inf mask
    assert not _finite(k.Var("G"), values)
    assert not _finite(k.Var("unknown"), values)
    assert not _finite(ir.Op("log", (q,)), values)
    assert not _finite(ir.Op("/", (q, k.Var("QK_sum_"))), values)
    assert not _finite(ir.Op("**", (ir.Const(-2), ir.Const(0.5))), values)


def test_only_a_max_over_finite_scores_loses_its_guard():
    minus_inf = ir.Op("neg", (ir.Const(math.inf),))
    step = (k.Let("L", k.Reduce("max", k.Var("X"), 1)),
            k.Let("R", ir.Op("max", (k.Var("R_at"), k.Var("L")))),
            k.Let("S", ir.Op("where", (ir.Op("==", (k.Var("R"), minus_inf)), ir.Const(0.0),
                                       k.Var("R")))))
    finite = finite_shifts(step, {"X": k.Dot(k.Var("a"), k.Var("b"))})
    assert finite[2].value == k.Var("R")
    masked = finite_shifts(step, {"X": ir.Op("where", (k.Var("c"), k.Var("Y"), minus_inf))})
    assert masked == step


def test_a_minus_infinity_bias_over_a_whole_interior_tile_matches_the_oracle(tmp_path):
    """Row 0 sees -inf at every key of the first (interior) tile: its running max stays
    -inf there, and only the guard keeps exp(-inf - -inf) out of its sums."""
    folder = tmp_path / "biased"
    folder.mkdir()
    spec = folder / "biased.attn"
    spec.write_text(BIASED)
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, folder / "out"), "finite_biased")
    inputs = case_inputs(cascade, Case(dict(B=1, H=1, P=20, M=100, E=8, F=8), "float32",
                                       1.0, False, 0))
    bias = inputs["Bias"].clone()
    bias[..., 0, :32] = -math.inf
    bias[..., 3, 40:] = -math.inf
    inputs["Bias"] = bias
    with tuned(module, m0__BLOCK=32, p__BLOCK=16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(module, module.__all__[0])(backend="triton")(*inputs.values())
    assert torch.isfinite(out).all()
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))
