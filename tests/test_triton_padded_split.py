"""A spec's own split whose factor is no tile (below tl.dot's 16, or not a power of two)
runs fused on a padded tile: each step holds the next power of two of lanes (16 at
least with a dot), the lanes at m0 >= M0 masked, and the steps advance by the factor
(schedule/attention.py, padded_tile). It used to be refused ("split factor 4: a tile
needs a power of two >= 16") and ran one kernel per Einsum."""

import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.schedule.attention import padded_tile
from einsumattn.verify import Case, case_inputs, compare, dot_rounding, run_check

from conftest import ROOT

SOFTMAX_1PASS = (ROOT / "examples" / "softmax_1pass.attn").read_text()

# The sum over the key chunks of each chunk's largest score: its value depends on the
# factor (chunks of 5 keys), so a kernel that stepped by its 16 lanes would be wrong.
CHUNK_MAX = """attention chunk_max
dims P, M, E
input Q[p, e], K[m, e]
split M -> M1, M0 by 5
S[p, m1, m0] = Q[p, e] * K[m1*M0 + m0, e]
LM[p, m1] = max[m0] S[p, m1, m0]
init R[p, 0] = 0
R[p, m1+1] = R[p, m1] + LM[p, m1]
Y[p] = R[p, M1]
output Y
"""

# No dot: the lanes are the next power of two of the factor, 4 for 3.
CHUNK_SUM = """attention chunk_sum
dims P, M
input Q[p], K[m]
split M -> M1, M0 by 3
S[p, m1, m0] = Q[p] * K[m1*M0 + m0]
LM[p, m1] = max[m0] S[p, m1, m0]
init R[p, 0] = 0
R[p, m1+1] = R[p, m1] + LM[p, m1]
Y[p] = R[p, M1]
output Y
"""


def test_the_padded_tile_is_the_next_power_of_two_and_16_for_a_dot():
    assert [padded_tile(f, True) for f in (1, 4, 5, 16, 17, 50)] == [16, 16, 16, 16, 32, 64]
    assert [padded_tile(f, False) for f in (1, 3, 4, 5, 50)] == [1, 4, 4, 8, 64]


def _module(text: str, tmp_path, name: str):
    return import_file(compile_to_file(text, tmp_path), name)


@pytest.mark.parametrize("factor", [4, 5])
def test_softmax_1pass_split_by_a_small_factor_fuses_on_a_padded_tile(tmp_path, factor):
    text = SOFTMAX_1PASS.replace("by 16", f"by {factor}")
    module = _module(text, tmp_path, f"softmax_by_{factor}")
    assert "not fusable" not in module.__doc__
    (kernel,) = module.SCHEDULE["kernels"]
    knob = kernel["knobs"]["m0__BLOCK"]
    assert knob["default"] == 16 and knob["fixed"]
    assert f"the split factor M0 = {factor}, padded to 16 lanes" in knob["constraint"]
    reports = []
    assert run_check(einsumattn.load(text), module, ("triton",), examples=4,
                     report=reports.append), "\n".join(reports)


@pytest.mark.parametrize("text, lanes", [(CHUNK_MAX, 16), (CHUNK_SUM, 4)],
                         ids=["chunk_max", "chunk_sum"])
def test_a_result_that_depends_on_the_factor_steps_by_the_factor(tmp_path, text, lanes):
    cascade = einsumattn.load(text)
    module = _module(text, tmp_path, cascade.name)
    (kernel,) = module.SCHEDULE["kernels"]
    assert kernel["knobs"]["m0__BLOCK"]["default"] == lanes
    # 23 keys: 5 (or 8) chunks, the last one partial; every chunk's lanes past the factor
    # would be the next chunk's keys.
    case = Case({"P": 3, "M": 23, **({"E": 4} if "E" in cascade.ranks else {})},
                "float32", 1.0, True, 7)
    inputs = case_inputs(cascade, case)
    results = compare(cascade, inputs, module.__dict__[cascade.name](*inputs.values(),
                                                                     backend="triton"),
                      "float32", rounding=dot_rounding(cascade, module))
    assert all(r.ok for r in results), [r.describe() for r in results]


def test_the_host_refuses_another_tile_for_a_padded_split(tmp_path):
    text = SOFTMAX_1PASS.replace("by 16", "by 4")
    module = _module(text, tmp_path, "softmax_by_4_tuned")
    module.TUNING_FUSED["softmax_1pass__fused"]["m0__BLOCK"] = 32
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="the split factor M0 = 4 padded to 16 lanes"):
        module.softmax_1pass(q, q, q, backend="triton")
