"""Rewrites as users meet them: `einsumattn rewrite`, `analyze` before/after, and
`compile` turning the textbook 3-pass softmax into FlashAttention's single loop."""

import json

import einsumattn
from einsumattn.analysis.passes import analyse_passes
from einsumattn.cli import main
from einsumattn.codegen.compile import compile_to_file, import_file
from einsumattn.backends.triton_fused import fuse_stages
from einsumattn.backends.module import Plan
from einsumattn.schedule.model import Form, LoopKind
from einsumattn.transform import rewrite
from einsumattn.transform.canonical import EPILOGUE, FILTER, SHIFT, TERMS
from einsumattn.verify import Case, case_inputs, compare

from conftest import ROOT

SOFTMAX_3PASS = ROOT / "examples" / "softmax_3pass.attn"
CAUSAL = ROOT / "examples" / "causal_softmax.attn"


def test_rewrite_command_prints_a_spec_that_parses_back(capsys):
    assert main(["rewrite", str(SOFTMAX_3PASS)]) == 0
    text = capsys.readouterr().out
    assert "# passes: M 3 -> 1" in text
    assert "# step 1, factor out of a sum" in text and "online max-shift" in text
    again = einsumattn.load(text)
    assert analyse_passes(again)["M"].passes == 1
    assert again.einsums == rewrite(SOFTMAX_3PASS).cascade.einsums


def test_rewrite_command_errors_like_every_command(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("dims M\ninput X[m]\nY = max[m] X[m] +\noutput Y\n")
    assert main(["rewrite", str(bad)]) == 2
    assert "bad.attn:3:" in capsys.readouterr().err


def test_analyze_shows_passes_before_and_after(capsys):
    assert main(["analyze", str(CAUSAL)]) == 0
    out = capsys.readouterr().out
    assert "M needs 3 passes" in out or "Why M needs 3 passes" in out
    assert "Rewrites (einsumattn rewrite; compile applies them)" in out
    assert "passes: M 3 -> 1" in out


def test_analyze_explains_what_stays(tmp_path, capsys):
    clipped = tmp_path / "clipped.attn"
    clipped.write_text(
        "dims B, H, P, M, E, F\ninput Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]\n"
        "QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e]\nGM[b, h, p] = max[m] QK[b, h, p, m]\n"
        "SN[b, h, p, m] = exp(QK[b, h, p, m] - GM[b, h, p])\nSD[b, h, p] = sum[m] SN[b, h, p, m]\n"
        "A[b, h, p, m] = min(max(1.06 * SN[b, h, p, m] / SD[b, h, p] - 0.03, 0.0), 1.0)\n"
        "AV[b, h, p, f] = A[b, h, p, m] * V[b, h, m, f]\noutput AV\n")
    assert main(["analyze", str(clipped)]) == 0
    out = capsys.readouterr().out
    assert "passes: M 3 -> 2" in out
    assert "blocked:" in out and "lower bound for the derived cascade" in out


def test_compile_derives_the_single_loop_of_flash_attention():
    """The schedule, not the text: the Triton kernel of the naive 3-pass spec is one
    fused kernel with one loop over key tiles (the split's outer part), the running max
    and sums carried, and the spec's own cascade still fused in three passes when
    rewrites are off."""
    cascade = einsumattn.load(SOFTMAX_3PASS)
    plan = Plan(cascade, tile=16)
    kernels, _ = fuse_stages(plan.kernel)
    assert len(kernels) == 1
    schedule = kernels[0].schedule
    assert schedule.form is Form.SPLIT and len(schedule.passes) == 1
    assert [(loop.var, loop.kind) for loop in schedule.loops] == [("m1", LoopKind.SPLIT_STEPS)]
    assert set(schedule.carried) >= {"RGM", "RSD", "RSNV"}
    # The key tile of the rewrite's split: a knob, the tile asked for its default.
    assert [(k.default, k.fixed) for k in schedule.knobs if k.name == "m0_BLOCK"] == [(16, False)]
    own, _ = fuse_stages(Plan(cascade, rewrite=False).kernel)
    assert own[0].schedule.form is Form.ATTENTION and len(own[0].schedule.passes) == 3
    assert [p.accumulates for p in own[0].schedule.passes] == [("GM",), ("SD",), ("AV",)]


def test_a_per_key_value_of_the_inputs_stays_whole_and_the_attention_runs_one_pass():
    """The online rewrite leaves a tensor over one key-side input's ranks unsplit where
    it scales a matrix of scores (cosine attention's key norms SK): a kernel of its own
    computes it, and the attention kernel after it runs the derived single loop. Split,
    it could be absent in the last tile's padding and could not cross the cut: the
    attention kernel ran the spec's three passes. Where the scores themselves are per
    key (Aaren), the split stays and so do the spec's cheaper passes over a vector."""
    cascade = einsumattn.load(ROOT / "examples" / "cosine_attention.attn")
    plan = Plan(cascade)
    assert plan.kernel is not cascade                  # the derived cascade runs
    assert plan.kernel.tensors["SK"].ranks == ("B", "H", "M")
    kernels, _ = fuse_stages(plan.kernel)
    last = kernels[-1].schedule
    assert last.form is Form.SPLIT and len(last.passes) == 1
    aaren = einsumattn.load(ROOT / "examples" / "aaren.attn")
    assert Plan(aaren).kernel is aaren


def test_derived_causal_kernel_agrees_over_many_tiles_and_masked_rows(tmp_path):
    """Tile 16 and M = 41: three key tiles, the last one partial; causal rows see 1 to
    P keys. The reference is the float64 oracle of the user's own 3-pass cascade."""
    cascade = einsumattn.load(CAUSAL)
    module = import_file(compile_to_file(CAUSAL, tmp_path, tile=16), "derived_causal")
    assert "the derived cascade" in module.__doc__
    for seed, scale in ((0, 1.0), (1, 100.0)):
        inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=37, M=41, E=8, F=8),
                                           "float32", scale, True, seed))
        out = module.CausalSoftmax(backend="triton")(*inputs.values())
        results = compare(cascade, inputs, out, "float32")
        assert all(r.ok for r in results), [r.describe() for r in results]


def test_fully_masked_rows_are_zero_in_the_derived_kernel(tmp_path):
    spec = tmp_path / "late.attn"
    spec.write_text(CAUSAL.read_text().replace("where m <= p", "where m + 20 <= p"))
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path, tile=16), "masked_rows")
    inputs = case_inputs(cascade, Case(dict(B=1, H=1, P=40, M=40, E=8, F=4),
                                       "float32", 1.0, True, 3))
    out = module.CausalSoftmax(backend="triton")(*inputs.values())
    assert not out.isnan().any()
    assert (out[:, :, :20] == 0).all()           # rows 0..19 see no key
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


def test_no_rewrite_keeps_the_spec_pass_structure(tmp_path, capsys):
    assert main(["compile", str(SOFTMAX_3PASS), "-o", str(tmp_path), "--no-rewrite"]) == 0
    out = capsys.readouterr().out
    assert "the spec's own cascade (rewrites off" in out
    assert "pass 3: all m tiles" in out
    assert main(["compile", str(SOFTMAX_3PASS), "-o", str(tmp_path)]) == 0
    assert "one loop over M1 tiles" in capsys.readouterr().out


def test_analyze_json_lists_the_canonical_steps_the_rewrite_made(tmp_path):
    """analyze's report carries rule 0's record as the rewrite made it: each step, the
    Einsums it wrote and its proof, and each step refused with its reason."""
    spelling = ROOT / "tests" / "spellings" / "masked_reductions.attn"
    target = tmp_path / "report.json"
    assert main(["analyze", str(spelling), "--format", "json", "-o", str(target)]) == 0
    section = json.loads(target.read_text())["rewrite"]
    result = rewrite(spelling)
    assert section["canonical"] == [
        {"rule": s.rule, "tensors": list(s.tensors), "summary": s.summary,
         "proved": s.identity} for s in result.canonical]
    assert [(s["rule"], s["tensors"]) for s in section["canonical"]] == [
        (EPILOGUE, ["QK_sum", "QK"]), (TERMS, ["GM"]), (TERMS, ["SD"]), (TERMS, ["AV"]),
        (FILTER, ["A", "AV"]), (FILTER, ["SN", "A", "SD"]), (FILTER, ["QK", "GM", "SN"])]
    assert section["canonical_blocked"] == []

    shift = tmp_path / "shift.attn"    # the exponential itself is an output: refused
    shift.write_text("dims P, M\ninput X[p, m]\nparam s = 0.5\nG[p] = max[m] X[p, m]\n"
                     "N[p, m] = exp((X[p, m] - G[p]) * s)\noutput N\n")
    assert main(["analyze", str(shift), "--format", "json", "-o", str(target)]) == 0
    section = json.loads(target.read_text())["rewrite"]
    assert section["canonical"] == []
    assert [(b["rule"], b["tensor"]) for b in section["canonical_blocked"]] == [(SHIFT, "N")]
    assert section["canonical_blocked"][0]["reason"] == \
        rewrite(shift).canonical_blocked[0].reason


def test_analyze_prints_each_canonical_step_with_its_proof(capsys):
    assert main(["analyze", str(ROOT / "tests" / "spellings" / "shift_then_sqrt.attn")]) == 0
    out = capsys.readouterr().out.splitlines()
    found = [n for n, line in enumerate(out)
             if line.startswith(f"  canonical form, {SHIFT}: 1.0 / sqrt(E) moves before")]
    assert len(found) == 1
    assert out[found[0] + 1].startswith("    proved: ") and "1.0 / sqrt(E) > 0" in \
        out[found[0] + 1]
