"""The Cascade IR: resolution, reductions, recurrences, ordering, printing, binding."""

import pytest
import sympy

import einsumattn
from einsumattn import BindError, SpecError
from einsumattn.ir import bind, expr as ir
from einsumattn.ir.printer import cascade_text

from conftest import EXAMPLES, ROOT

SOFTMAX = (ROOT / "examples" / "softmax_3pass.attn").read_text()


def _structure(cascade):
    """Everything that defines a cascade's meaning, for equality checks."""
    return (cascade.name, {n: (r.size, r.fixed, r.split_of) for n, r in cascade.ranks.items()},
            cascade.splits, cascade.params, cascade.tensors, cascade.einsums, cascade.outputs)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_printed_cascade_parses_back_to_the_same_ir(path):
    cascade = einsumattn.load(path)
    again = einsumattn.load(cascade_text(cascade))
    assert _structure(again) == _structure(cascade)


def test_implicit_reduction_is_a_sum_over_right_only_variables():
    cascade = einsumattn.load(SOFTMAX)
    qk = cascade.einsum("QK")
    assert (qk.reduce_op, qk.reduced, qk.indices) == ("sum", ("e",), ("b", "h", "p", "m"))
    gm = cascade.einsum("GM")
    assert (gm.reduce_op, gm.reduced) == ("max", ("m",))
    sn = cascade.einsum("SN")
    assert (sn.reduce_op, sn.reduced) == (None, ())


def test_names_resolve_to_index_dim_param_and_tensor():
    cascade = einsumattn.load(SOFTMAX)
    nodes = list(ir.walk(cascade.einsum("QK").body))
    assert ir.Param("scale") in nodes
    assert ir.Read("Q", (ir.Index("b"), ir.Index("h"), ir.Index("p"), ir.Index("e"))) in nodes
    assert cascade.params["scale"].default == ir.Op("/", (ir.Const(1), ir.Op(
        "sqrt", (ir.Dim("E"),))))


def test_dataflow_order_follows_dependencies_not_source_order():
    text = """
dims P, M
input X[p, m]
output Z
Z[p] = sum[m] Y[p, m]
Y[p, m] = exp(X[p, m])
"""
    cascade = einsumattn.load(text)
    assert [e.tensor for e in cascade.einsums] == ["Y", "Z"]
    assert list(cascade.graph.edges) == [("X", "Y"), ("Y", "Z")]


def test_recurrence_is_a_self_loop_with_init_and_iterative_extent():
    cascade = einsumattn.load(ROOT / "examples" / "softmax_1pass.attn")
    rm = cascade.einsum("RM")
    assert rm.iterative == 3 and rm.iter_var == "m1"
    assert rm.init == ir.Op("neg", (ir.Const(float("inf")),)) or rm.init == ir.Const(
        -float("inf"))
    assert cascade.graph.has_edge("RM", "RM")
    m1 = cascade.ranks["M1"]
    assert m1.split_of == "M"
    assert sympy.simplify(m1.size - sympy.ceiling(sympy.Symbol("M", integer=True,
                                                               positive=True) / 16)) == 0
    assert cascade.extent("RM", 3) == m1.size + 1


def test_split_sizes_bind_from_the_parent_rank():
    cascade = einsumattn.load(ROOT / "examples" / "softmax_1pass.attn")
    binding = bind(cascade, sizes={"B": 1, "H": 1, "P": 2, "M": 33, "E": 4, "F": 4})
    assert (binding.sizes["M0"], binding.sizes["M1"]) == (16, 3)
    assert binding.extent(cascade, "RM") == (1, 1, 2, 4)


def test_split_by_a_param_uses_its_value():
    text = """
dims P, M
input X[p, m]
param T = 4
split M -> M1, M0 by T
Y[p, m1] = sum[m0] X[p, m1*M0 + m0]
output Y
"""
    cascade = einsumattn.load(text)
    assert bind(cascade, sizes={"P": 1, "M": 10}).sizes["M1"] == 3
    assert bind(cascade, sizes={"P": 1, "M": 10}, params={"T": 5}).sizes["M1"] == 2
    with pytest.raises(BindError, match="positive integer"):
        bind(cascade, sizes={"P": 1, "M": 10}, params={"T": 2.5})


@pytest.mark.parametrize("shapes, message", [
    ({"Q": (1, 2, 3, 4), "K": (1, 2, 5, 4), "V": (1, 3, 5, 4)}, "rank H is 3 from input V"),
    ({"Q": (1, 2, 3, 4), "K": (1, 2, 5), "V": (1, 2, 5, 4)}, "input K has 4 rank"),
    ({"Q": (1, 2, 0, 4), "K": (1, 2, 5, 4), "V": (1, 2, 5, 4)}, "positive integer size"),
])
def test_binding_errors_name_the_input_and_rank(shapes, message):
    with pytest.raises(BindError, match=message):
        bind(einsumattn.load(SOFTMAX), shapes=shapes)


def test_binding_checks_params():
    cascade = einsumattn.load(SOFTMAX)
    shapes = {"Q": (1, 1, 2, 4), "K": (1, 1, 3, 4), "V": (1, 1, 3, 2)}
    assert bind(cascade, shapes=shapes).params["scale"] == pytest.approx(0.5)
    assert bind(cascade, shapes=shapes, params={"scale": 3}).params["scale"] == 3.0
    with pytest.raises(BindError, match="unknown param 'scal'"):
        bind(cascade, shapes=shapes, params={"scal": 3})
    required = einsumattn.load("dims P\ninput X[p]\nparam s\nY[p] = X[p] * s\noutput Y")
    with pytest.raises(BindError, match="param 's' has no default"):
        bind(required, shapes={"X": (3,)})


def test_unbound_rank_is_reported_when_sizes_are_missing():
    with pytest.raises(BindError, match="rank M"):
        bind(einsumattn.load(SOFTMAX), sizes={"B": 1, "H": 1, "P": 2, "E": 2, "F": 2})


def test_load_reads_paths_and_text(tmp_path):
    path = tmp_path / "mine.attn"
    path.write_text("dims P\ninput X[p]\nY[p] = X[p]\noutput Y\n")
    assert einsumattn.load(path).name == "mine"          # default name: the file's stem
    assert einsumattn.load(str(path)).name == "mine"
    assert einsumattn.load(path.read_text()).name == "attention"
    with pytest.raises(SpecError, match="cannot read"):
        einsumattn.load(tmp_path / "missing.attn")


def test_spec_text_cannot_smuggle_python():
    # Names are resolved against the spec's own declarations; nothing is eval'd.
    for rhs in ("__import__", "os", "eval", "X.__class__"):
        with pytest.raises(SpecError):
            einsumattn.load(f"dims P\ninput X[p]\nY[p] = X[p] * {rhs}\noutput Y")


def test_expression_text_round_trips_precedence():
    cascade = einsumattn.load(
        "dims P\ninput X[p]\nY[p] = -X[p] ** 2 + (1 - X[p]) * 2 ** -1 / (X[p] - (1 - 2))\n"
        "output Y")
    body = cascade.einsum("Y").body
    again = einsumattn.load(f"dims P\ninput X[p]\nY[p] = {ir.to_text(body)}\noutput Y")
    assert again.einsum("Y").body == body


# ------------------------------------------------------------------ numbers

NUMBERS = "dims P\ninput X[p]\n{}\noutput Y\n"


@pytest.mark.parametrize("literal, accepted", [
    ("9007199254740992", True),            # 2**53
    ("009007199254740992", True),          # leading zeros do not count
    ("9007199254740993", False),
    ("99999999999999999999999", False),
    ("1" + "0" * 5000, False),             # int() itself refuses 4300+ digits
])
def test_integer_literals_are_exact_up_to_2_to_the_53(literal, accepted):
    text = NUMBERS.format(f"Y[p] = X[p] + {literal}")
    if accepted:
        body = einsumattn.load(text).einsums[0].body
        assert body.args[1] == ir.Const(int(literal))
        return
    with pytest.raises(SpecError) as caught:
        einsumattn.load(text)
    error = caught.value
    assert "is larger than 2**53 (9007199254740992)" in error.message
    assert (error.span.line, error.span.column) == (3, 15)
    assert "write it as a decimal" in error.hint


@pytest.mark.parametrize("statement", ["dims M = 9007199254740993\ninput Z[m]",
                                       "split P -> P1, P0 by 9007199254740993"])
def test_sizes_and_split_factors_past_2_to_the_53_are_errors(statement):
    text = f"dims P\n{statement}\ninput X[p]\nY[p] = X[p]\noutput Y\n"
    with pytest.raises(SpecError, match="larger than 2\\*\\*53") as caught:
        einsumattn.load(text)
    assert caught.value.hint == "sizes and split factors are whole numbers up to 2**53"


@pytest.mark.parametrize("expression, accepted", [
    ("2 ** 53", True), ("2 ** 53 + 1", False), ("-(2 ** 53)", True),
    ("2 ** 100", False), ("10 ** 10 ** 10", False),   # refused before it is computed
    ("4503599627370496 * 2", True), ("4503599627370496 * 4", False),
    ("2.0 ** 100", True), ("2 ** -1", True), ("7 // 2 % 3", True),
    ("1e308 * 10", False), ("exp(1000)", False), ("10.0 ** 400", False),
    ("1 / 0", False), ("7 // 0", False), ("7 % (3 - 3)", False),
    ("log(0)", False), ("sqrt(-1)", False), ("(-8) ** 0.5", False),
    ("inf - inf", True), ("exp(inf)", True), ("-inf * 0.5", True),   # already infinite
    ("sigmoid(-1000)", True), ("where(1 < 2, 3, 1 / 0)", False),
])
def test_constant_steps_stay_exact_and_finite(expression, accepted):
    """Constants are computed as Python numbers by the generated code: a step that leaves
    the exact integers or overflows float64 is a located error, not an error at every
    call. Values and params alike."""
    for body in (f"Y[p] = X[p] * ({expression})", f"param c = {expression}\nY[p] = X[p] * c"):
        text = NUMBERS.format(body)
        if accepted:
            einsumattn.load(text)
            continue
        with pytest.raises(SpecError) as caught:
            einsumattn.load(text)
        assert caught.value.span is not None and caught.value.span.line == 3
        assert caught.value.hint


def test_a_large_integer_constant_is_pointed_at_with_a_decimal_spelling():
    with pytest.raises(SpecError) as caught:
        einsumattn.load(NUMBERS.format("Y[p] = X[p + 4503599627370496 * 4]"))
    error = caught.value
    assert error.message.startswith("the integer constant '4503599627370496 * 4' is larger")
    assert (error.span.line, error.span.column) == (3, 14)
    assert error.hint.endswith("4503599627370496.0 * 4")


# ------------------------------------------------------------------ index divisors

DIVISOR = """dims B, H, KH, P, M, E, G = 4
split M -> M1, M0 by 16
input Q[b, h, p, e], K[b, kh, m, e]
Y[b, h, p, m] = Q[b, h, p, e] * K[b, h {op} {divisor}, m, e]
output Y
"""


@pytest.mark.parametrize("divisor, checked", [
    ("KH", False), ("2", False), ("G", False),                 # a dim or an integer, as in 1.0
    ("(2 * KH)", False), ("(H + 1)", False), ("(KH * H)", False),
    ("(G - 3)", False), ("(H + 1 - 1)", False), ("(M0 // 4)", False),  # fixed sizes count
    ("(H // KH)", True), ("(2 * (H // KH))", True), ("(H // KH + 0)", True),
    ("(H // KH // 2)", True), ("(M1)", False),
])
@pytest.mark.parametrize("op", ["//", "%"])
def test_divisors_are_positive_integer_expressions_of_dims(divisor, checked, op):
    """Accepted: proved at least 1 from the declarations, or at least 1 once its floor
    quotients are, which the binding then checks."""
    from einsumattn.ir.divisors import checked_divisors

    cascade = einsumattn.load(DIVISOR.format(op=op, divisor=divisor))
    index = cascade.einsum("Y").body.args[1].indices[1]
    assert index.op == op and index.args[0] == ir.Index("h")
    assert [ir.to_text(d) for d, _ in checked_divisors(cascade)] == \
        ([ir.to_text(index.args[1])] if checked else [])


def test_the_paper_spelling_of_gqa_builds_nested_floor_divisions():
    cascade = einsumattn.load(DIVISOR.format(op="//", divisor="(H // KH)"))
    index = cascade.einsum("Y").body.args[1].indices[1]
    assert index == ir.Op("//", (ir.Index("h"), ir.Op("//", (ir.Dim("H"), ir.Dim("KH")))))


@pytest.mark.parametrize("divisor, column, message", [
    ("(H - KH)", 44, "the divisor 'H - KH' of '//' cannot be proved positive"),
    ("(H - 1)", 44, "the divisor 'H - 1' of '//' cannot be proved positive"),
    ("(G - 4)", 44, "the divisor 'G - 4' of '//' cannot be proved positive"),
    ("0", 43, "the divisor '0' of '//' cannot be proved positive"),
    ("(0 * H)", 44, "the divisor '0 * H' of '//' cannot be proved positive"),
    ("(H // (KH - KH))", 44, "the divisor 'H // (KH - KH)' of '//' cannot be proved"),
    ("(H // KH - 1)", 44, "the divisor 'H // KH - 1' of '//' cannot be proved positive"),
    ("(H // kh)", 49, "'kh' is not one"),
    ("(H % KH)", 44, "'H % KH' is not one"),
    ("(H / KH)", 44, "'H / KH' is not one"),
])
def test_divisors_that_cannot_be_proved_positive_are_errors(divisor, column, message):
    with pytest.raises(SpecError) as caught:
        einsumattn.load(DIVISOR.format(op="//", divisor=divisor))
    error = caught.value
    assert message in error.message
    assert (error.span.line, error.span.column) == (4, column)
    assert error.hint


def test_a_divisor_below_1_at_binding_is_a_bind_error_naming_it():
    cascade = einsumattn.load(DIVISOR.format(op="//", divisor="(H // KH)"))
    bind(cascade, sizes={"B": 1, "H": 4, "KH": 4, "P": 1, "M": 1, "E": 1})
    with pytest.raises(BindError) as caught:
        bind(cascade, sizes={"B": 1, "H": 2, "KH": 4, "P": 1, "M": 1, "E": 1})
    assert str(caught.value) == (
        "the index divisor 'H // KH' in K[b, h // (H // KH), m, e] is 0 at H=2, KH=4; it "
        "must be at least 1 (a floor quotient such as H // KH needs H >= KH)")


def test_a_split_whose_parts_are_unused_binds():
    """_rank_used asked every split about its parts, and so asked M1 about M1 forever
    (a RecursionError at evaluation) when a declared split was not used."""
    cascade = einsumattn.load("dims M\nsplit M -> M1, M0 by 4\ninput X[m]\nY[m] = X[m]\n"
                              "output Y\n")
    assert bind(cascade, sizes={"M": 3}).sizes == {"M": 3}
