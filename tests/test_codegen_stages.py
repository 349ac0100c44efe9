"""The fused loop schedule and cuts into stages (schedule/loops.py, schedule/stages.py):
ECA is cut into a pooling kernel and a convolution-and-gate kernel, GLA's recurrence is
one kernel with its state in registers, and a cascade with two convolutions is cut
twice. Each is checked as a schedule (kernels, their form, the reason for each cut) and
against the float64 oracle, with sizes that take several row tiles, several loop tiles
and odd feature sizes; a kernel with a step dropped must fail the same check."""

import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file, generate
from einsumattn.codegen.compile import import_file
from einsumattn.backends.triton_fused import fuse, fuse_stages
from einsumattn.schedule.stages import NotFusable
from einsumattn.schedule.loops import BLOCK_LANES, BLOCK_ROW
from einsumattn.schedule.model import Form, LoopKind, Role
from einsumattn.schedule.stages import Crossing
from einsumattn.verify import Case, case_inputs, compare, dot_rounding, run_check

from conftest import ROOT

ECA = ROOT / "examples" / "eca.attn"
GLA = ROOT / "examples" / "gla_recurrent.attn"

# Squeeze-and-excitation without the convolution: nothing crosses program tiles, so one
# kernel with two passes over the (h, w) tiles (pool, then scale).
SE = """attention se
dims B, C, H, W
input X[b, c, h, w], A[c]
GAP[b, c] = sum[h, w] X[b, c, h, w] / (H * W)
S[b, c] = sigmoid(A[c] * GAP[b, c])
O[b, c, h, w] = X[b, c, h, w] * S[b, c]
output O
"""

# Two convolutions across channels: each reads the previous one at other channels.
ECA2 = ECA.read_text().replace("attention eca", "attention eca_twice").replace(
    "S[b, c]       = sigmoid(Y[b, c])",
    "Y2[b, c] = CW[k] * Y[b, c + k - K // 2]\nS[b, c] = sigmoid(Y2[b, c])")

# GLA with the gate as a per-step tensor and a read of the final state after the loop.
GLA_FINAL = GLA.read_text().replace("attention gla_recurrent", "attention gla_final").replace(
    "S[b, h, t+1, d, f]     = exp(GK[b, h, t, d]) * S",
    "G[b, h, t, d] = exp(GK[b, h, t, d])\nS[b, h, t+1, d, f] = G[b, h, t, d] * S").replace(
    "output O", "Z[b, h, f] = sum[d] S[b, h, T, d, f]\noutput O, Z")


def _module(spec, tmp_path, name):
    return import_file(compile_to_file(spec, tmp_path), name)


def _agrees(spec, module, sizes, seed=0, scale=1.0, contiguous=False, dtype="float32"):
    cascade = einsumattn.load(spec)
    inputs = case_inputs(cascade, Case(sizes, dtype, scale, contiguous, seed))
    cls = getattr(module, module.__all__[0])
    out = cls(backend="triton")(*inputs.values())
    results = compare(cascade, inputs, out, dtype)
    return all(r.ok for r in results), [r.describe() for r in results]


# ---------------------------------------------------------------- ECA: two stages
def test_eca_is_cut_into_pooling_and_gating_kernels():
    kernels, cut = fuse_stages(einsumattn.load(ECA))
    assert [k.name for k in kernels] == ["eca_stage1_fused", "eca_stage2_fused"]
    pool, gate = (k.schedule for k in kernels)
    # Stage 1 reduces both spatial ranks at once, over flattened tiles of (h, w).
    assert pool.form is Form.TILES and [loop.over for loop in pool.loops] == [("h", "w")]
    assert pool.loops[0].kind is LoopKind.FLAT_TILES
    assert pool.accumulated == ("GAP",) and len(pool.passes) == 1
    assert (pool.batch, pool.row) == (("b",), "c")
    # Stage 2: the convolution over K held whole, the gate, and X * S over (h, w) tiles.
    assert gate.form is Form.TILES and gate.held == ("k",) and len(gate.passes) == 1
    # Each kernel loads what it reads: the gate reads GAP back from memory.
    assert pool.inputs == ("X",) and gate.inputs == ("X", "CW", "GAP")
    # The cut is there because the convolution reads GAP at other channels.
    assert cut.startswith("Y reads GAP at c + k - K // 2, other points of c")
    with pytest.raises(Crossing, match="Y reads GAP at c \\+ k - K // 2"):
        fuse(einsumattn.load(ECA))


def test_eca_module_names_each_kernel_and_the_cut(tmp_path):
    doc = _module(ECA, tmp_path, "eca_doc").__doc__
    assert "triton: 2 fused kernels, cut because Y reads GAP at c + k - K // 2" in doc
    assert "eca__stage1_fused" in doc and "eca__stage2_fused" in doc


def test_eca_without_zero_padding_fails_the_check(tmp_path):
    """The channels outside 0 .. C-1 are absent (zero padding): a convolution kernel that
    reads the clamped edge channel instead must fail."""
    cascade = einsumattn.load(ECA)
    source = generate(cascade)
    padded = "(tl.where(0 <= c_[:, None] + k_[None, :] - _floordiv(K_, 2), " \
             "c_[:, None] + k_[None, :] - _floordiv(K_, 2) < C_, False) != 0)"
    assert padded in source
    path = tmp_path / "eca_unpadded.py"
    path.write_text(source.replace(padded, "(0 == 0)"))
    ok, _ = _agrees(ECA, import_file(path, "eca_unpadded"), dict(B=1, C=6, H=2, W=3, K=3))
    assert not ok


def test_a_cascade_with_nothing_crossing_is_one_kernel_of_two_passes(tmp_path):
    kernels, cut = fuse_stages(einsumattn.load(SE))
    assert cut is None and len(kernels) == 1
    schedule = kernels[0].schedule
    assert len(schedule.passes) == 2 and schedule.accumulated == ("GAP",)
    assert schedule.passes[0].accumulates == ("GAP",)
    ok, report = _agrees(SE, _module(SE, tmp_path, "se"), dict(B=2, C=17, H=7, W=11))
    assert ok, report


# ---------------------------------------------------------------- more than two stages
def test_two_convolutions_are_cut_twice(tmp_path):
    kernels, cut = fuse_stages(einsumattn.load(ECA2))
    assert [k.name for k in kernels] == [f"eca_twice_stage{i}_fused" for i in (1, 2, 3)]
    # The middle stage is Y alone: its only rank beyond the grid, K, is its loop.
    assert [k.schedule.accumulated for k in kernels] == [("GAP",), ("Y",), ()]
    # Each cut has its own reason, named with the kernel that follows it.
    first, second = cut.split("; ")
    assert first.startswith("Y reads GAP at c + k - K // 2") and \
        first.endswith("(before eca_twice_stage2_fused)")
    assert second.startswith("Y2 reads Y at c + k - K // 2") and \
        second.endswith("(before eca_twice_stage3_fused)")
    module = _module(ECA2, tmp_path, "eca_twice")
    assert "triton: 3 fused kernels, cut because" in module.__doc__
    ok, report = _agrees(ECA2, module, dict(B=2, C=19, H=3, W=5, K=3), scale=10.0)
    assert ok, report


# ---------------------------------------------------------------- GLA: a recurrence
def test_gla_recurrence_is_one_kernel_with_its_state_in_registers():
    kernels, cut = fuse_stages(einsumattn.load(GLA))
    assert cut is None and [k.name for k in kernels] == ["gla_recurrent_fused"]
    schedule = kernels[0].schedule
    assert schedule.form is Form.STEPS and schedule.carried == ("S",)
    assert [(loop.var, loop.kind) for loop in schedule.loops] == [("t", LoopKind.RECURRENCE_STEPS)]
    # A program: one (b, h), a tile of F; D held whole (the state is f__BLOCK x d__BLOCK).
    assert (schedule.batch, schedule.row, schedule.held) == (("b", "h"), "f", ("d",))
    assert schedule.role("S") is Role.CARRIED and schedule.role("O") is Role.STEP


def test_gla_without_the_carried_state_fails_the_check(tmp_path):
    source = generate(einsumattn.load(GLA))
    carried = "S__at = S_  # at step t"
    assert carried in source
    path = tmp_path / "gla_forgetful.py"
    path.write_text(source.replace(carried, "S__at = S_ * 0.0"))
    ok, _ = _agrees(GLA, import_file(path, "gla_forgetful"), dict(B=1, H=1, T=4, D=3, F=3))
    assert not ok


def test_per_step_tensors_and_the_final_state(tmp_path):
    kernels, cut = fuse_stages(einsumattn.load(GLA_FINAL))
    assert cut is None and len(kernels) == 1 and kernels[0].schedule.carried == ("S",)
    ok, report = _agrees(GLA_FINAL, _module(GLA_FINAL, tmp_path, "gla_final"),
                         dict(B=1, H=2, T=5, D=4, F=18), scale=1.0)
    assert ok, report


# ---------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("spec, sizes", [
    (ECA, dict(B=2, C=21, H=9, W=8, K=5)),   # 2 channel tiles; 72 lanes: 2 (h, w) tiles
    (ECA, dict(B=1, C=3, H=1, W=1, K=7)),    # a kernel wider than the channels
    (ECA, dict(B=3, C=16, H=5, W=13, K=1)),
    (GLA, dict(B=1, H=2, T=7, D=5, F=20)),   # 2 F tiles, odd D
    (GLA, dict(B=2, H=1, T=1, D=17, F=3)),   # one step; D over a tile of 16
], ids=["eca-tiles", "eca-wide-kernel", "eca-k1", "gla-tiles", "gla-one-step"])
def test_fused_kernels_agree_with_the_oracle(tmp_path, spec, sizes):
    assert max(sizes.values()) <= 2 * BLOCK_ROW and sizes.get("H", 0) * sizes.get("W", 0) \
        <= 2 * BLOCK_LANES                  # small enough for the interpreter
    module = _module(spec, tmp_path, f"{spec.stem}_{'_'.join(map(str, sizes.values()))}")
    ok, report = _agrees(spec, module, sizes, scale=10.0 if spec == ECA else 1.0)
    assert ok, report


@pytest.mark.parametrize("spec", [ECA, GLA], ids=lambda p: p.stem)
def test_examples_agree_in_every_dtype(tmp_path, spec):
    reports = []
    assert run_check(einsumattn.load(spec), _module(spec, tmp_path, f"check_{spec.stem}"),
                     ("triton",), examples=6, report=reports.append), "\n".join(reports)


def test_a_per_head_helper_is_a_stage_beside_the_one_pass_attention_kernel(tmp_path):
    """The Differential Transformer's learned lambda (`LAM[h]`, from per-head vectors)
    has no query rank: it is a stage of its own (a program per tile of heads), and the
    derived 1-pass cascade is the second. The stage that does not touch the online
    rewrite's split of M does not carry it (a stage with a split it does not stream was
    refused, and the module kept the spec's own 3-pass cascade); the kernels agree with
    the oracle over several key tiles."""
    spec = ROOT / "examples" / "diff_transformer.attn"
    from einsumattn.backends.module import Plan

    plan = Plan(einsumattn.load(spec))
    assert plan.kernel is plan.rewritten.cascade, plan.note       # the 1-pass cascade
    lam, attention = plan.triton.fused
    assert lam.schedule.row == "h_" and lam.schedule.outputs == ("LAM_",)
    assert attention.schedule.form is Form.SPLIT and len(attention.schedule.loops) == 1
    module = _module(spec, tmp_path, "diff_transformer")
    ok, report = _agrees(spec, module, dict(B=2, H=3, P=19, M=37, E=8, F=4))
    assert ok, report


# ---------------------------------------------------------------- fallbacks
def test_what_does_not_fuse_keeps_the_unfused_schedule_and_says_why(tmp_path):
    # The whole recurrence as an output: neither schedule keeps every step of S.
    text = GLA.read_text().replace("attention gla_recurrent", "attention gla_state") \
        .replace("output O", "output O, S")
    with pytest.raises(NotFusable, match="the recurrence S is an output"):
        fuse_stages(einsumattn.load(text))
    module = _module(text, tmp_path, "gla_state")
    assert "the unfused schedule (not fusable: " in module.__doc__
    assert "the recurrence S is an output" in module.__doc__
    assert module.TRITON_FALLBACK is None
    ok, report = _agrees(text, module, dict(B=1, H=1, T=3, D=2, F=3))
    assert ok, report


def test_the_last_stage_stores_the_outputs_in_their_dtype(tmp_path, monkeypatch):
    """Linear attention's two attention-form stages: the first stores K^T V and the key
    sums in float32 for the second to read, the second stores the output in the inputs'
    bfloat16 itself (rounded once, as a single kernel's is), not float32 that the host
    then converts (module.py's _fused_host)."""
    from triton.runtime import interpreter
    path = ROOT / "examples" / "linear_attention.attn"
    cascade = einsumattn.load(path)
    module = import_file(compile_to_file(path, tmp_path), "stored_linear")
    stored = []
    init_args = interpreter.GridExecutor._init_args_hst

    def record(self, args, kwargs):
        hosted = init_args(self, args, kwargs)
        stored.append(hosted[0][0].dtype)        # a fused kernel's first argument: an output
        return hosted

    monkeypatch.setattr(interpreter.GridExecutor, "_init_args_hst", record)
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=20, M=33, E=16, F=16), "bfloat16",
                                       1.0, False, 0))
    out = module.LinearAttention(backend="triton")(*inputs.values())
    assert stored == [torch.float32, torch.bfloat16] and out.dtype == torch.bfloat16
    assert all(r.ok for r in compare(cascade, inputs, out, "bfloat16",
                                     rounding=dot_rounding(cascade, module)))
