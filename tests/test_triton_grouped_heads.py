"""GQA's query heads packed into the row tile (schedule/model.py's Group): one program per
batch point and group of query heads, its row tile holding the rows of every head of the
group, so its K and V tiles are loaded once per group, not once per head."""

import pytest

import einsumattn
from einsumattn.backends.module import Plan
from einsumattn.schedule import kernel_ir as k
from einsumattn.verify import Case, case_inputs, compare

from conftest import ROOT, compiled_specs
from test_configs import configured
from test_triton_ranges import loads_and_stores_in_bounds

GQA = (ROOT / "examples" / "gqa.attn").read_text()
CAUSAL_GQA = GQA.replace("attention gqa", "attention causal_gqa").replace(
    "K[b, h * KH // H, m, e] * scale\n", "K[b, h * KH // H, m, e] * scale  where m <= p\n")


def test_gqa_packs_the_heads_of_a_group_and_reads_k_and_v_at_the_group():
    assert "where m <= p" in CAUSAL_GQA
    for text in (GQA, CAUSAL_GQA):
        (kernel,) = Plan(einsumattn.load(text)).triton.fused
        group = kernel.schedule.group
        assert (group.var, group.group, group.rank, group.extent) == \
            ("h_", "kh_", "KH_", "H_")
        assert "loaded once per group" in kernel.description
        # Every K and V load's head coordinate is the program's group, one per program.
        loads = [node for node in _walk(kernel.body) if isinstance(node, k.Load)
                 and node.tensor in ("K_", "V_")]
        assert loads and all(load.coordinates[1].index == einsumattn.ir.expr.Index("kh_")
                             for load in loads)


def test_no_packed_row_coordinate_is_held_across_the_loops():
    """A packed row's query row and head take an integer division each (model.Group):
    held from the prologue to the stores, they cost 4 int64 registers a row, 8 rows a
    thread in the stores' layout, and GQA at head dim 128 spilled 12 B on sm_90a
    (benchmarks/results/sm90-static-2026-12-01-session30.md). The statements after the
    last loop compute them again before anything there reads them."""
    per_row = {"packed", "head", "packed_rest", "p_", "h_", "row_live"}
    for text in (GQA, CAUSAL_GQA):
        (kernel,) = Plan(einsumattn.load(text)).triton.fused
        body = list(kernel.body)
        last = max(i for i, s in enumerate(body) if isinstance(s, k.Loop))
        bound, read = set(), set()
        for statement in body[last + 1:]:
            reads = {n.name for n in _walk([statement]) if isinstance(n, k.Var)} & per_row
            assert reads <= bound, (statement, reads - bound)
            read |= reads
            if isinstance(statement, k.Let):
                bound.add(statement.name)
            elif isinstance(statement, k.Unflatten):
                bound |= {name for name, _ in statement.parts} | {statement.rest}
        assert {"p_", "h_", "row_live"} <= read      # the stores' rows and mask


@pytest.mark.parametrize("spec", [
    # the head in arithmetic (a per-head slope): a packed row's head is not one value
    GQA.replace("* scale\n", "* scale + h\n"),
    # K read at its own head: no group
    GQA.replace("K[b, kh, m, e]", "K[b, h, m, e]").replace("h * KH // H, m, e]", "h, m, e]"),
    # the other spelling, `h // (H // KH)`, leaves the kv heads where KH does not divide
    # H: rows that may be absent keep one head per program
    GQA.replace("h * KH // H", "h // (H // KH)"),
])
def test_no_packing_where_a_row_tile_would_not_be_one_group(spec):
    plan = Plan(einsumattn.load(spec))
    assert plan.triton.fused and all(f.schedule.group is None for f in plan.triton.fused)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    return compiled_specs(tmp_path_factory.mktemp("grouped"),
                          {"gqa": GQA, "causal_gqa": CAUSAL_GQA}, "grouped", train=True)


# (H, KH): even groups, uneven groups (3 and 2 heads), one head a group, more kv heads
# than query heads (groups with no head), and one group of all heads.
HEADS = [(4, 2), (5, 2), (3, 3), (4, 7), (6, 1)]


# Every group shape at the interpreter's tiles; the larger row tiles (64 rows: 16 query
# rows of a group of 4) on the causal spec, whose skipped tiles' bounds they exercise,
# with even and uneven groups. (The full product took 30 cases; CI has 15 minutes.)
CASES = [(name, heads, None) for name in ("gqa", "causal_gqa") for heads in HEADS] + \
    [("causal_gqa", heads, tiles) for heads in ((4, 2), (5, 2)) for tiles in ((64, 16), (32, 32))]


@pytest.mark.parametrize("name, heads, tiles", CASES)
def test_packed_rows_match_the_oracle_and_stay_in_bounds(modules, name, heads, tiles):
    """At the interpreter's tiles and at row tiles that hold several query rows of
    every head of a group (64 rows: 16 query rows of a group of 4), across key tiles
    past the diagonal (the skipped tiles' bounds are the packed tile's first and last
    query rows)."""
    cascade, module = modules[name]
    H, KH = heads
    sizes = dict(B=2, H=H, KH=KH, P=37, M=41, E=8, F=4)
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, H * 10 + KH))
    kernel = module.SCHEDULE["kernels"][0]
    pins = {} if tiles is None else {kernel["name"]: {
        kernel["grid"]["row_tile"]: tiles[0], kernel["loops"][0]["tile"]: tiles[1]}}
    with configured(module, TUNING_FUSED={**module.TUNING_FUSED, **pins}), \
            loads_and_stores_in_bounds():
        out = getattr(module, module.__all__[0])(backend="triton")(*inputs.values())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


@pytest.mark.parametrize("name", ["gqa", "causal_gqa"])
def test_packed_rows_train(modules, name):
    """The forward that saves LSE and the dQ stage pack the heads too; gradients match
    the gradient cascade for uneven groups."""
    from test_triton_training import _agrees_with_the_gradient_cascade, _backward, \
        _float32_case
    from einsumattn.transform.grad import gradient

    cascade, module = modules[name]
    grouped = [kernel["name"] for kernel in module.SCHEDULE["training"]["kernels"]
               if kernel["group"]]
    assert any(n.endswith("_saving__fused") for n in grouped) and \
        any(n.endswith("_dQ__fused") for n in grouped)
    sizes = dict(B=1, H=5, KH=2, P=21, M=19, E=4, F=3)
    inputs, cotangents = _float32_case(cascade, sizes, False, 3, 4)
    leaves = _backward(module, cascade, inputs, cotangents, "triton")
    assert _agrees_with_the_gradient_cascade(gradient(cascade), inputs, cotangents, leaves)


def _walk(statements):
    """Every kernel IR node under the statements."""
    import dataclasses
    stack = list(statements)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (tuple, list)):
            stack.extend(node)
        elif dataclasses.is_dataclass(node):
            stack.extend(getattr(node, f.name) for f in dataclasses.fields(node))
