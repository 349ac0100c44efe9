"""The schedule as data (einsumattn/schedule/): decided once per compile, written into the
generated module as SCHEDULE, read back by `check` and the benchmarks; backends in one
registry; masks as sets of conditions."""

import ast
import pprint
import re
import unittest.mock

import pytest

import einsumattn
from einsumattn.backends import module as module_code
from einsumattn.backends.module import Plan
from einsumattn.backends.registry import BACKENDS, backend_names, choice_text
from einsumattn.cli import main
from einsumattn.codegen.compile import compile_to_file, import_file
from einsumattn.schedule.attention import AttentionRoles
from einsumattn.schedule.model import kernel_data
from einsumattn.verify import dot_rounding

from conftest import ROOT, WINDOW

CAUSAL = ROOT / "examples" / "causal_softmax.attn"


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schedule")
    return import_file(compile_to_file(CAUSAL, folder), "schedule_causal")


def test_the_module_carries_its_schedule_as_plain_data(causal):
    schedule = causal.SCHEDULE
    # Plain literals: what pprint writes, Python reads back unchanged.
    assert ast.literal_eval(pprint.pformat(schedule)) == schedule
    (kernel,) = schedule["kernels"]
    assert kernel["form"] == "split" and kernel["grid"]["batch"] == ("b", "h")
    assert [loop["kind"] for loop in kernel["loops"]] == ["split steps"]
    assert kernel["tensors"]["RSNV"]["role"] == "carried"
    assert kernel["passes"][0]["bounds"] == (("upper", "0"),)     # causal: m <= p
    # The key tile of the rewrite's split is a knob like the row tile (Split.tunable).
    assert not kernel["knobs"]["m0__BLOCK"]["fixed"] and not kernel["knobs"]["p__BLOCK"]["fixed"]
    assert kernel["rounded"] == causal.DOT_ROUNDING == {"LSNV": 1}
    assert "one fused kernel" in kernel["describe"] and "derived" in schedule["describe"]
    # The kernels' cascade, as text that loads back to the cascade the plan chose.
    plan = Plan(einsumattn.load(CAUSAL))
    assert einsumattn.load(schedule["cascade"]).einsums == plan.kernel.einsums
    # The same data the plan gives, in the spec's names.
    assert schedule["kernels"] == plan.data()["kernels"]


def test_check_reads_the_kernels_cascade_instead_of_rebuilding_the_plan(causal):
    cascade = einsumattn.load(CAUSAL)
    with unittest.mock.patch.object(module_code.Plan, "__init__",
                                    side_effect=AssertionError("the plan was rebuilt")):
        rounding = dot_rounding(cascade, causal)
    assert rounding.operands == {"LSNV": 1}
    assert rounding.cascade.einsums == Plan(cascade).kernel.einsums


def test_a_plan_schedules_each_cascade_at_most_once():
    """The derived cascade fuses: the spec's own is not scheduled at all."""
    scheduled = []
    real = module_code.fuse_stages

    def counting(cascade, *args):
        scheduled.append(cascade)
        return real(cascade, *args)
    with unittest.mock.patch.object(module_code, "fuse_stages", counting):
        plan = Plan(einsumattn.load(CAUSAL))
    assert len(scheduled) == 1 and plan.kernel is plan.rewritten.cascade


def test_compile_builds_the_plan_once(tmp_path, capsys):
    built = []
    real = module_code.Plan.__init__

    def counting(self, *args, **kwargs):
        built.append(args)
        real(self, *args, **kwargs)
    with unittest.mock.patch.object(module_code.Plan, "__init__", counting):
        assert main(["compile", str(CAUSAL), "-o", str(tmp_path)]) == 0
    assert len(built) == 1
    assert "one fused kernel causal_softmax__fused" in capsys.readouterr().out


# A recurrence reading a neighbour's previous step: no Triton form (programs would race).
SHIFTED = ("dims T, D\ninput X[t, d]\ninit S[0, d] = 1\n"
           "S[t+1, d] = S[t, (d + 1) % D] * X[t, d]\noutput S\n")


def test_backends_are_named_in_one_place(causal, tmp_path):
    assert tuple(causal.BACKENDS) == tuple(sorted(backend_names()))
    assert all(reason is None for reason in causal.BACKENDS.values())
    with pytest.raises(ValueError, match=re.escape(choice_text())):
        causal.CausalSoftmax(backend="cuda")
    with pytest.raises(ValueError, match=re.escape(choice_text())):
        einsumattn.compile(CAUSAL, backend="cuda")
    assert callable(einsumattn.compile(CAUSAL, backend="triton-unfused").compiled)
    # A spec the Triton backends cannot run: the registry's reason, per backend.
    spec = tmp_path / "shifted.attn"
    spec.write_text(SHIFTED)
    module = import_file(compile_to_file(spec, tmp_path), "schedule_shifted")
    assert module.BACKENDS["torch"] is None
    for backend in BACKENDS:
        if backend.name.startswith("triton"):
            assert "not expressible in Triton" in module.BACKENDS[backend.name]


def test_key_tile_masks_hold_each_condition_once():
    """The derived causal kernel's scores (canonical form: the contraction QK_sum, then
    QK = QK_sum * scale where m <= p): the key range (0 <= m1*M0 + m0 < M) and the split's
    m1*M0 + m0 < M are what the tile's live keys say; the causal filter is the one
    filter left, once."""
    kernel = Plan(einsumattn.load(CAUSAL)).kernel
    roles = AttentionRoles(kernel)
    contraction = roles._conditions(kernel.einsum("QK_sum"))
    assert {c.kind for c in contraction} >= {"range", "split"}
    assert not roles.beyond_lanes(contraction)
    conditions = roles._conditions(kernel.einsum("QK"))
    left = roles.beyond_lanes(conditions)
    assert [(c.kind, einsumattn.ir.expr.to_text(c.expr)) for c in left
            if c.kind != "absent"] == [("filter", "m1 * M0 + m0 <= p")]
    # A condition given twice is kept once.
    assert roles.beyond_lanes(conditions + conditions) == left


def test_check_skips_the_backends_the_module_says_do_not_apply(tmp_path, capsys,
                                                               monkeypatch):
    """Read from the module's BACKENDS: `--backend triton-unfused` on a spec no Triton
    backend runs checks the torch backend, and says why."""
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "shifted.attn"
    spec.write_text(SHIFTED)
    assert main(["check", str(spec), "--backend", "triton-unfused", "--examples", "2"]) == 0
    out = capsys.readouterr().out
    assert "note: no Triton kernels for this spec (not expressible in Triton" in out
    assert "checking torch against the float64 oracle" in out


def test_a_kernel_receives_every_input_it_computes_from(tmp_path):
    """The loop schedule carries a recurrence no output reads (S) through its steps: the
    kernel computes it, so it receives Z, which only S reads (arguments come from what the
    schedule computes, not from what the outputs need)."""
    from einsumattn.backends.triton_fused import fuse_stages
    from einsumattn.verify import Case, case_inputs, compare
    text = ("dims B, T, F\ninput X[b, t, f], Z[b, t, f]\ninit S[b, 0, f] = 0\n"
            "S[b, t+1, f] = S[b, t, f] * 0.5 + Z[b, t, f]\nY[b, t, f] = X[b, t, f] * 2\n"
            "output Y\n")
    cascade = einsumattn.load(text)
    (kernel,), _ = fuse_stages(cascade)
    assert kernel.schedule.inputs == ("X", "Z") and kernel.schedule.carried == ("S",)
    spec = tmp_path / "unread.attn"
    spec.write_text(text)
    module = import_file(compile_to_file(spec, tmp_path), "schedule_unread")
    inputs = case_inputs(cascade, Case(dict(B=2, T=3, F=5), "float32", 1.0, True, 1))
    out = module.Unread(backend="triton")(*inputs.values())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


# ------------------------------------------------------------------ decided before printing


def _roles(spec, rewrite=True):
    return AttentionRoles(Plan(einsumattn.load(spec), rewrite=rewrite).kernel)


def test_the_schedule_holds_bounds_dots_and_rounding_before_any_kernel_is_printed():
    """The attention schedule itself (no emitter runs) proves the key loop's bounds,
    decides which contractions are tl.dot with which operands, and counts the operands
    rounded to the inputs' dtype: the probabilities of P V are computed, Q and K are
    inputs."""
    from einsumattn.ir.expr import Read
    from einsumattn.schedule.model import Bound
    schedule = _roles(CAUSAL).kernel_schedule("causal")
    (only,) = schedule.passes
    assert only.bounds == (Bound("upper", 0),)
    assert "proved" in schedule.skipping
    assert [dot.tensor for dot in schedule.dots] == ["QK_sum", "LSNV"]
    scores, weighted = schedule.dots
    assert [r.tensor for r in scores.left + scores.right] == ["Q", "K"] and not scores.after
    assert scores.rounded == 0
    assert all(isinstance(f, Read) for f in weighted.left + weighted.right)
    assert [r.tensor for r in weighted.left] == ["LSN"] and weighted.rounded == 1
    assert schedule.rounded == (("LSNV", 1),)
    # The spec's own three passes: per pass, the bounds of its own accumulators.
    own = _roles(ROOT / "examples" / "softmax_3pass.attn", rewrite=False)
    assert [p.bounds for p in own.kernel_schedule("own").passes] == [(), (), ()]


def test_a_window_bound_is_an_expression_in_the_spec_params():
    """p - m < W: keys from p + 1 - W on (the host rounds it outwards), and m <= p."""
    import sympy
    bounds = AttentionRoles(einsumattn.load(WINDOW)).kernel_schedule("window").passes[0].bounds
    assert {b.side: b.offset for b in bounds} == {"lower": 1 - sympy.Symbol("W"), "upper": 0}


def test_a_contraction_that_is_no_product_of_two_tiles_is_refused_by_the_schedule():
    """A factor over the row, the key and the feature cannot be an operand of Q K^T: the
    schedule says so (the reason is data), before any kernel text is written."""
    from einsumattn.schedule.stages import NotFusable
    cascade = einsumattn.load(
        "dims P, M, E\ninput Q[p, e], K[m, e], X[p, m, e]\n"
        "S[p, m] = Q[p, e] * K[m, e] * X[p, m, e]\nG[p] = max[m] S[p, m]\noutput G\n")
    with pytest.raises(NotFusable, match="a factor over both sides of the product"):
        AttentionRoles(cascade).kernel_schedule("refused")


def test_every_unfused_kernel_has_its_schedule_in_the_module(causal):
    """SCHEDULE['unfused']: one kernel per Einsum of the kernels' cascade, with its grid,
    its loops (steps of a recurrence, tiles of the reduced points), what it reads from
    global memory, and the knobs its tuning table holds."""
    plan = Plan(einsumattn.load(CAUSAL))
    unfused = causal.SCHEDULE["unfused"]
    assert [k["outputs"] for k in unfused] == [(e.tensor,) for e in plan.kernel.einsums]
    assert {k["name"] for k in unfused} == set(causal.TUNING)
    assert all(set(k["knobs"]) == set(causal.TUNING[k["name"]]) for k in unfused)
    by_output = {k["outputs"][0]: k for k in unfused}
    recurrence = by_output["RSNV"]
    assert [loop["kind"] for loop in recurrence["loops"]] == ["recurrence steps"]
    assert recurrence["tensors"]["RSNV"]["role"] == "step"
    scores = by_output["QK_sum"]
    assert [(loop["kind"], loop["over"]) for loop in scores["loops"]] == \
        [("flat tiles", ("e",))]
    assert scores["inputs"] == ("K", "Q") and scores["tensors"]["QK_sum"]["role"] == "reduce"
    # What an absent point stores: the causal filter, as a set of conditions.
    assert set(by_output["QK"]["stores"]["QK"]) == {
        "QK_sum[b, h, p, m1, m0] is present", "m1 * M0 + m0 < M", "m1 * M0 + m0 <= p"}


ONE_PASS = (ROOT / "examples" / "softmax_1pass.attn").read_text()
# GM read at the mirrored row: a value of another program's row, not in its registers.
MIRRORED = (
    "dims P, M, E\ninput Q[p, e], K[m, e], V[m, e]\nQK[p, m] = Q[p, e] * K[m, e]\n"
    "GM[p] = max[m] QK[p, m]\nSN[p, m] = exp(QK[p, m] - GM[P - 1 - p])\n"
    "O[p, e] = sum[m] SN[p, m] * V[m, e]\noutput O\n")


@pytest.mark.parametrize("text, reason", [
    (MIRRORED, "GM is read at shifted positions"),
    # The split stream's recurrence at a step other than this one, the next or the last.
    (ONE_PASS.replace("RNV[b, h, p, M1, f]", "RNV[b, h, p, M1 - 1, f]"),
     re.escape("RNV is read at step M1 - 1")),
    # Another head's value: the split schedule once read this head's (a wrong result).
    (ONE_PASS.replace("* PRM[b, h, p, m1]", "* PRM[b, H - 1 - h, p, m1]"),
     "PRM is read at shifted positions"),
], ids=["row", "step", "split-batch"])
def test_registers_hold_a_value_at_the_readers_own_point_only(text, reason):
    """A read of an intermediate at other points than the reader's is refused by the
    schedule's decisions (AttentionRoles, the data every backend following the schedule
    reads), with the reason, before anything is lowered or printed."""
    from einsumattn.schedule.stages import NotFusable
    assert text != ONE_PASS
    with pytest.raises(NotFusable, match=f"^{reason}$"):
        AttentionRoles(einsumattn.load(text))


def test_another_heads_value_in_the_split_schedule_is_computed_right(tmp_path):
    """The split spec reading PRM at the mirrored head: no fused kernel (the schedule
    refuses the read), and the Triton backend agrees with the oracle. The split
    schedule's read skipped the batch coordinates and read this head's PRM."""
    from einsumattn.backends import names
    from einsumattn.verify import Case, case_inputs, compare
    text = ONE_PASS.replace("* PRM[b, h, p, m1]", "* PRM[b, H - 1 - h, p, m1]")
    cascade = einsumattn.load(text)
    module = import_file(compile_to_file(text, tmp_path, rewrite=False), "mirrored_heads")
    assert module.SCHEDULE["kernels"] == () or all(
        kernel["form"] != "split" for kernel in module.SCHEDULE["kernels"])
    sizes = {"B": 1, "H": 2, "P": 5, "M": 20, "E": 4, "F": 4}   # two key tiles of 16
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 3))
    layer = getattr(module, names.class_name(cascade.name))(backend="triton")
    results = compare(cascade, inputs, layer(*inputs.values()), "float32")
    assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_register_value_enters_a_tile_only_in_a_layout_that_holds_it():
    """How a value in registers enters a tile is the schedule's decision: a per-row
    value broadcasts into the row's key tiles, a key tile is read as it is, and a value
    over (row, feature) has no place in a (row, key) tile. (Every spec found so far that
    would need the last is refused earlier by the classification.)"""
    from einsumattn.schedule.stages import NotFusable
    roles = AttentionRoles(einsumattn.load(CAUSAL))
    tile = (roles.row, roles.stream)
    assert roles.layouts["AV"] == (roles.row, "f")
    assert roles.register_axes("GM", tile) == (True, False)
    assert roles.register_axes("QK", tile) == ()
    with pytest.raises(NotFusable, match=re.escape("AV is read in another layout (p, m)")):
        roles.register_axes("AV", tile)


def test_only_a_key_tiles_absence_is_a_condition_a_kernel_tests():
    """QK is absent above the diagonal: a key tile, whose `_ok` mask the kernel computes
    beside it. A per-row value's absence is its row presence; a condition on the absence
    of any other value is refused by the schedule."""
    from einsumattn.schedule.stages import NotFusable
    roles = AttentionRoles(einsumattn.load(CAUSAL))
    assert "QK" in roles.absent and roles.absence_flag("QK") == "QK_ok"
    with pytest.raises(NotFusable, match="^a condition on the absence of GM$"):
        roles.absence_flag("GM")
