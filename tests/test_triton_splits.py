"""Programs that split the key rank of a kernel that only sums it (the schedule's
`splits`: linear attention's K^T V and sum of K), each adding its range's sums into
float32 zeros: which kernels split, how many programs the host takes, and the results
against the float64 oracle in Triton's interpreter for split counts that do and do not
divide the key tiles."""

import warnings

import pytest
import torch

import einsumattn
from einsumattn.backends.module import Plan
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

from conftest import ROOT

STAGE1 = "linear_attention__stage1_fused"


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    folder = tmp_path_factory.mktemp("splits")
    spec = ROOT / "examples" / "linear_attention.attn"
    return einsumattn.load(spec), import_file(compile_to_file(spec, folder),
                                              "splits_linear_attention")


def test_only_a_kernel_that_sums_its_keys_splits_them():
    linear = Plan(einsumattn.load(ROOT / "examples" / "linear_attention.attn"))
    splits = {k.name: k.splits for k in linear.triton.schedule().kernels}
    assert splits == {STAGE1: "m__SPLITS", "linear_attention__stage2_fused": None}
    for example, want in (("softmax_3pass", None), ("causal_softmax", None),
                          ("sigmoid_attention", "m__SPLITS")):   # a sum over the keys
        schedule = Plan(einsumattn.load(ROOT / "examples" / f"{example}.attn")) \
            .triton.schedule()
        assert [k.splits for k in schedule.kernels] == [want], example


def _run(module, inputs, splits, key_tile=32, dtype=None):
    table = module.TUNING_FUSED[STAGE1]
    saved = dict(table)
    table.update({"m__SPLITS": splits, "m__BLOCK": key_tile})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module.LinearAttention(backend="triton")(*inputs.values())
    finally:
        table.clear()
        table.update(saved)


# 150 keys in tiles of 32: 5 tiles, the last partial. 2 programs take 3 + 2 tiles, 3 take
# 2 + 2 + 1, 7 take one each and leave two with no key (they add zeros).
@pytest.mark.parametrize("splits", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_split_keys_match_the_oracle(linear, splits, dtype):
    cascade, module = linear
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=24, M=150, E=16, F=16), dtype, 1.0,
                                       False, 0))
    out = _run(module, inputs, splits)
    assert all(r.ok for r in compare(cascade, inputs, out, dtype,
                                     rounding=dot_rounding(cascade, module)))


def test_each_launch_zeroes_what_its_programs_add_into(linear, monkeypatch):
    """Autotuning launches a kernel again on the same buffers: each launch starts from
    zeros, so the sums are not those of every launch added up."""
    cascade, module = linear
    inputs = case_inputs(cascade, Case(dict(B=1, H=1, P=16, M=100, E=16, F=16), "float32",
                                       1.0, False, 0))
    monkeypatch.setattr(module, "AUTOTUNE", True)
    monkeypatch.setattr(module, "CONFIG_CANDIDATES", module.CONFIG_CANDIDATES[:2])
    out = _run(module, inputs, 3)
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


def test_the_host_takes_enough_programs_for_the_gpu(linear, monkeypatch):
    cascade, module = linear
    cpu = torch.device("cpu")
    # The interpreter, 16-bit outputs (even pinned) and deterministic algorithms: one.
    assert module._splits(3, 4, 4096, 64, cpu, torch.bfloat16) == 1
    assert module._splits(3, 4, 4096, 64, cpu, torch.float32) == 3
    assert module._splits(None, 4, 4096, 64, cpu, torch.float32) == 1
    monkeypatch.setattr(module, "CONFIG_TARGET", ("cuda", 90))
    assert module._splits(None, 4, 4096, 64, cpu, torch.bfloat16) == 1
    # An H100's 132 multiprocessors, two programs each: 264 / 64 programs -> 5 splits;
    # at most one per 4 key tiles.
    assert module._splits(None, 64, 4096, 64, cpu, torch.float32) == 5
    assert module._splits(None, 4, 4096, 64, cpu, torch.float32) == 16
    assert module._splits(None, 4, 100, 64, cpu, torch.float32) == 1
    assert module._splits(None, 1000, 4096, 64, cpu, torch.float32) == 1
    torch.use_deterministic_algorithms(True)
    try:
        assert module._splits(None, 4, 4096, 64, cpu, torch.float32) == 1
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sigmoid_attention_splits_its_keys_where_its_outputs_are_float32(tmp_path, dtype):
    """One kernel whose output is the module's: float32 inputs give float32 outputs, which
    the split programs add into; bfloat16 outputs take one program even when pinned."""
    spec = ROOT / "examples" / "sigmoid_attention.attn"
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path), "splits_sigmoid")
    kernel = next(iter(module.TUNING_FUSED))
    module.TUNING_FUSED[kernel].update({"m__SPLITS": 3, "m__BLOCK": 16, "p__BLOCK": 16})
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=20, M=70, E=16, F=16), dtype, 1.0,
                                       False, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(module, module.__all__[0])(backend="triton")(*inputs.values())
    assert all(r.ok for r in compare(cascade, inputs, out, dtype,
                                     rounding=dot_rounding(cascade, module)))


def test_a_float16_dot_never_rounds_an_earlier_stage_s_buffer(linear):
    """Stage 2 reads KV = sum[m] FK V from memory in float32: its values exceed float16's
    65504 where the inputs' do not (scale 100). A float16 tile of it was inf; the kernel's
    dots run in float32 then (bfloat16 has float32's range), and the buffer counts as a
    rounded operand in the check's tolerance. Found by hypothesis (test_codegen's linear
    attention check); this is its smallest case."""
    cascade, module = linear
    assert module.DOT_ROUNDING["NUM"] == 2            # FQ computed, KV a float32 buffer
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=1, M=4, E=5, F=5), "float16", 100.0,
                                       False, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.LinearAttention(backend="triton")(*inputs.values())
    assert torch.isfinite(out).all()
    assert all(r.ok for r in compare(cascade, inputs, out, "float16",
                                     rounding=dot_rounding(cascade, module)))
