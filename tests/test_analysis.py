"""Pass, buffer and cost analysis of the examples, the report formats and the CLI.
The FuseMax paper's own cascades are in test_analysis_fusemax.py; the reasoning behind
each expected count below is in docs/analysis.md."""

import json

import pytest
import sympy

import einsumattn
from einsumattn.cli import main
from einsumattn.ir.build import size_symbol

from conftest import ROOT

EXPECTED_PASSES = {
    "softmax_3pass": {"M": 3, "E": 1},
    "softmax_1pass": {"M": 1, "M1": 1, "M0": 2, "E": 1},
    "causal_softmax": {"M": 3, "E": 1},
    "sliding_window_sinks": {"M": 3, "E": 1},
    "alibi": {"M": 3, "E": 1},
    "softcap": {"M": 3, "E": 1},
    "gqa": {"M": 3, "E": 1},
    "sigmoid_attention": {"M": 1, "E": 1},
    "linear_attention": {"M": 1, "E": 1},
    "gla_recurrent": {"T": 1, "D": 1},
    "gla": {"T": 1, "D": 1},
    "eca": {"H": 2, "W": 2, "K": 1},
    "diff_transformer": {"M": 3, "E": 1},
    "relu_attention": {"M": 1, "E": 1},
    "clipped_softmax": {"M": 3, "E": 1, "D": 1},
    "neighborhood_1d": {"M": 3, "E": 1},
    "neighborhood_2d": {"M": 3, "E": 1},
    "squeeze_excitation": {"C": 2, "H": 2, "W": 2, "R": 1},
    "retention": {"M": 1, "E": 1},
    "softpick": {"M": 3, "E": 1},
    "normalized_attention": {"M": 3, "E": 1},
    "stick_breaking": {"M": 1, "E": 1, "J": 1},
    "cbam": {"C": 3, "H": 2, "W": 2, "R": 1, "I": 1, "J": 1},
    "aaren": {"M": 3, "E": 1},
    "efficient_attention": {"M": 3, "E": 3},
    "cosine_attention": {"M": 3, "E": 1},
}
PRIMARY = {"softmax_3pass": "M", "softmax_1pass": "M", "causal_softmax": "M",
           "sliding_window_sinks": "M", "alibi": "M", "softcap": "M", "gqa": "M",
           "sigmoid_attention": "M", "linear_attention": "M", "gla_recurrent": "T",
           "gla": "T",
           "eca": "H", "diff_transformer": "M", "relu_attention": "M",
           "clipped_softmax": "M", "neighborhood_1d": "M", "neighborhood_2d": "M",
           "squeeze_excitation": "C",
           "retention": "M", "softpick": "M", "normalized_attention": "M",
           "stick_breaking": "M", "cbam": "C", "aaren": "M", "efficient_attention": "M",
           "cosine_attention": "M"}
S = {name: size_symbol(name) for name in "B H P M E F P0".split()}


def example(name):
    return ROOT / "examples" / f"{name}.attn"


def test_every_example_has_an_expected_count():
    assert set(EXPECTED_PASSES) == {p.stem for p in (ROOT / "examples").glob("*.attn")}


@pytest.mark.parametrize("name", sorted(EXPECTED_PASSES))
def test_example_pass_counts(name):
    report = einsumattn.analyze(example(name))
    assert report.passes == EXPECTED_PASSES[name]
    assert report.primary_rank == PRIMARY[name]


def test_softmax_dependencies_are_named_as_in_fusemax():
    info = einsumattn.analyze(example("softmax_3pass")).ranks["M"]
    assert [(d.producer, d.consumer, d.new_pass) for d in info.dependencies] == [
        ("GM", "SN", 2), ("SD", "A", 3)]
    assert info.dependencies[0].explain() == (
        "GM fully reduces M; SN uses it and re-reads QK's M fiber, so it runs in pass 2")
    assert {k: info.einsums_in_pass(k) for k in (1, 2, 3)} == {
        1: ["QK", "GM"], 2: ["SN", "SD"], 3: ["A", "AV"]}


def test_dependency_through_einsums_that_do_not_traverse_the_rank():
    # GAP reduces H; O reads it through Y and S, which never touch H: still 2 passes.
    info = einsumattn.analyze(example("eca")).ranks["H"]
    (dep,) = info.dependencies
    assert (dep.producer, dep.consumer, dep.via) == ("GAP", "O", ("Y", "S"))


def test_three_pass_buffers_hold_whole_key_fibers():
    buffers = einsumattn.analyze(example("softmax_3pass")).buffers
    assert buffers.tile == {"B": 1, "H": 1, "P": S["P0"]}
    first, second = buffers.boundaries
    assert [t.name for t in first.live] == ["QK", "GM"]
    assert sympy.simplify(first.footprint - (S["P0"] * S["M"] + S["P0"])) == 0
    assert [t.name for t in second.live] == ["SN", "SD"]
    # Spilling QK instead: written once, read once, 2 bytes per float16 element.
    qk = first.live[0]
    b, h, p, m = S["B"], S["H"], S["P"], S["M"]
    assert sympy.simplify(qk.spill_bytes - 2 * 2 * b * h * p * m) == 0
    assert buffers.grows_with_rank


@pytest.mark.parametrize("name", ["softmax_1pass", "linear_attention", "sigmoid_attention",
                                  "gla_recurrent"])
def test_one_pass_state_does_not_grow_with_the_streamed_rank(name):
    report = einsumattn.analyze(example(name))
    buffers = report.buffers
    assert not buffers.boundaries
    assert not buffers.grows_with_rank
    streamed = {size_symbol(r) for r in report.cascade.ranks
                if report.cascade.root_rank(r) == report.primary_rank}
    assert not streamed & buffers.onchip_state.free_symbols


def test_flash_attention_working_set_per_program():
    # Q tile, K and V tiles of 16 keys, the output accumulator (current and next) and its
    # rescaled tile, and 39 per-row values over the 16-key tile: no M anywhere.
    state = einsumattn.analyze(example("softmax_1pass")).buffers.onchip_state
    e, f, p0 = S["E"], S["F"], S["P0"]
    assert sympy.expand(state - (e * p0 + 16 * e + 3 * f * p0 + 16 * f + 39 * p0)) == 0


def test_cost_counts_softmax_operations():
    cost = einsumattn.analyze(example("softmax_3pass")).cost
    b, h, p, m, e, f = (S[k] for k in "BHPMEF")
    assert sympy.expand(cost.total["mac"] - b * h * p * m * (e + f)) == 0
    assert cost.total["exp"] == b * h * p * m
    assert cost.total["div"] == b * h * p * m
    assert cost.einsums["QK"].per_point == {"mac": 1, "add": 0, "mul": 1, "div": 0, "exp": 0,
                                           "transcendental": 0, "maxmin": 0, "compare": 0}
    assert sympy.expand(cost.bytes - 2 * b * h * (p * e + m * e + m * f + p * f)) == 0


def test_bound_sizes_give_numbers():
    report = einsumattn.analyze(example("softmax_3pass"), dtype="float32",
                                sizes=dict(B=1, H=2, P=128, M=256, E=64, F=64, P0=64))
    data = report.to_dict()
    assert data["cost"]["total"]["exp"]["value"] == 2 * 128 * 256
    boundary = data["ranks"]["M"]["buffers"]["boundaries"][0]
    assert boundary["elements"]["value"] == 64 * 256 + 64
    assert data["ranks"]["M"]["buffers"]["boundaries"][0]["spill_bytes"]["value"] == \
        4 * 2 * (2 * 128 * 256 + 2 * 128)


@pytest.mark.parametrize("name", sorted(EXPECTED_PASSES))
@pytest.mark.parametrize("fmt", ["text", "json", "md", "dot"])
def test_every_format_renders(name, fmt):
    text = einsumattn.analyze(example(name)).render(fmt)
    if fmt == "json":
        data = json.loads(text)
        assert data["schema"] == "einsumattn.analysis/1"
        assert data["passes"] == EXPECTED_PASSES[name]
        assert all(type(v) is int for v in data["passes"].values())
    elif fmt == "dot":
        assert text.startswith("digraph") and text.count("{") == text.count("}")
    else:
        for rank, count in EXPECTED_PASSES[name].items():
            assert rank in text


def test_dot_marks_read_read_edges():
    dot = einsumattn.analyze(example("softmax_3pass")).to_dot()
    assert '"GM" -> "SN" [color=red' in dot and '"SD" -> "A" [color=red' in dot
    assert '"QK" -> "SN";' in dot  # an ordinary edge stays plain


def test_cli_analyze(tmp_path, capsys):
    assert main(["analyze", str(example("softmax_3pass"))]) == 0
    out = capsys.readouterr().out
    assert "Why M needs 3 passes" in out and "GM fully reduces M" in out
    target = tmp_path / "report.json"
    assert main(["analyze", str(example("eca")), "--format", "json", "-o", str(target),
                 "--bind", "B=2,C=8,H=4,W=4,K=3,C0=8"]) == 0
    assert json.loads(target.read_text())["passes"] == {"H": 2, "W": 2, "K": 1}
    assert main(["analyze", str(example("eca")), "--bind", "B=2,Q=3"]) == 2
    assert "unknown size 'Q'" in capsys.readouterr().err


def test_python_api_accepts_text_and_cascades():
    text = example("softmax_3pass").read_text()
    assert einsumattn.analyze(text).passes["M"] == 3
    assert einsumattn.analyze(einsumattn.load(text)).passes["M"] == 3


# ------------------------------------------------------------------ many ranks

def many_rank_spec(ranks: int, kind: str) -> str:
    """`sum`: one input over every rank, summed to a scalar (each rank fully reduced);
    `chain`: a chain of matrix-vector products, one rank per step."""
    names = [f"Z{i}" for i in range(ranks)]
    lines = ["dims " + ", ".join(names)]
    if kind == "sum":
        indices = ", ".join(n.lower() for n in names)
        lines += [f"input X[{indices}]", f"Y = X[{indices}]", "output Y"]
    else:
        lines.append("input X[z0]")
        previous = "X"
        for i in range(1, ranks):
            lines += [f"input W{i}[z{i - 1}, z{i}]",
                      f"T{i}[z{i}] = {previous}[z{i - 1}] * W{i}[z{i - 1}, z{i}]"]
            previous = f"T{i}"
        lines.append(f"output {previous}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(EXPECTED_PASSES))
def test_formulas_read_as_simplify_wrote_them(name, monkeypatch):
    """Formulas are tidied by expanding and pulling out the common factor, not by
    sympy.simplify (whose time grows fast with the number of sizes); the report of
    every example reads exactly as it did with simplify."""
    from einsumattn.analysis import buffers

    tidied = einsumattn.analyze(example(name)).to_text()
    monkeypatch.setattr(buffers, "tidy", sympy.simplify)
    assert tidied == einsumattn.analyze(example(name)).to_text()


@pytest.mark.parametrize("kind", ["sum", "chain"])
def test_many_ranks_are_analysed_without_simplify(kind, monkeypatch):
    """With 60 ranks every formula has more sizes than FULL_CANCEL_SIZES: no formula goes
    through sympy.simplify (40 ranks took 17 s, 200 more than 180 s, nearly all in it)."""
    from einsumattn.analysis import formulas

    def refuse(*args, **kwargs):
        raise AssertionError("sympy.simplify on a formula of many sizes")

    monkeypatch.setattr(sympy, "simplify", refuse)
    cascade = einsumattn.load(many_rank_spec(60, kind))
    report = einsumattn.analyze(cascade)
    assert len(report.ranks) == (60 if kind == "sum" else 59)
    assert len(report.cost.intensity.free_symbols) > formulas.FULL_CANCEL_SIZES


def test_tidy_pulls_out_a_common_product_of_sizes_and_keeps_the_value():
    from einsumattn.analysis.formulas import ratio, tidy

    M, P0, E, F = (size_symbol(n) for n in ("M", "P0", "E", "F"))
    assert str(tidy(2 * M * P0 + 4 * P0)) == "2*P0*(M + 2)"
    assert str(tidy(4 * M + 2)) == "4*M + 2"     # a bare number stays multiplied in
    assert str(tidy(sympy.Max(2 * M * P0 + 4 * P0, E))) == "Max(E, 2*P0*(M + 2))"
    sizes = sympy.symbols("s0:12", positive=True, integer=True)
    numerator = 3 * sizes[0] * sympy.Add(*sizes) * sizes[1]
    denominator = 6 * sizes[0] * (sizes[2] + sizes[3])
    quotient = ratio(numerator, denominator)
    assert sympy.expand(quotient * denominator - numerator) == 0
    assert sizes[0] not in sympy.Mul.make_args(quotient)  # the common factor cancelled


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sum", "chain"])
def test_two_hundred_ranks_are_analysed_in_seconds(kind):
    """Before: more than 180 s for 200 ranks (the time grew with the square of the rank
    count and faster); now a few seconds. The bound is generous on purpose."""
    import time

    cascade = einsumattn.load(many_rank_spec(200, kind))
    start = time.monotonic()
    einsumattn.analyze(cascade).to_text()
    assert time.monotonic() - start < 60
