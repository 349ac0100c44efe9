"""Split-KV (issue 16, step 2; schedule/split_kv.py): a split kernel's steps split over
programs, each storing its partial state, and a merge kernel folding the states with the
derived combine, then finishing. Which kernels get the form, how many splits the host
takes per call, and the results against the float64 oracle in Triton's interpreter:
decoding shapes (a few query rows, many keys), splits that do and do not divide the
steps (and splits with no step at all: past a causal diagonal, past the last step),
GQA's packed heads, and a KV cache with a valid length per batch element whose padding
holds NaN and inf."""

from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.backends.module import Plan
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

from conftest import ROOT
from test_triton_ranges import assert_inside_the_tensors, outside_the_tensors

# The examples whose split kernel merges (every state part a max, a sum or a rescaled
# sum, transform/merge.py) and those that keep the kernel alone, with why.
MERGED = {"alibi", "causal_softmax", "cosine_attention", "diff_transformer",
          "efficient_attention", "gqa", "neighborhood_1d", "sliding_window_sinks", "softcap",
          "softmax_1pass", "softmax_3pass"}
ALONE = {"sigmoid_attention": "a kernel of passes, whose sums split by atomic adds",
         "linear_attention": "no merge of a kernel of passes",
         "gla": "a prefix combine (LASP-2), not a merge"}

KV_CACHE = (ROOT / "examples" / "softmax_3pass.attn").read_text().replace(
    "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]",
    "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f], LEN[b]")


def _kernel(module):
    (kernel,) = [k for k in module.SCHEDULE["kernels"] if k["kv_splits"]]
    return kernel


@pytest.mark.parametrize("example", sorted(MERGED | set(ALONE)))
def test_which_kernels_take_the_split_kv_form(example):
    kernels = Plan(einsumattn.load(ROOT / "examples" / f"{example}.attn")) \
        .triton.schedule().kernels
    split = [k.kv_splits for k in kernels if k.kv_splits]
    assert split == (["m1__SPLITS"] if example in MERGED else []), example


def _module(tmp_path_factory, text_or_path, name):
    folder = tmp_path_factory.mktemp(f"split_kv_{name}")
    cascade = einsumattn.load(text_or_path)
    return cascade, import_file(compile_to_file(cascade, folder), f"split_kv_{name}")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    cache = {}

    def get(example):
        if example not in cache:
            source = {"kv_cache": KV_CACHE_SPEC, "causal_kv_cache": CAUSAL_KV_CACHE}.get(
                example, ROOT / "examples" / f"{example}.attn")
            cache[example] = _module(tmp_path_factory, source, example)
        return cache[example]
    return get


@contextlib.contextmanager
def launches(module):
    """Yields the (kernel name, grid) of each launch of the module's split kernel and its
    split-KV kernels."""
    prefix = _kernel(module)["name"].removesuffix("_fused")
    launched = []

    class Recorded:
        def __init__(self, jitted, name):
            self.jitted, self.name = jitted, name

        def __getitem__(self, grid):
            launched.append((self.name, grid))
            return self.jitted[grid]
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in vars(module) if n.startswith(prefix)]:
            patch.setattr(module, name, Recorded(getattr(module, name), name))
        yield launched


def _run(module, inputs, splits, rows=16, keys=16, **params):
    """The module's triton backend with the kernel pinned at these tiles and splits (and
    these params); the kernels it launched, by name, and the outputs."""
    table = module.TUNING_FUSED[_kernel(module)["name"]]
    saved = dict(table)
    table.update({"m1__SPLITS": splits, "p__BLOCK": rows, "m0__BLOCK": keys})
    module._CONFIGS.clear()
    try:
        cls = getattr(module, module.__all__[0])
        with warnings.catch_warnings(), outside_the_tensors() as outside, \
                launches(module) as launched:
            warnings.simplefilter("ignore")
            out = cls(backend="triton", **params)(*inputs.values())
        assert_inside_the_tensors(outside)
        return launched, out
    finally:
        table.clear()
        table.update(saved)


def _check(cascade, module, inputs, out, dtype="float32", **params):
    results = compare(cascade, inputs, out, dtype, params=params or None,
                      rounding=dot_rounding(cascade, module))
    assert all(r.ok for r in results), [r for r in results if not r.ok]


SIZES = dict(B=2, H=2, KH=1, P=3, M=150, E=16, F=16)


# 150 keys in tiles of 16: 10 steps, the last partial. 2 programs take 5 + 5 steps, 3
# take 4 + 4 + 2, 7 take 2 each and leave two with no step (they store the empty state).
# Each count on softmax; the other examples (what their kernels add: GQA's packed heads,
# a per-head bias, a soft cap, two softmaxes, a window) at one count each, in turn.
@pytest.mark.parametrize("example, splits", [
    ("softmax_1pass", 2), ("softmax_1pass", 3), ("softmax_1pass", 7), ("gqa", 3),
    ("gqa", 7), ("alibi", 7), ("softcap", 2), ("diff_transformer", 3),
    ("neighborhood_1d", 7)])
def test_decoding_shapes_split_the_keys_and_match_the_oracle(modules, example, splits):
    cascade, module = modules(example)
    sizes = {r: SIZES[r] for r in cascade.ranks if r in SIZES}
    if example == "gqa":
        sizes["H"] = 4              # two query heads per kv head, packed in the row tile
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, splits))
    launched, out = _run(module, inputs, splits)
    name = _kernel(module)["name"].removesuffix("_fused")
    assert [n for n, _ in launched] == [f"{name}_partial", f"{name}_merge"]
    assert launched[0][1][2] == splits
    _check(cascade, module, inputs, out)


@pytest.mark.parametrize("rows", [4, 70])
def test_causal_splits_past_the_diagonal_hold_the_empty_state(modules, rows):
    """4 rows see keys 0..3 only: every split but the first runs no step. 70 rows over
    70 keys: each row tile's splits end at its diagonal."""
    cascade, module = modules("causal_softmax")
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=rows, M=70, E=16, F=16),
                                       "float32", 1.0, False, rows))
    launched, out = _run(module, inputs, 3)
    assert len(launched) == 2
    _check(cascade, module, inputs, out)


@pytest.mark.parametrize("window, sinks", [(4, 1), (20, 20)])
def test_a_window_with_sinks_splits_both_of_its_ranges(modules, window, sinks):
    """The sinks' steps and the window's are two loops: each program runs the part of
    each in its range of steps (70 rows and keys, tiles of 16, 3 splits: 2, 2 and 1
    steps; 20 sinks span two tiles, and two programs)."""
    cascade, module = modules("sliding_window_sinks")
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=70, M=70, E=16, F=16),
                                       "float32", 1.0, True, window))
    launched, out = _run(module, inputs, 3, W=window, S=sinks)
    assert len(launched) == 2
    _check(cascade, module, inputs, out, W=window, S=sinks)


def test_bfloat16_states_are_merged_in_float32(modules):
    cascade, module = modules("softmax_1pass")
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=5, M=150, E=16, F=16),
                                       "bfloat16", 1.0, True, 0))
    launched, out = _run(module, inputs, 4)
    assert len(launched) == 2 and out.dtype == torch.bfloat16
    _check(cascade, module, inputs, out, "bfloat16")


KV_CACHE_SPEC = re.sub(r"(?m)^attention \w+", "attention kv_cache", KV_CACHE).replace(
    "* K[b, h, m, e] * scale", "* K[b, h, m, e] * scale  where m < LEN[b]", 1)


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_a_kv_cache_past_its_valid_length_never_reaches_the_output(modules, poison):
    """Valid lengths 150, 40 and 0: the second batch's splits past key 40 and every
    split of the third store the empty state; NaN or inf in the padding stays out."""
    cascade, module = modules("kv_cache")
    assert "where m < LEN[b]" in KV_CACHE_SPEC
    inputs = case_inputs(cascade, Case(dict(B=3, H=2, P=2, M=150, E=16, F=16),
                                       "float32", 1.0, True, 1))
    lengths = torch.tensor([150.0, 40.0, 0.0])
    inputs["LEN"] = lengths
    for name in ("K", "V"):
        tensor = inputs[name].clone()
        tensor[1, :, 40:] = float(poison)
        tensor[2] = float(poison)
        inputs[name] = tensor
    launched, out = _run(module, inputs, 5)
    assert len(launched) == 2
    assert torch.isfinite(out).all()
    _check(cascade, module, inputs, out)


# Two upper bounds of the keys: the diagonal and the valid length (the tighter is taken).
CAUSAL_KV_CACHE = KV_CACHE_SPEC.replace("attention kv_cache", "attention causal_kv_cache") \
    .replace("where m < LEN[b]", "where m < LEN[b] and m <= p")


@contextlib.contextmanager
def keys_read(tensors: dict):
    """Yields name -> the set of (batch, key) points of each 4-d contiguous tensor in
    `tensors` that a live lane of a kernel loaded (through pointers or TMA, which the
    interpreter emulates with masked loads)."""
    from triton.runtime import interpreter

    load = interpreter.InterpreterBuilder.create_masked_load
    found = {name: set() for name in tensors}

    def recorded(self, pointers, mask, *rest, **options):
        live = pointers.data[np.broadcast_to(mask.data, pointers.data.shape)]
        for name, t in tensors.items():
            start, size = t.data_ptr(), t.element_size()
            inside = live[(live >= start) & (live < start + t.numel() * size)]
            b, _, m, _ = np.unravel_index((inside.astype(np.int64) - start) // size, t.shape)
            found[name] |= set(zip(b.tolist(), m.tolist()))
        return load(self, pointers, mask, *rest, **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.InterpreterBuilder, "create_masked_load", recorded)
        yield found


@pytest.mark.parametrize("splits", [1, 3])
def test_a_kv_cache_is_read_up_to_its_valid_length_only(modules, splits):
    """The loop over key tiles stops at the tile of the valid length (schedule/bounds.py:
    `m < LEN[b]`, one bound per program): K and V are read up to the end of the tile
    that holds the last valid key (a TMA load reads whole tiles; the masks keep the rest
    out), and not at all for an empty cache; a split past the valid length runs no
    step."""
    cascade, module = modules("kv_cache")
    inputs = case_inputs(cascade, Case(dict(B=3, H=2, P=2, M=150, E=16, F=16),
                                       "float32", 1.0, True, 2))
    inputs["LEN"] = torch.tensor([150.0, 40.0, 0.0])
    with keys_read({"K": inputs["K"], "V": inputs["V"]}) as found:
        _, out = _run(module, inputs, splits)
    _check(cascade, module, inputs, out)
    tile_end = {0: 150, 1: 48, 2: 0}        # tiles of 16 keys
    for name in ("K", "V"):
        assert {b for b, _ in found[name]} == {0, 1}
        assert all(m < tile_end[b] for b, m in found[name])
        assert {m for b, m in found[name] if b == 1} >= set(range(40))


def test_a_decoding_call_on_an_h100_picks_split_kv_by_itself(modules, monkeypatch):
    """Nothing pinned, the module choosing as on an H100 (CONFIG_TARGET): a decoding call
    (2 x 2 row tiles of one query, 600 keys) takes split-KV and matches the oracle (a
    call whose row tiles fill the GPU does not split: the test below)."""
    cascade, module = modules("softmax_3pass")
    monkeypatch.setattr(module, "CONFIG_TARGET", ("cuda", 90))
    module._CONFIGS.clear()
    inputs = case_inputs(cascade, Case(dict(B=2, H=2, P=1, M=600, E=16, F=16), "float32",
                                       1.0, True, 5))
    with warnings.catch_warnings(), launches(module) as launched:
        warnings.simplefilter("ignore")
        out = module.Softmax3pass(backend="triton")(*inputs.values())
    module._CONFIGS.clear()
    ((partial, grid), (merge, _)) = launched
    assert (partial, merge) == ("softmax_3pass__partial", "softmax_3pass__merge")
    assert grid[2] > 1
    _check(cascade, module, inputs, out)


def test_the_host_splits_only_what_leaves_the_gpu_idle(modules, monkeypatch):
    """`_kv_splits`: pinned, at most one split per step; one in the interpreter; on an
    H100 (132 multiprocessors) one for as many row tiles as multiprocessors (prefill),
    else two programs per multiprocessor, each at least 4 steps."""
    _, module = modules("softmax_1pass")
    cpu = torch.device("cpu")
    assert module._kv_splits(3, 8, 100, cpu) == 3
    assert module._kv_splits(64, 8, 10, cpu) == 10
    assert module._kv_splits(None, 8, 1000, cpu) == 1          # the interpreter
    monkeypatch.setattr(module, "CONFIG_TARGET", ("cuda", 90))
    assert module._kv_splits(None, 132, 1000, cpu) == 1        # every SM has a program
    assert module._kv_splits(None, 8, 1000, cpu) == 33         # ceil(264 / 8)
    assert module._kv_splits(None, 8, 40, cpu) == 10           # 4 steps each at least
    assert module._kv_splits(None, 64, 2, cpu) == 1


@pytest.mark.parametrize("splits", [1, 3])
def test_a_causal_kv_cache_stops_at_the_diagonal_or_the_valid_length(modules, splits):
    """`m <= p and m < LEN[b]`: each row tile's loop ends at the nearer of its diagonal
    and the valid length (70 rows and keys; lengths 70, 40, 0; tiles of 16)."""
    cascade, module = modules("causal_kv_cache")
    inputs = case_inputs(cascade, Case(dict(B=3, H=1, P=70, M=70, E=16, F=16),
                                       "float32", 1.0, True, 3))
    inputs["LEN"] = torch.tensor([70.0, 40.0, 0.0])
    with keys_read({"K": inputs["K"]}) as found:
        _, out = _run(module, inputs, splits)
    _check(cascade, module, inputs, out)
    assert {b for b, _ in found["K"]} == {0, 1}
    assert max(m for b, m in found["K"] if b == 1) < 48
