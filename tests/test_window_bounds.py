"""A clamped window (1-D neighborhood attention: query p sees the W keys from
s(p) = min(max(p - W // 2, 0), max(M - W, 0))) bounds the key tiles a row tile visits:
s never decreases as p grows, so the tile's keys lie within s(first row) ..
s(last row) + W - 1 (schedule/bounds.py, monotone_bound). The kernel used to read every
key tile."""

import math

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.ir import expr as ir
from einsumattn.schedule import bounds
from einsumattn.schedule.bounds import monotone_bound

from conftest import ROOT

SPEC = ROOT / "examples" / "neighborhood_1d.attn"
KEYS = ir.Dim("M")


def _condition(text: str) -> ir.Expr:
    cascade = einsumattn.load("attention c\ndims P, M\nparam W = 5\ninput X[p, m]\n"
                              f"Y[p, m] = X[p, m] where {text}\noutput Y\n")
    return cascade.einsum("Y").filter


@pytest.mark.parametrize("text, side", [
    ("m >= min(max(p - W // 2, 0), max(M - W, 0))", "lower"),
    ("m < min(max(p - W // 2, 0), max(M - W, 0)) + W", "upper"),
    ("p // 2 <= m", "lower"),
    ("m <= 2 * p + W", "upper"),
    ("m > max(p, 3)", "lower"),
])
def test_a_bound_that_never_decreases_with_the_row_is_read(text, side):
    found = monotone_bound(_condition(text), "m", "p", KEYS)
    assert found is not None and found[0] == side


@pytest.mark.parametrize("text", [
    "m >= M - p",            # decreasing in the row
    "m >= p * W",            # a param's sign is unknown
    "m >= p % 4",            # not monotone
    "m >= max(p, M - p)",    # the two sides disagree
    "m * 2 >= p",            # the key is not alone
])
def test_other_bounds_are_not_read(text):
    assert monotone_bound(_condition(text), "m", "p", KEYS) is None


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    return import_file(compile_to_file(SPEC, tmp_path_factory.mktemp("window")),
                       "window_bounds")


def _agrees(module, cascade, sizes, W) -> bool:
    generator = torch.Generator().manual_seed(sum(sizes))
    P, M = sizes
    q, k, v = (torch.randn(1, 2, n, d, generator=generator)
               for n, d in ((P, 8), (M, 8), (M, 4)))
    out = module.neighborhood_1d(q, k, v, W=W, backend="triton")
    want = einsumattn.evaluate(cascade, {"Q": q.double().numpy(), "K": k.double().numpy(),
                                         "V": v.double().numpy()}, {"W": W})["AV"]
    return bool(np.allclose(out.numpy(), want, rtol=1e-4, atol=1e-5))


# Many key tiles of 16 per row tile's window, at each end of the sequence, a fractional
# and an infinite W (numpy's inf // 2 is nan: every key masked, in the oracle too).
CASES = [((70, 70), 5), ((50, 90), 2.5), ((90, 50), 17), ((40, 70), math.inf)]


def test_the_kernel_visits_only_the_window_and_agrees(module):
    (kernel,) = module.SCHEDULE["kernels"]
    sides = [side for side, _ in kernel["passes"][0]["bounds"]]
    assert sorted(sides) == ["lower", "upper"]
    cascade = einsumattn.load(SPEC)
    for sizes, W in CASES:
        assert _agrees(module, cascade, sizes, W), (sizes, W)


def test_a_window_one_tile_too_late_fails(tmp_path, monkeypatch):
    """The cases above would catch a bound that skipped a tile the window needs."""
    def late(*args, **kwargs):
        found = original(*args, **kwargs)
        if found is None or found[0] != "lower":
            return found
        return found[0], ir.Op("+", (found[1], ir.Const(16)))

    original = bounds.monotone_bound
    monkeypatch.setattr("einsumattn.schedule.attention.monotone_bound", late)
    mutated = import_file(compile_to_file(SPEC, tmp_path), "window_late")
    cascade = einsumattn.load(SPEC)
    assert not all(_agrees(mutated, cascade, sizes, W) for sizes, W in CASES)
