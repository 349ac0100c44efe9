"""The static presence analysis (analysis/presence.py): which reads can leave their
tensor's extent. A coordinate whose range over its variables' ranks provably stays
inside the extent for every size needs no mask; one that can leave it keeps its mask,
and the oracle agrees on both counts."""

import itertools

import numpy as np
import pytest

import einsumattn
from einsumattn.analysis.presence import absent_tensors, in_range_by_construction, presence_key
from einsumattn.backends.module import Plan
from einsumattn.schedule.model import LoopKind
from einsumattn.evaluate import evaluate
from einsumattn.ir import expr as ir

from conftest import ROOT

SPEC = """dims H, KH, M
input Q[h], K[kh, m]
Y[h, m] = Q[h] * K[{index}, m]
output Y
"""


def _index(text: str) -> ir.Expr:
    cascade = einsumattn.load(SPEC.format(index=text))
    return cascade, cascade.einsum("Y").body.args[1].indices[0]


@pytest.mark.parametrize("text, inside", [
    ("h * KH // H", True),          # GQA's kv head: <= (H - 1) KH / H < KH
    ("h // 2", False),              # H > 2 KH reads past the kv heads
    ("h * KH // H // 2", True),
    ("(h * KH + KH - 1) // H", True),   # <= (H KH - 1) / H < KH
    ("h * KH // H + 1", False),     # the last head reads kv head KH
    ("h - 1", False),               # h = 0 reads -1
    ("KH - 1", True),
    ("KH", False),
    ("h % KH", False),              # no rule for %: kept (safe)
    # Divisors that are expressions of dims (LANGUAGE.md 1.1).
    ("h * KH // (2 * H)", True),    # <= (H - 1) KH / (2 H) < KH
    ("h // (H // KH)", False),      # H = 5, KH = 2: head 4 reads kv head 2
    ("h // (2 * KH)", False),
])
def test_index_ranges_are_proved_only_when_they_hold(text, inside):
    cascade, index = _index(text)
    assert in_range_by_construction(cascade, "K", 0, index) is inside
    assert ("Y" in absent_tensors(cascade)) is (not inside)


@pytest.mark.parametrize("text", ["h * KH // H", "h * KH // H // 2", "(h * KH + KH - 1) // H",
                                  "KH - 1", "h * KH // (2 * H)"])
def test_proved_ranges_hold_at_every_small_size(text):
    """The oracle, which checks every read at run time, never finds a point absent."""
    cascade, _ = _index(text)
    for h, kh in itertools.product(range(1, 7), range(1, 7)):
        k = np.arange(kh * 2, dtype=float).reshape(kh, 2) + 1      # no zero entries
        y = evaluate(cascade, {"Q": np.ones(h), "K": k})["Y"]     # absent points are 0
        assert np.all(y != 0), (text, h, kh)


def test_gqa_is_fused_from_its_derived_one_pass_cascade():
    cascade = einsumattn.load(ROOT / "examples" / "gqa.attn")
    assert absent_tensors(cascade) == set()
    plan = Plan(cascade)
    assert plan.kernel is plan.rewritten.cascade
    (kernel,) = plan.triton.fused
    assert [(loop.var, loop.kind) for loop in kernel.schedule.loops] == \
        [("m1_", LoopKind.SPLIT_STEPS)]


def test_an_unproved_divisor_range_is_absent_where_it_leaves_the_extent():
    """h // (H // KH) with H = 5, KH = 2: heads 0..3 read kv heads 0 and 1, head 4 reads
    kv head 2, which is outside K: its row is absent (0), as the kept mask says."""
    cascade, _ = _index("h // (H // KH)")
    y = evaluate(cascade, {"Q": np.ones(5), "K": np.ones((2, 3))})["Y"]
    assert np.all(y[:4] == 1) and np.all(y[4] == 0)


def test_presence_keys_tell_tensors_present_at_the_same_points():
    cascade = einsumattn.load("""attention keys
dims P, M
input X[p, m], Y[p, m]
A[p, m] = X[p, m] where m <= p
B[p, m] = exp(A[p, m]) * Y[p, m]
C[p, m] = where(A[p, m] > 0, 1.0, 0.0)
D[p, m] = X[p, m] where m < p
E[p, m] = where(Y[p, m] > 0, A[p, m], 0.0)
F[p, m] = A[m, p]
S[p] = sum[m] A[p, m]
output B, C, D, E, F, S
""")
    key = {name: presence_key(cascade, name) for name in "ABCDEFS"}
    assert key["A"] == key["B"] == key["C"] != frozenset()
    assert key["D"] not in (None, key["A"])                   # another filter
    assert key["E"] is None and key["F"] is None     # a branch that may be absent; a transpose
    assert key["S"] == frozenset()                   # a sum of no term is 0: present
