"""A sliding window with attention sinks (StreamingLLM: query p sees the keys p - W + 1
.. p and the first S keys, `m <= p and (p - m < W or m < S)`) bounds the key tiles a row
tile visits by two ranges: the sinks' tiles, then the window's from the first row's
window start (schedule/bounds.py, either_bound). The kernel used to read every key tile
up to the diagonal: N^2 / 2 work for an N x W band. Both ranges are checked on the Triton
kernel and the scheduled torch backend against the oracle, with tiles of 16 keys; a
sinks' range one tile short and a window one tile late fail."""

import math

import numpy as np
import pytest
import sympy
import torch

import einsumattn
from einsumattn.backends.module import Plan
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.ir import expr as ir
from einsumattn.schedule import bounds
from einsumattn.schedule import kernel_ir as k
from einsumattn.schedule.bounds import either_bound, either_row_bound

from conftest import ROOT

SPEC = ROOT / "examples" / "sliding_window_sinks.attn"


def _condition(text: str) -> ir.Expr:
    cascade = einsumattn.load("attention c\ndims P, M\nparam W = 5\nparam S = 2\n"
                              f"input X[p, m]\nY[p, m] = X[p, m] where {text}\noutput Y\n")
    return cascade.einsum("Y").filter


@pytest.mark.parametrize("text, offset, end", [
    ("p - m < W or m < S", "1 - W", "S"),
    ("m < S or m >= p - 3", "-3", "S"),
    ("m > p - W or m <= S + 1", "1 - W", "S + 2"),
    ("m >= p or m < 4", "0", "4"),
])
def test_a_window_or_the_first_keys_is_read(text, offset, end):
    side, found_offset, found_end = either_bound(_condition(text), "m", "p")
    names = {name: sympy.Symbol(name) for name in ("W", "S")}
    assert side == "lower"
    assert sympy.expand(found_offset - sympy.sympify(offset, locals=names)) == 0
    assert sympy.expand(found_end - sympy.sympify(end, locals=names)) == 0


@pytest.mark.parametrize("text", [
    "p - m < W and m < S",      # both: a window, not two ranges
    "m <= p or m < S",          # an upper bound: the keys past the diagonal are not skipped
    "p - m < W or m < p",       # the second range moves with the row
    "p - m < W or m > S",       # the last keys, not the first
    "p - m < W or m < S or m > 9",
])
def test_other_disjunctions_are_not_read(text):
    assert either_bound(_condition(text), "m", "p") is None


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return import_file(compile_to_file(SPEC, tmp_path_factory.mktemp("sinks")), "sinks_mod")


def _agrees(module, sizes, params, backend, spec=SPEC) -> bool:
    """`spec`'s module (its one fused kernel and the torch backend in tiles of 16 rows and
    16 keys) against the oracle, at P x M = `sizes` and `params`."""
    generator = torch.Generator().manual_seed(sum(sizes))
    P, M = sizes
    q, k_, v = (torch.randn(1, 2, n, 8, generator=generator) for n in (P, M, M))
    (fused,) = module.TUNING_FUSED.values()
    fused.update(p__BLOCK=16, m0__BLOCK=16)
    module.TORCH_TUNING.update(row_block=16, key_tile=16)
    out = getattr(module, module.__all__[0])(backend=backend, **params)(q, k_, v)
    want = einsumattn.evaluate(einsumattn.load(spec), {
        "Q": q.double().numpy(), "K": k_.double().numpy(), "V": v.double().numpy()},
        params)["AV"]
    return bool(np.allclose(out.numpy(), want, rtol=1e-4, atol=1e-5, equal_nan=True))


# Tiles of 16: windows within one tile, across several, sinks within one tile and over
# several, sinks reaching the window, none (S = 0 or negative), fractional params, and
# the params that make a bound infinite or NaN (W = inf: every key up to the diagonal;
# S = nan: no sink; the host rounds them outwards, `_outwards`).
CASES = [((70, 70), {"W": 4, "S": 1}), ((70, 70), {"W": 20, "S": 3}),
         ((70, 70), {"W": 5, "S": 17}), ((70, 70), {"W": 3, "S": 40}),
         ((70, 90), {"W": 40, "S": 0}), ((50, 50), {"W": 2.5, "S": 16.5}),
         ((70, 70), {"W": 6, "S": -5}), ((40, 40), {"W": math.inf, "S": 2}),
         ((70, 70), {"W": 6, "S": math.nan}), ((70, 70), {"W": 6, "S": math.inf})]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_the_kernel_visits_the_sinks_and_the_window_and_agrees(module, backend):
    (kernel,) = module.SCHEDULE["kernels"]
    assert sorted(b[0] for b in kernel["passes"][0]["bounds"]) == ["lower", "upper"]
    assert ("or below", "S") in {b[2:] for b in kernel["passes"][0]["bounds"]}
    for sizes, params in CASES:
        assert _agrees(module, sizes, params, backend), (sizes, params)


def test_the_kernel_has_a_loop_for_the_sinks_and_one_for_the_window():
    (kernel,) = Plan(einsumattn.load(SPEC)).triton.fused
    loops = [s for s in kernel.body if isinstance(s, k.Loop)]
    assert len(loops) == 2
    assert loops[0].start == k.Integer(ir.Const(0)) and loops[0].stop == k.Var("sink_steps")
    assert k.Var("sink_steps") in list(k.nodes(loops[1].start))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mutation", ["sinks short", "window late"])
def test_a_range_one_tile_too_short_fails(tmp_path, monkeypatch, backend, mutation):
    """The cases above would catch a bound that skipped a tile either range needs."""
    def mutated(*args, **kwargs):
        found = original(*args, **kwargs)
        if found is None:
            return found
        side, offset, end = found
        if mutation == "sinks short":
            return side, offset, end - 16
        return side, offset + 16, end

    original = bounds.either_bound
    monkeypatch.setattr("einsumattn.schedule.attention.either_bound", mutated)
    wrong = import_file(compile_to_file(SPEC, tmp_path), f"sinks_{mutation[:5]}_{backend}")
    assert not all(_agrees(wrong, sizes, params, backend) for sizes, params in CASES)


@pytest.mark.parametrize("text, offset, end", [
    ("p - m < W or m < S", "W - 1", "S"),        # streaming p for a tile of keys m
    ("m < S or p <= m + 3", "3", "S"),
])
def test_a_bound_with_rows_that_see_every_key_is_read(text, offset, end):
    """The sinks from the other side: the backward's dK/dV kernel streams the queries p
    for a tile of keys m, where `m < S` makes a key row see every query."""
    side, found_offset, found_end = either_row_bound(_condition(text), "p", "m")
    names = {name: sympy.Symbol(name) for name in ("W", "S")}
    assert side == "upper"
    assert sympy.expand(found_offset - sympy.sympify(offset, locals=names)) == 0
    assert sympy.expand(found_end - sympy.sympify(end, locals=names)) == 0
    assert either_row_bound(_condition("p - m < W or p < S"), "p", "m") is None


# Global rows (Longformer's global tokens, one way round): the first S queries see every
# key, the others the keys up to p + W.
GLOBAL_ROWS = SPEC.read_text().replace("attention sliding_window_sinks",
                                       "attention global_rows").replace(
    "where m <= p and (p - m < W or m < S)", "where m <= p + W or p < S")


def _gradients(module, cls, inputs, backend):
    inputs = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    out = getattr(module, cls)(backend=backend)(*inputs.values())
    out.backward(torch.ones_like(out))
    return [t.grad for t in inputs.values()], out.detach()


@pytest.mark.parametrize("mutated", [False, True])
def test_the_backward_of_sinks_skips_query_tiles_and_agrees(tmp_path, monkeypatch, mutated):
    """The dK/dV kernel's loop over query tiles ends at the window for a tile of keys
    past the sinks and runs to the end for one holding a sink (`open_rows`); the
    gradients agree with the reference backend's autograd. With the sinks' rows one
    tile short, a sink key misses the queries past its window and the gradients differ."""
    if mutated:
        original = bounds.either_row_bound

        def short(*args, **kwargs):
            found = original(*args, **kwargs)
            return found if found is None else (found[0], found[1], found[2] - 16)
        monkeypatch.setattr("einsumattn.schedule.attention.either_row_bound", short)
    module = import_file(compile_to_file(SPEC, tmp_path, train=True),
                         f"sinks_train_{mutated}")
    kernels = {k["name"]: k for k in module.SCHEDULE["training"]["kernels"]}
    dkdv = kernels["sliding_window_sinks_backward_dK_dV__fused"]
    assert ("upper", "W - 1", "but rows below", "S - 16" if mutated else "S") in \
        dkdv["passes"][0]["bounds"]
    generator = torch.Generator().manual_seed(3)
    inputs = {n: torch.randn(1, 2, 70, 8, generator=generator) for n in ("Q", "K", "V")}
    for name in module.TUNING_FUSED:
        module.TUNING_FUSED[name].update({k: 16 for k in module.TUNING_FUSED[name]
                                          if k.endswith("BLOCK")})
    want, _ = _gradients(module, "SlidingWindowSinks", inputs, "reference")
    got, _ = _gradients(module, "SlidingWindowSinks", inputs, "triton")
    agree = all(torch.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want))
    assert agree != mutated


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_rows_that_see_every_key_bound_the_forward_too(tmp_path, backend):
    """A forward whose first S rows see every key (`m <= p + W or p < S`) takes the same
    bound: a row tile past them stops at its window, one holding them runs to the end."""
    path = tmp_path / "global_rows.attn"
    path.write_text(GLOBAL_ROWS)
    module = import_file(compile_to_file(path, tmp_path), "global_rows")
    (kernel,) = module.SCHEDULE["kernels"]
    assert any(b[2:] == ("but rows below", "S") for b in kernel["passes"][0]["bounds"])
    for P, M, W, S in ((70, 70, 4, 3), (50, 90, 10, 20), (40, 70, -5, 17)):
        assert _agrees(module, (P, M), {"W": W, "S": S}, backend, path), (P, M, W, S)
