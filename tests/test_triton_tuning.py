"""The knobs in TUNING / TUNING_FUSED: each is safe to change or refused with an error
that names it, and no kernel's constexprs follow a sequence length (one compilation per
power of two of M, and no compiling at all past tl.arange's 2**20)."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.verify import Case, case_inputs, compare

from conftest import BENCHMARK_DEVICE, GPU, ROOT, Forced, Recorded, kernels_env, tuned


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuning")
    found = {}
    for name in ("causal_softmax", "softmax_1pass", "softmax_3pass", "linear_attention",
                 "eca", "gla_recurrent"):
        for rewrite in (True, False):
            path = compile_to_file(ROOT / "examples" / f"{name}.attn",
                                   folder / ("derived" if rewrite else "own"), rewrite=rewrite)
            found[name, rewrite] = import_file(path, f"tuning_{name}_{rewrite}")
    return found


def layer(module, backend="triton"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(module, module.__all__[0])(backend=backend)


def default_knob(module, kernel, knob):
    (schedule,) = [k for k in module.SCHEDULE["kernels"] if k["name"] == kernel]
    return schedule["knobs"][knob]["default"]


def agrees(name, module, sizes):
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    out = layer(module)(*inputs.values())
    return all(r.ok for r in compare(cascade, inputs, out, "float32"))


SIZES = dict(B=1, H=2, P=40, M=70, E=4, F=3)


@pytest.mark.parametrize("tile", [16, 32, 128])
def test_the_rewrites_key_tile_is_a_knob(modules, tile):
    """m0__BLOCK is the tile of the split the online rewrite makes: the host binds M0 to
    it (M1 = ceil(M / M0) steps of m1 * m0__BLOCK + m0), and every tile gives the
    original result (the split's proofs hold for a symbolic M0)."""
    module = modules["causal_softmax", True]
    # Chosen per call (None) unless pinned; the schedule's default is the compile's tile.
    assert module.TUNING_FUSED["causal_softmax__fused"]["m0__BLOCK"] is None
    assert default_knob(module, "causal_softmax__fused", "m0__BLOCK") == 64
    with tuned(module, m0__BLOCK=tile):
        assert agrees("causal_softmax", module, SIZES)


@pytest.mark.parametrize("tile", [32, 128])
def test_a_split_the_spec_writes_refuses_another_tile_with_what_to_do(modules, tile):
    """softmax_1pass writes `split M -> M1, M0 by 16`: its kernel's key tile is that
    factor, and another value is refused, saying how to get that tile."""
    module = modules["softmax_1pass", True]
    assert module.TUNING_FUSED["softmax_1pass__fused"]["m0__BLOCK"] == 16
    with tuned(module, m0__BLOCK=tile), pytest.raises(ValueError) as error:
        agrees("softmax_1pass", module, SIZES)
    message = str(error.value)
    assert f"TUNING_FUSED['softmax_1pass__fused']['m0__BLOCK'] is {tile}" in message
    assert "split factor M0 = 16" in message and "einsumattn compile --tile N" in message


def test_the_split_tile_is_chosen_at_compile_time(tmp_path):
    module = import_file(compile_to_file(ROOT / "examples" / "causal_softmax.attn",
                                         tmp_path, tile=16), "tile16")
    assert default_knob(module, "causal_softmax__fused", "m0__BLOCK") == 16
    assert agrees("causal_softmax", module, SIZES)


@pytest.mark.parametrize("name, rewrite, knob", [
    ("causal_softmax", True, "p__BLOCK"), ("softmax_1pass", True, "p__BLOCK"),
    ("causal_softmax", False, "p__BLOCK"), ("causal_softmax", False, "m__BLOCK"),
    ("softmax_3pass", False, "m__BLOCK")])
@pytest.mark.parametrize("value", [32, 64])
def test_the_tunable_tiles_are_safe_to_change(modules, name, rewrite, knob, value):
    module = modules[name, rewrite]
    assert all(knob in table for table in module.TUNING_FUSED.values())
    with tuned(module, **{knob: value}):
        assert agrees(name, module, SIZES)


def test_a_tile_the_kernel_cannot_take_is_refused_by_name(modules):
    module = modules["causal_softmax", True]
    with tuned(module, p__BLOCK=24), pytest.raises(Exception,
                                                 match=r"p__BLOCK: a block size of the tuning "
                                                       r"table, a power of two >= 16"):
        agrees("causal_softmax", module, SIZES)


def launched_constexprs(module, inputs, run=False) -> dict:
    """kernel -> the constexprs of its launch, for one call of the Triton backend (the
    kernels themselves run only with `run`). In the interpreter a launch goes through
    its GridExecutor; compiled for a GPU (conftest.GPU), through JITFunction.run."""
    found = {}
    if GPU:
        from triton.runtime.jit import JITFunction
        launch = JITFunction.run

        def record_compiled(self, *args, grid, warmup, **kwargs):
            constexprs = {p.name for p in self.params if p.is_constexpr}
            found[self.fn.__name__] = {k: v for k, v in kwargs.items() if k in constexprs}
            return launch(self, *args, grid=grid, warmup=warmup, **kwargs) if run else None
        target, name, hook = JITFunction, "run", record_compiled
    else:
        from triton.runtime import interpreter
        call = interpreter.GridExecutor.__call__

        def record(self, *args, **kwargs):
            found[self.fn.__name__] = {k: v for k, v in kwargs.items() if k in self.constexprs}
            return call(self, *args, **kwargs) if run else None
        target, name, hook = interpreter.GridExecutor, "__call__", record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, hook)
        layer(module)(*inputs)
    return found


def zeros(name, sizes):
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    from einsumattn.ir import bind
    binding = bind(cascade, sizes=sizes)
    return [torch.zeros(binding.extent(cascade, t.name)) for t in cascade.inputs]


LONG = 2 ** 20 + 1     # past tl.arange's largest block


@pytest.mark.parametrize("name, short, long", [
    ("linear_attention", dict(B=1, H=1, P=3, M=5, E=4, F=4),
     dict(B=1, H=1, P=LONG, M=LONG, E=4, F=4)),
    # Lengths from the configuration's tiles on (a shorter one gets smaller tiles, below).
    ("causal_softmax", dict(B=1, H=1, P=200, M=200, E=4, F=4),
     dict(B=1, H=1, P=LONG, M=LONG, E=4, F=4)),
    ("eca", dict(B=1, C=3, H=2, W=3, K=3), dict(B=1, C=LONG, H=1, W=1, K=3)),
    ("eca", dict(B=1, C=3, H=2, W=3, K=3), dict(B=1, C=2, H=1, W=LONG, K=3)),
    ("gla_recurrent", dict(B=1, H=1, T=3, D=4, F=4), dict(B=1, H=1, T=LONG, D=4, F=4)),
])
def test_kernel_constexprs_do_not_follow_the_sequence_length(modules, name, short, long):
    """The kernels get the same constexprs for 3 keys and for 2**20 + 1 (launches
    recorded, not run): one compilation serves every length. Linear attention passed
    p__BLOCK = next_power_of_2(P) and m__BLOCK = next_power_of_2(M) to kernels that never
    used them."""
    module = modules[name, True]
    first = launched_constexprs(module, zeros(name, short))
    assert first and all(k.endswith("_fused") for k in first)
    assert launched_constexprs(module, zeros(name, long)) == first


@pytest.mark.parametrize("rows, keys, row_tile, key_tile", [
    (3, 5, 16, 16), (3, 20, 16, 32), (1, 40, 16, 64), (17, 1000, 16, 64)])
def test_a_short_sequence_gets_tiles_no_larger_than_itself(modules, rows, keys, row_tile,
                                                             key_tile):
    """The key tile is capped at the keys' own power of two (at least 16, the dot's
    least): a few keys are not padded to 64. Three lengths below the tile add at most
    two compilations (16, 32); from the tile on, one serves every length."""
    module = modules["causal_softmax", True]
    sizes = dict(B=1, H=1, P=rows, M=keys, E=4, F=4)
    (launched,) = launched_constexprs(module, zeros("causal_softmax", sizes)).values()
    assert (launched["p__BLOCK"], launched["m0__BLOCK"]) == (row_tile, key_tile)


def benchmark(tmp_path, tune, spec="causal_softmax"):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"),
                           "--smoke", *BENCHMARK_DEVICE, "--specs",
                           spec, "--unfused-max", "0", "--tune", tune,
                           "--json", str(tmp_path / "rows.json")],
                          capture_output=True, text=True,
                          env=kernels_env(EINSUMATTN_CACHE_DIR=str(tmp_path / "cache")))


@pytest.mark.slow
@pytest.mark.parametrize("spec, tune, reason", [
    ("softmax_1pass", "m0__BLOCK=128", "is the split factor M0 = 16 of the cascade"),
    ("causal_softmax", "p__BLOCK=24",
     "p__BLOCK: a block size of the tuning table, a power of two >= 16"),
    ("causal_softmax", "m0__BLOCK=24",
     "m0__BLOCK: a block size of the tuning table, a power of two >= 16"),
    ("causal_softmax", "q__BLOCK=32", "causal_softmax's fused kernels have no knob q__BLOCK"),
])
def test_the_benchmark_refuses_a_knob_that_is_not_safe(tmp_path, spec, tune, reason):
    result = benchmark(tmp_path, tune, spec)
    assert result.returncode == 2, result.stderr[-2000:]
    assert reason in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_benchmark_tunes_the_split_tile_by_compiling(tmp_path):
    result = benchmark(tmp_path, "p__BLOCK=32,tile=32")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["backend"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert rows["einsumattn triton p__BLOCK=32,tile=32"]["max_diff_vs_peer"] < 1e-5
    # The variant ran a module compiled with 32-key tiles by default (the compile cache
    # holds it).
    defaults = [default_knob(import_file(path, f"cached{i}"), "causal_softmax__fused",
                             "m0__BLOCK")
                for i, path in enumerate((tmp_path / "cache").rglob("causal_softmax*.py"))]
    assert 32 in defaults


@pytest.mark.parametrize("block, rblock", [(32, 64), (256, 16)])
def test_the_unfused_block_sizes_are_safe_to_change(modules, block, rblock):
    module = modules["causal_softmax", True]
    saved = {name: dict(table) for name, table in module.TUNING.items()}
    try:
        for table in module.TUNING.values():
            table.update(BLOCK=block, RBLOCK=rblock)
        cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
        inputs = case_inputs(cascade, Case(SIZES, "float32", 1.0, False, 0))
        out = layer(module, "triton-unfused")(*inputs.values())
        assert all(r.ok for r in compare(cascade, inputs, out, "float32"))
        for table in module.TUNING.values():
            table.update(RBLOCK=24)
        with pytest.raises(Exception, match="RBLOCK: a block size of the tuning table"):
            layer(module, "triton-unfused")(*inputs.values())
    finally:
        module.TUNING.update(saved)


@pytest.mark.parametrize("name", ["causal_softmax", "softmax_3pass"])
@pytest.mark.parametrize("scale", [0.3, -0.3, 0.0])
def test_the_scale_sign_picks_the_folded_max_or_the_scaled_one(modules, name, scale):
    """A param scale of the scores is folded into their max where it is finite and
    positive (s * max x = max s * x there: schedule/scales.py); the host's flag picks the
    kernel's other form for any other value. Both match the oracle, in the interior key
    tiles and the masked ones (70 keys in tiles of 16)."""
    from einsumattn.backends import names
    from einsumattn.backends.module import Plan
    from einsumattn.schedule.lower_attention import lower_attention
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    lowered = lower_attention(names.rename(Plan(cascade).kernel))
    assert [flag.name for flag in lowered.flags] == ["scale__POSITIVE", "TMA", "OFFSETS_32",
                                                    "INDEX_32"]
    module = modules[name, True]
    inputs = case_inputs(cascade, Case(SIZES, "float32", 30.0, False, 0))
    with tuned(module, m0__BLOCK=16, p__BLOCK=16), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(module, module.__all__[0])(backend="triton", scale=scale)(
            *inputs.values())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32", {"scale": scale}))


def test_64_bit_tile_offsets_read_what_32_bit_ones_read(modules):
    """Where a tile's offsets would pass 2**31 (a stride past 2**31 / the tile), the host
    clears OFFSETS_32 and the kernel takes 64-bit offsets: the same addresses, so the
    same result, bit for bit."""
    name = "causal_softmax"
    module = modules[name, True]
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    inputs = case_inputs(cascade, Case(SIZES, "float32", 1.0, False, 0))
    kernel = module.causal_softmax__fused
    with tuned(module, m0__BLOCK=16, p__BLOCK=16):
        narrow = layer(module)(*inputs.values())
        try:
            module.causal_softmax__fused = Forced(kernel, OFFSETS_32=False)
            wide = layer(module)(*inputs.values())
        finally:
            module.causal_softmax__fused = kernel
    assert torch.equal(narrow, wide)


@pytest.mark.parametrize("name", ["causal_softmax", "softmax_3pass"])
def test_tma_loads_read_what_pointer_loads_read(modules, name):
    """Interior K and V tiles read through TMA descriptors where the host's _tma_suits
    says the tensors allow (16-byte aligned strides: E = 8 float32 here; the interpreter
    emulates TMA) and through pointers otherwise: the same tiles (0 past the tensor,
    where the pointer loads mask), so the same result, bit for bit."""
    module = modules[name, True]
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    sizes = dict(SIZES, E=8, F=8)
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 0))
    kernel_name = f"{name}__fused"
    kernel = getattr(module, kernel_name)
    results = {}
    with tuned(module, m0__BLOCK=16, p__BLOCK=16):
        for tma in (None, False):
            recorded = Recorded(kernel) if tma is None else Recorded(kernel, TMA=False)
            try:
                setattr(module, kernel_name, recorded)
                results[tma] = layer(module)(*inputs.values())
            finally:
                setattr(module, kernel_name, kernel)
            if tma is None:      # the host's own choice: TMA, with descriptors
                (launch,) = recorded.launched
                assert launch["TMA"] is True
    assert torch.equal(results[None], results[False])
    assert all(r.ok for r in compare(cascade, inputs, results[None], "float32"))
