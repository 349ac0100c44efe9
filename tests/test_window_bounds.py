"""A clamped window (1-D neighborhood attention: query p sees the W keys from
s(p) = min(max(p - W // 2, 0), max(M - W, 0))) bounds the key tiles a row tile visits:
s never decreases as p grows, so the tile's keys lie within s(first row) ..
s(last row) + W - 1 (schedule/bounds.py, monotone_bound). The kernel used to read every
key tile (and the scheduled torch backend every block of keys). The 2-D window over an image in raster order bounds the key's image row
(`m // IW`), which bounds the key: the rows from the first query's window to the last
one's."""

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
SPEC_2D = ROOT / "examples" / "neighborhood_2d.attn"
KEYS = ir.Dim("M")


def _condition(text: str) -> ir.Expr:
    cascade = einsumattn.load("attention c\ndims P, M, IW = 4\nparam W = 5\ninput X[p, m]\n"
                              f"Y[p, m] = X[p, m] where {text}\noutput Y\n")
    return cascade.einsum("Y").filter


@pytest.mark.parametrize("text, side", [
    ("m >= min(max(p - W // 2, 0), max(M - W, 0))", "lower"),
    ("m < min(max(p - W // 2, 0), max(M - W, 0)) + W", "upper"),
    ("p // 2 <= m", "lower"),
    ("m <= 2 * p + W", "upper"),
    ("m > max(p, 3)", "lower"),
    ("m // IW >= p // IW - 1", "lower"),        # the key's row in an image IW wide
    ("m // IW < min(p // IW + 2, 7)", "upper"),
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
    "m // W >= p",           # a param divisor may be negative
    "m % IW >= p % IW",      # the column: no bound on the key
])
def test_other_bounds_are_not_read(text):
    assert monotone_bound(_condition(text), "m", "p", KEYS) is None


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("window")
    return {spec: import_file(compile_to_file(spec, folder), f"window_{spec.stem}")
            for spec in (SPEC, SPEC_2D)}


def _agrees(module, spec, sizes, params, backend="triton") -> bool:
    generator = torch.Generator().manual_seed(sum(sizes))
    P, M = sizes
    q, k, v = (torch.randn(1, 2, n, d, generator=generator)
               for n, d in ((P, 8), (M, 8), (M, 4)))
    # The torch backend in blocks of 16 rows and 16 keys, as the kernel's tiles: its
    # defaults are wider than these sequences' windows leave out.
    module.TORCH_TUNING.update(row_block=16, key_tile=16)
    out = getattr(module, spec.stem)(q, k, v, **params, backend=backend)
    want = einsumattn.evaluate(einsumattn.load(spec), {
        "Q": q.double().numpy(), "K": k.double().numpy(), "V": v.double().numpy()},
        params)["AV"]
    return bool(np.allclose(out.numpy(), want, rtol=1e-4, atol=1e-5))


# Many key tiles of 16 per row tile's window, at each end of the sequence, a fractional
# and an infinite W (numpy's inf // 2 is nan: every key masked, in the oracle too); for
# 2-D, images 4 pixels wide and 30 or 20 high (tiles of 16 keys: 4 image rows).
CASES = {SPEC: [((70, 70), {"W": 5}), ((50, 90), {"W": 2.5}), ((90, 50), {"W": 17}),
                ((40, 70), {"W": math.inf})],
         SPEC_2D: [((120, 120), {"KS": 3}), ((120, 120), {"KS": 5}),
                   ((48, 80), {"KS": 3})]}


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("spec", [SPEC, SPEC_2D], ids=lambda s: s.stem)
def test_the_kernel_visits_only_the_window_and_agrees(modules, spec, backend):
    """The Triton kernel and the scheduled torch backend (blocks of keys from the row
    block's first window start) both take the bounds."""
    (kernel,) = modules[spec].SCHEDULE["kernels"]
    sides = [side for side, _ in kernel["passes"][0]["bounds"]]
    assert sorted(sides) == ["lower", "upper"]
    for sizes, params in CASES[spec]:
        assert _agrees(modules[spec], spec, sizes, params, backend), (sizes, params)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("spec", [SPEC, SPEC_2D], ids=lambda s: s.stem)
def test_a_window_one_tile_too_late_fails(tmp_path, monkeypatch, spec, backend):
    """The cases above would catch a bound that skipped a tile the window needs."""
    def late(*args, **kwargs):
        found = original(*args, **kwargs)
        if found is None or found[0] != "lower":
            return found
        return found[0], ir.Op("+", (found[1], ir.Const(16)))

    original = bounds.monotone_bound
    monkeypatch.setattr("einsumattn.schedule.attention.monotone_bound", late)
    mutated = import_file(compile_to_file(spec, tmp_path), f"late_{spec.stem}")
    assert not all(_agrees(mutated, spec, sizes, params, backend)
                   for sizes, params in CASES[spec])
