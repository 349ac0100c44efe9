"""Index arithmetic in 32 bits where it fits (backends/triton_indices.py): the attention
kernels define their row tile and key tiles in int32 when the host's INDEX_32 says every
int32 value computed from them fits (masks, clamped rows, addresses), else in int64.
On sm_90a the sliding-window kernel's masked loop takes 1543 instructions in 32 bits
against 1862 in int64 (benchmarks/results/sm90-index32-*.txt)."""

import warnings

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.backends import names, triton_indices
from einsumattn.backends.module import Plan
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.ir import expr as ir
from einsumattn.schedule import kernel_ir as k
from einsumattn.schedule.lower_attention import lower_attention

from conftest import ROOT, Recorded

SINKS = ROOT / "examples" / "sliding_window_sinks.attn"

# Causal softmax with its mask scaled by 10**9: (p - m) * 10**9 passes 2**31 at
# |p - m| >= 3, so in int32 the test wraps and keeps the wrong keys.
WIDE = (ROOT / "examples" / "causal_softmax.attn").read_text().replace(
    "where m <= p", "where (p - m) * 1000000000 >= 0").replace(
    "attention causal_softmax", "attention wide_mask")


def _run(module, q, k_, v, **flags):
    """The module's fused kernel in tiles of 16 rows and 16 keys, its flags forced; the
    output and the INDEX_32 values the host computed."""
    name = next(iter(module.TUNING_FUSED))
    module.TUNING_FUSED[name].update(p__BLOCK=16, m0__BLOCK=16)
    kernel = getattr(module, name)
    recorded = Recorded(kernel, **flags)
    setattr(module, name, recorded)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # int32 wrapping, forced below
            out = getattr(module, module.__all__[0])(backend="triton")(q, k_, v)
    finally:
        setattr(module, name, kernel)
    return out, [launch["INDEX_32"] for launch in recorded.launched]


def _inputs(P, M, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, n, 8, generator=generator) for n in (P, M, M))


def _oracle(spec, q, k_, v, params=None):
    return einsumattn.evaluate(spec, {"Q": q.double().numpy(), "K": k_.double().numpy(),
                                      "V": v.double().numpy()}, params or {})["AV"]


def test_a_mask_past_32_bits_keeps_its_indices_in_int64(tmp_path):
    """The host's bound sees the mask's (p - m) * 10**9 and passes INDEX_32 = False: the
    kernel agrees with the oracle. Forced into 32 bits it does not (the test can fail)."""
    spec_path = tmp_path / "wide_mask.attn"
    spec_path.write_text(WIDE)
    module = import_file(compile_to_file(spec_path, tmp_path), "wide_mask_mod")
    q, k_, v = _inputs(40, 40)
    want = _oracle(einsumattn.load(spec_path), q, k_, v)
    out, seen = _run(module, q, k_, v)
    assert seen == [False]
    assert np.allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)
    forced, _ = _run(module, q, k_, v, INDEX_32=True)
    assert not np.allclose(forced.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def sinks(tmp_path_factory):
    return import_file(compile_to_file(SINKS, tmp_path_factory.mktemp("idx")), "idx_sinks")


@pytest.mark.parametrize("sizes", [(70, 70), (40, 90)])
def test_32_bit_indices_compute_what_int64_ones_compute(sinks, sizes):
    """At sizes that fit, the host passes INDEX_32 = True; the same kernel in int64 gives
    the same result bit for bit (the masks test the same numbers), and both agree with
    the oracle (a window of 4 keys, 1 sink: masked tiles on every row tile)."""
    q, k_, v = _inputs(*sizes, seed=sum(sizes))
    narrow, seen = _run(sinks, q, k_, v)
    assert seen == [True]
    wide, _ = _run(sinks, q, k_, v, INDEX_32=False)
    assert torch.equal(narrow, wide)
    assert np.allclose(narrow.numpy(), _oracle(einsumattn.load(SINKS), q, k_, v),
                       rtol=1e-4, atol=1e-5)


def _evaluated(bound, values: dict) -> int:
    """A bound (backends/triton_indices.py) at the host's values: sizes and knobs by
    name, strides by (tensor, position), the grid by axis."""
    if isinstance(bound, int):
        return bound
    if isinstance(bound, triton_indices.Leaf):
        key = {"stride": (bound.name, bound.position),
               "grid": ("grid", bound.position)}.get(bound.kind, bound.name)
        return abs(values[key])
    if isinstance(bound, triton_indices.Sum):
        return sum(_evaluated(t, values) for t in bound.terms)
    if isinstance(bound, triton_indices.Product):
        return int(np.prod([_evaluated(f, values) for f in bound.factors], dtype=object))
    return max(_evaluated(t, values) for t in bound.terms)


def _sinks_bounds():
    from einsumattn.backends.triton_kernel import index_bounds

    cascade = names.rename(Plan(einsumattn.load(SINKS)).kernel)
    return index_bounds(cascade, lower_attention(cascade), "INDEX_32")


@pytest.mark.parametrize("change, fits", [
    ({}, True),                                     # B=4, H=16, N=4096, d64: fits
    ({("Q_", 2): 2**20}, False),                    # a query row 2**20 elements apart
    ({("AV_", 2): 2**20}, False),                   # the output's rows likewise
    ({"P_": 2**31 - 64, "grid": None}, False),      # rows past 2**31
    ({"M_": 2**31 - 16, "M1_": 2**27}, False),      # keys past 2**31
])
def test_the_host_bound_covers_rows_keys_and_addresses(change, fits):
    """The bound the host tests, at the H100 configuration (128 x 64 tiles): the rows'
    and keys' own range, the masks' tests (keys against rows) and the addresses
    computed in 32 bits (a row times its stride)."""
    bounds = _sinks_bounds()
    assert bounds
    N, D = 4096, 64
    values = {"P_": N, "M_": N, "M1_": N // 64, "p__BLOCK": 128, "m0__BLOCK": 64,
              "e__BLOCK": D, "f__BLOCK": D, ("grid", 0): N // 128}
    for tensor in ("Q_", "K_", "V_", "AV_"):
        values.update({(tensor, 0): 16 * N * D, (tensor, 1): N * D, (tensor, 2): D,
                       (tensor, 3): 1})
    values.update({key: value for key, value in change.items() if key != "grid"})
    if "grid" in change:
        values[("grid", 0)] = -(-values["P_"] // 128)
    largest = max(_evaluated(b, values) for b in bounds)
    assert (largest < 2**31) == fits


def test_an_index_it_cannot_bound_keeps_int64():
    """A narrowed index combined with a value this does not bound (a param in integer
    arithmetic): no bound, and the statements keep their int64 form only."""
    wide = ir.Op("+", (ir.Op("*", (k.Cast(k.ProgramId(0), "int64"), k.Var("p_BLOCK"))),
                       k.Arange("p_BLOCK")))
    narrow = ir.Op("+", (ir.Op("*", (k.ProgramId(0), k.Var("p_BLOCK"))),
                         k.Arange("p_BLOCK")))
    body = (k.Let("p_", k.Specialized("INDEX_32", narrow, wide)),
            k.Let("x", k.Integer(ir.Op("+", (k.IndexBlock("p_"), ir.Param("W_"))))))
    assert triton_indices.index_bounds(body, "INDEX_32", set(), {"p_BLOCK"}, {}) is None
    assert triton_indices.wide_only(body, "INDEX_32")[0] == k.Let("p_", wide)
    bounded = body[:1] + (k.Let("x", k.Integer(ir.Op("<", (k.IndexBlock("p_"),
                                                            ir.Dim("P_"))))),)
    (bound,) = triton_indices.index_bounds(bounded, "INDEX_32", set(), {"p_BLOCK"}, {})
    assert _evaluated(bound, {("grid", 0): 3, "p_BLOCK": 16}) == 3 * 16 + 16
