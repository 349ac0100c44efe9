"""The scheduled torch backend (backends/torch_scheduled.py): the fused schedule as torch
code, held to the oracle like every backend, with gradients, tile skipping and working
memory that does not grow with the keys."""

import math
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einsumattn
from einsumattn.backends import torch_scheduled
from einsumattn.codegen import compile_to_file, generate
from einsumattn.codegen.compile import import_file
from einsumattn.backends.module import Plan
from einsumattn.ir import expr as ir
from einsumattn.verify import Case, case_inputs, compare, drawn_ranks, run_check

from conftest import EXAMPLES, ROOT, WINDOW, examples, load_generated
from spec_generator import cascades
from test_torch_reference import (MASKS, _independent_attention, _inputs, _softmax, build,
                                  softmax)

# Small tiles, so that hypothesis' cases (sizes up to 17) span several row blocks and
# key tiles, with a last tile cut short.
SMALL = {"row_block": 3, "key_tile": 4}
DEFAULT = dict(torch_scheduled.DEFAULT_TUNING)
# Specs with no fused schedule: backend="torch" runs the reference for them (the
# scheduled torch backend prints one kernel's schedule; the Differential Transformer's
# is two stages, lambda then attention, as ECA's and linear attention's).
UNSCHEDULED = {"eca", "gla_recurrent", "gla", "linear_attention", "diff_transformer",
               "clipped_softmax", "squeeze_excitation", "stick_breaking", "cbam", "aaren",
               "efficient_attention", "cosine_attention"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scheduled")
    return {path.stem: compile_to_file(path, folder) for path in EXAMPLES}


def _module(path, name: str, tuning=SMALL):
    module = import_file(path, name)
    module.TORCH_TUNING = dict(tuning)
    return module


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_agrees_with_the_oracle(path, built):
    module = _module(built[path.stem], f"scheduled_{path.stem}")
    assert (module.TORCH_FALLBACK is None) == (path.stem not in UNSCHEDULED), \
        module.TORCH_FALLBACK
    reports = []
    assert run_check(einsumattn.load(path), module, ("torch", "reference"), examples=12,
                     report=reports.append), "\n".join(reports)


@pytest.mark.parametrize("rewrite", [False, True], ids=["own", "derived"])
def test_a_window_on_both_sides_of_the_diagonal_agrees(tmp_path, rewrite):
    """Lower and upper affine bounds at once (tiles skipped on both sides, tiles inside
    the window unmasked), as the spec's own multi-pass schedule and as the derived one."""
    spec = tmp_path / "sliding_window.attn"
    spec.write_text(WINDOW)
    module = _module(compile_to_file(spec, tmp_path, rewrite=rewrite), f"window_{rewrite}")
    assert module.TORCH_FALLBACK is None
    reports = []
    assert run_check(einsumattn.load(spec), module, ("torch",), examples=12,
                     report=reports.append), "\n".join(reports)


@given(cascades())
@settings(max_examples=examples(40), deadline=None, suppress_health_check=list(HealthCheck))
def test_random_cascades_agree_with_the_oracle(spec):
    cascade = einsumattn.load(spec.text)
    module = load_generated(generate(cascade), "random_scheduled")
    module.TORCH_TUNING = {"row_block": 2, "key_tile": 2}
    cls = getattr(module, module.__all__[0])
    for size in (3, 5):
        sizes = {r: size for r in cascade.ranks if cascade.ranks[r].fixed is None}
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 0))
        results = compare(cascade, inputs, cls(backend="torch")(*inputs.values()), "float32")
        assert all(r.ok for r in results), (spec.text, module.TORCH_FALLBACK,
                                            [r.describe() for r in results])


# Attention variants drawn at random: filters (affine bounds on one or both sides, with
# `and` / `or`, rows that see no key), score functions and normalisers. Each has a fused
# schedule, so backend="torch" runs the scheduled path on every one.
FILTERS = ["", "m <= p", "m < p", "m <= p + 2", "m >= p - 1", "p - m < 3",
           "m <= p and p - m < 4", "m <= p or m < 2", "m > p + 1", "m <= p - 3",
           "m < L", "m <= p and m < L", "P > 3", "m <= p and (P > 3 or m < 2)"]
SCORES = ["QK[b, h, p, m]", "tanh(QK[b, h, p, m] / 4) * 4",
          "QK[b, h, p, m] - 0.5 * (p - m)", "QK[b, h, p, m] + B0[h, m]"]


@st.composite
def attention_variants(draw) -> str:
    where = draw(st.sampled_from(FILTERS))
    score = draw(st.sampled_from(SCORES))
    sigmoid = draw(st.booleans())
    lines = ["attention variant", "dims B, H, P, M, E, F",
             "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]"
             + (", B0[h, m]" if "B0" in score else ""),
             "param scale = 1 / sqrt(E)"] + (["param L = 3"] if "L" in where else []) + [
        "QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e] * scale"
        + (f" where {where}" if where else ""),
        f"S[b, h, p, m] = {score}"]
    if sigmoid:
        lines += ["A[b, h, p, m] = sigmoid(S[b, h, p, m])"]
    else:
        lines += ["GM[b, h, p] = max[m] S[b, h, p, m]",
                  "SN[b, h, p, m] = exp(S[b, h, p, m] - GM[b, h, p])",
                  "SD[b, h, p] = sum[m] SN[b, h, p, m]",
                  "A[b, h, p, m] = SN[b, h, p, m] / SD[b, h, p]"]
    return "\n".join(lines + ["AV[b, h, p, f] = A[b, h, p, m] * V[b, h, m, f]",
                              "output AV", ""])


@given(attention_variants(), st.booleans(), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([(1, 6, 9), (2, 9, 5), (1, 13, 13)]))
@settings(max_examples=examples(30), deadline=None, suppress_health_check=list(HealthCheck))
def test_random_attention_variants_agree_with_the_oracle(text, rewrite, rows, keys, shape):
    """The scheduled path itself (these all have a fused schedule): the derived 1-pass
    cascade with its own key tile, or the spec's own passes over tiles of keys."""
    cascade = einsumattn.load(text)
    module = load_generated(generate(cascade, rewrite=rewrite), "variant")
    assert module.TORCH_FALLBACK is None, module.TORCH_FALLBACK
    module.TORCH_TUNING = {"row_block": rows, "key_tile": keys}
    heads, queries, keys_ = shape
    sizes = {"B": 1, "H": heads, "P": queries, "M": keys_, "E": 3, "F": 2}
    inputs = case_inputs(cascade, Case(sizes, "float32", 10.0, False, 0))
    out = getattr(module, module.__all__[0])(backend="torch")(*inputs.values())
    results = compare(cascade, inputs, out, "float32")
    assert all(r.ok for r in results), (text, [r.describe() for r in results])


def _causal_inputs(size: int, heads: int = 2, dim: int = 4, grad: bool = False):
    generator = torch.Generator().manual_seed(size)
    return [torch.randn(1, heads, size, dim, generator=generator, requires_grad=grad)
            for _ in range(3)]


def test_gradients_match_the_reference(built):
    module = _module(built["causal_softmax"], "grad_causal", {"row_block": 4, "key_tile": 3})
    cls = module.CausalSoftmax
    grads = {}
    for backend in ("torch", "reference"):
        inputs = _causal_inputs(11, grad=True)
        out = cls(backend=backend)(*inputs)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads[backend] = [t.grad for t in inputs]
    for scheduled, reference in zip(grads["torch"], grads["reference"]):
        assert torch.isfinite(scheduled).all()
        torch.testing.assert_close(scheduled, reference, rtol=1e-5, atol=1e-6)


def test_padding_with_nan_is_exact(built):
    """NaN in V at keys past the valid length of a query (masked by causality inside
    the diagonal tile) never reaches rows that do not see them."""
    module = _module(built["causal_softmax"], "nan_causal", {"row_block": 4, "key_tile": 4})
    q, k, v = _causal_inputs(10)
    v = v.clone()
    v[:, :, 9] = math.nan
    out = module.CausalSoftmax(backend="torch")(q, k, v)
    reference = module.CausalSoftmax(backend="reference")(q, k, v)
    assert torch.isnan(out[:, :, 9]).all() and torch.isfinite(out[:, :, :9]).all()
    torch.testing.assert_close(out[:, :, :9], reference[:, :, :9])


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("where", ["K", "V", "KV"])
def test_inf_and_nan_at_keys_no_query_sees_do_not_leak(tmp_path, kind, where):
    """The reference's exact padding (tests/test_torch_reference.py), in tiles."""
    cascade, module = _softmax(tmp_path, kind)
    params = MASKS[kind]["kwargs"]
    layer = getattr(module, module.__all__[0])(backend="torch", **params)
    for tuning in ({"row_block": 2, "key_tile": 3}, DEFAULT):
        module.TORCH_TUNING = tuning
        for poison in (math.nan, math.inf, -math.inf):
            inputs = _inputs(kind, poison, where)
            out = layer(*inputs.values())
            assert torch.isfinite(out).all(), (tuning, poison, out)
            results = compare(cascade, inputs, out, "float32", params)
            assert all(r.ok for r in results), [r.describe() for r in results]


@pytest.mark.parametrize("mask_text, mask", [
    ("m <= p - 2", lambda p, m: m <= p - 2),         # rows 0 and 1 see no key
    ("m < L and p < L", lambda p, m: (m < 3) & (p < 3)),   # padded queries and keys
    ("m > p + 5", lambda p, m: m > p + 5),           # rows 2.. see no key
])
def test_fully_masked_rows_have_zero_gradients(tmp_path, mask_text, mask):
    """As the reference's (tests/test_torch_reference.py): forward 0 and gradients 0 for a
    row that sees no key, though the derived cascade divides by its zero sum."""
    params = "\nparam L" if "L" in mask_text else ""
    _, module = build(softmax("grad_rows", mask_text, params=params), tmp_path)
    kwargs = {"L": 3} if params else {}
    keep = mask(torch.arange(6)[:, None], torch.arange(8)[None, :])
    blind = ~keep.any(dim=1)
    for tuning in ({"row_block": 2, "key_tile": 3}, DEFAULT):
        module.TORCH_TUNING = tuning
        generator = torch.Generator().manual_seed(1)
        leaves = [torch.randn(2, 2, 6 if i == 0 else 8, 4, generator=generator,
                              requires_grad=True) for i in range(3)]
        weights = torch.randn(2, 2, 6, 4, generator=generator)
        out = getattr(module, module.__all__[0])(backend="torch", **kwargs)(*leaves)
        grads = torch.autograd.grad((out * weights).sum(), leaves)
        expected_out = _independent_attention(*leaves, keep)
        expected = torch.autograd.grad((expected_out * weights).sum(), leaves)
        torch.testing.assert_close(out, expected_out)
        assert blind.any() and (out[:, :, blind] == 0).all()
        for got, want in zip(grads, expected):
            assert torch.isfinite(got).all(), tuning
            torch.testing.assert_close(got, want)


class _CountMatmuls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Products (a batched matmul, or an einsum of several operands), not sums.
        self.calls += func is torch.matmul or func is torch.einsum and "," in args[0]
        return func(*args, **(kwargs or {}))


def test_causal_tiles_past_the_diagonal_are_skipped(built):
    """With 8 row blocks and 8 key tiles the causal schedule visits the 36 tiles on or
    below the diagonal, two contractions each (QK and the sum of P V). One thread: a
    TorchFunctionMode sees only its own thread's calls."""
    module = _module(built["causal_softmax"], "skip_causal",
                     {"row_block": 4, "key_tile": 4, "threads": 1})
    inputs = _causal_inputs(32)
    with _CountMatmuls() as counter:
        module.CausalSoftmax(backend="torch")(*inputs)
    assert counter.calls == 2 * 36, counter.calls
    plan = Plan(einsumattn.load(ROOT / "examples" / "causal_softmax.attn"))
    facts = torch_scheduled.schedule(plan.kernel).facts
    assert facts["form"] == "split" and facts["skipping"].endswith("(proved)")


def test_a_fallback_says_why_and_runs_the_reference(built):
    module = _module(built["gla_recurrent"], "fallback_gla")
    assert "the recurrence S is not over the key tiles" in module.TORCH_FALLBACK
    assert not hasattr(module, "_scheduled")
    inputs = case_inputs(einsumattn.load(ROOT / "examples" / "gla_recurrent.attn"),
                         Case({"B": 1, "H": 2, "T": 5, "D": 3, "F": 2}, "float32", 1.0,
                              True, 0))
    cls = module.GlaRecurrent
    assert torch.equal(cls(backend="torch")(*inputs.values()),
                       cls(backend="reference")(*inputs.values()))


def test_bad_tuning_is_refused(built):
    module = _module(built["causal_softmax"], "tuning_causal", {"row_block": 0,
                                                                 "key_tile": 4})
    with pytest.raises(ValueError, match="row_block"):
        module.CausalSoftmax(backend="torch")(*_causal_inputs(4))


class _RecordingTorch:
    """torch as the generated module sees it, noting for each matmul the thread that
    runs it and the number of threads torch gives that thread's operations."""

    def __init__(self):
        self.matmuls, self.shapes, self.wheres = [], [], []

    def __getattr__(self, name):
        if name == "where":
            def where(*args, **kwargs):
                result = torch.where(*args, **kwargs)
                self.wheres.append(result.shape)
                return result
            return where
        if name != "matmul":
            return getattr(torch, name)

        def matmul(*args, **kwargs):
            self.matmuls.append((threading.get_ident(), torch.get_num_threads()))
            self.shapes.append((args[0].shape, args[1].shape))
            return torch.matmul(*args, **kwargs)
        return matmul


def _run_recorded(module, inputs, threads: int, grad: bool = False):
    module.TORCH_TUNING["threads"] = threads
    recording = module.torch = _RecordingTorch()
    try:
        leaves = [t.detach().requires_grad_(grad) for t in inputs]
        out = module.CausalSoftmax(backend="torch")(*leaves)
    finally:
        module.torch = torch
    return out, recording.matmuls


@pytest.mark.parametrize("name", ["causal_softmax", "sliding_window_sinks"])
def test_row_blocks_in_threads_compute_what_one_thread_does(built, name):
    """Without autograd, row blocks run on TORCH_TUNING["threads"] Python threads, each
    with one-thread torch operations; the output is bit for bit that of one thread, and
    torch's thread count is restored afterwards."""
    module = _module(built[name], f"threads_{name}", {"row_block": 4, "key_tile": 4})
    cls = getattr(module, module.__all__[0])
    inputs = _causal_inputs(37, heads=3)     # both specs read Q, K, V[b, h, p|m, e|f]
    before = torch.get_num_threads()
    with torch.no_grad():
        module.TORCH_TUNING["threads"] = 1
        torch.set_num_threads(1)
        try:
            alone = cls(backend="torch")(*inputs)
        finally:
            torch.set_num_threads(before)
        module.TORCH_TUNING["threads"] = 3
        together = cls(backend="torch")(*inputs)
    assert torch.get_num_threads() == before
    assert torch.equal(alone, together)


def test_row_blocks_in_threads_under_inference_mode(built):
    """Inference mode is thread-local: the helper threads enter the caller's, or their
    writes to the output (made in inference mode) would be refused."""
    module = _module(built["causal_softmax"], "threads_inference", {"row_block": 4,
                                                                    "key_tile": 4})
    inputs = _causal_inputs(30)
    with torch.inference_mode():
        module.TORCH_TUNING["threads"] = 2
        together = module.CausalSoftmax(backend="torch")(*inputs)
    module.TORCH_TUNING["threads"] = 1
    with torch.no_grad():
        alone = module.CausalSoftmax(backend="torch")(*inputs)
    torch.testing.assert_close(together, alone)


def test_each_thread_runs_row_blocks_with_one_torch_thread(built):
    module = _module(built["causal_softmax"], "threads_recorded", {"row_block": 4,
                                                                   "key_tile": 4})
    inputs = _causal_inputs(64, heads=2)
    with torch.no_grad():
        _, matmuls = _run_recorded(module, inputs, threads=2)
    assert len({thread for thread, _ in matmuls}) == 2
    assert {count for _, count in matmuls} == {1}
    _, matmuls = _run_recorded(module, inputs, threads=2, grad=True)
    assert {thread for thread, _ in matmuls} == {threading.get_ident()}, \
        "with autograd recording, the blocks run in the calling thread"


def test_the_last_tile_of_a_row_block_ends_at_its_last_visible_key(built):
    """Causal, row blocks of 4 and key tiles of 8: block r computes the scores of keys
    0 .. 4r + 3 only (the diagonal tile cut after the block's last row), 4 rows x
    (4r + 4) keys, not whole tiles of 8; the output is the reference's."""
    module = _module(built["causal_softmax"], "cut_causal", {"row_block": 4, "key_tile": 8})
    inputs = _causal_inputs(32, dim=5)
    module.TORCH_TUNING["threads"] = 1
    recording = module.torch = _RecordingTorch()
    try:
        with torch.no_grad():
            out = module.CausalSoftmax(backend="torch")(*inputs)
    finally:
        module.torch = torch
    scores = sum(a[-2] * b[-1] for a, b in recording.shapes if a[-1] == 5)
    assert scores == sum(4 * (4 * r + 4) for r in range(8))
    torch.testing.assert_close(out, module.CausalSoftmax(backend="reference")(*inputs))


@pytest.mark.parametrize("grad", [False, True])
def test_without_autograd_masked_tiles_select_by_bits(built, grad):
    """Without autograd recording, the masked scores of a tile the diagonal crosses
    (for the max) and its masked probabilities (for sum P and P V) are selected by bit
    operations, not torch.where (8x a multiplication on the CPU): no where makes a
    tile-sized tensor, and the result is the reference's, NaN at keys no row sees
    included. With autograd recording, torch.where, as autograd needs."""
    module = _module(built["causal_softmax"], f"select_{grad}", {"row_block": 4,
                                                                 "key_tile": 4})
    q, k, v = _causal_inputs(16, dim=5)
    v = v.clone()
    v[:, :, 15] = math.nan                 # seen by row 15 only
    module.TORCH_TUNING["threads"] = 1
    recording = module.torch = _RecordingTorch()
    try:
        out = module.CausalSoftmax(backend="torch")(*[t.detach().requires_grad_(grad)
                                                      for t in (q, k, v)])
    finally:
        module.torch = torch
    tiles = [shape for shape in recording.wheres if shape[-1] == 4 and shape[-2] == 4]
    assert bool(tiles) == grad, recording.wheres
    reference = module.CausalSoftmax(backend="reference")(q, k, v)
    assert torch.isnan(out[:, :, 15]).all()
    torch.testing.assert_close(out[:, :, :15].detach(), reference[:, :, :15])


def test_an_error_in_a_helper_thread_reaches_the_caller(built):
    module = _module(built["causal_softmax"], "threads_error", {"row_block": 4,
                                                                "key_tile": 4})
    class Failing(_RecordingTorch):
        def __getattr__(self, name):
            if name == "matmul" and threading.get_ident() != threading.main_thread().ident:
                raise RuntimeError("a helper's block failed")
            return super().__getattr__(name)

    module.TORCH_TUNING["threads"] = 2
    module.torch = Failing()
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="helper's block failed"):
            module.CausalSoftmax(backend="torch")(*_causal_inputs(64))
    finally:
        module.torch = torch


def test_bad_thread_count_is_refused(built):
    module = _module(built["causal_softmax"], "threads_bad", {"row_block": 4,
                                                              "key_tile": 4, "threads": 0})
    with torch.no_grad(), pytest.raises(ValueError, match="threads"):
        module.CausalSoftmax(backend="torch")(*_causal_inputs(16))


@pytest.mark.slow
def test_working_memory_does_not_grow_with_the_keys(built):
    """Peak working memory (benchmarks/torch_cpu.py: the peak resident memory during
    the call beyond what the process held before it, less the output) at 4x the
    sequence length stays below 2x; the reference's, which holds P x M scores, grows
    about 16-fold."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.torch_cpu import working_memory
    path = built["causal_softmax"]
    # Row blocks run on `threads` threads at once, each with its tiles: the working memory
    # is that many blocks' whatever the keys, so the comparison holds the threads fixed
    # (with one per core, 512 rows gave 4 blocks at once and 2048 rows 16 on a 16-core
    # machine: 5.5 MB against 30.7 MB, growth with the cores, not with the keys).
    tuning = {"row_block": 128, "key_tile": 128, "threads": 2}
    small = working_memory(path, "torch", 512, heads=8, tuning=tuning, threads=2)
    large = working_memory(path, "torch", 2048, heads=8, tuning=tuning, threads=2)
    assert large < 2 * small, (small, large)
    reference = [working_memory(path, "reference", n, heads=8) for n in (512, 2048)]
    assert reference[1] > 8 * reference[0], reference


class _CountNewTiles(torch.overrides.TorchFunctionMode):
    """Counts the operations that return a tensor of `size` elements in new storage
    (not one of their arguments', as an in-place operation or a view does)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        tensors = [a for a in list(args) + list((kwargs or {}).values())
                   if isinstance(a, torch.Tensor)]
        if isinstance(result, torch.Tensor) and result.numel() == self.size and \
                all(result.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
                    for t in tensors):
            self.calls += 1
        return result


def _new_score_tiles(module, cls_name: str, inputs, tile: int, grad: bool) -> int:
    leaves = [t.detach().requires_grad_(grad) for t in inputs]
    module.TORCH_TUNING["threads"] = 1    # the mode sees only its own thread's calls
    with _CountNewTiles(tile) as counter:
        getattr(module, cls_name)(backend="torch")(*leaves)
    return counter.calls


def test_without_autograd_a_tile_makes_one_new_score_tensor(built):
    """Without gradients recorded, an unmasked key tile of softmax attention makes one
    tensor of scores (Q K^T) and computes the rest (the scale, exp(QK - max)) in its
    storage; with gradients recorded, the statements keep their own tensors, as
    autograd needs."""
    module = _module(built["softmax_3pass"], "in_place_softmax", {"row_block": 4,
                                                                  "key_tile": 5})
    inputs = _causal_inputs(20, heads=2)
    tile = 1 * 2 * 4 * 5           # batch x heads x rows x keys (not x features: 4)
    tiles = (20 // 4) * (20 // 5)
    assert _new_score_tiles(module, "Softmax3pass", inputs, tile, grad=False) == tiles
    assert _new_score_tiles(module, "Softmax3pass", inputs, tile, grad=True) >= 3 * tiles
    with torch.no_grad():
        quick = module.Softmax3pass(backend="torch")(*inputs)
    recorded = module.Softmax3pass(backend="torch")(*[t.detach().requires_grad_()
                                                        for t in inputs])
    # exp as exp2(x * log2(e)) in place: a relative |x| * 2**-24 apart at most.
    torch.testing.assert_close(quick, recorded.detach(), rtol=1e-5, atol=1e-6)


def test_only_tiles_the_diagonal_crosses_make_masked_copies(built):
    """Causal, 8 row blocks x 8 key tiles, without autograd: the 36 tiles on or below
    the diagonal make one new score tensor each (Q K^T); only the 8 the diagonal
    crosses also make masked copies (the scores for the max, the probabilities for
    sum P and P V, named once)."""
    module = _module(built["causal_softmax"], "masked_causal", {"row_block": 4,
                                                                "key_tile": 4})
    inputs = _causal_inputs(32, heads=3, dim=6)
    tile = 1 * 3 * 4 * 4           # batch x heads x rows x keys (not x features: 6)
    assert _new_score_tiles(module, "CausalSoftmax", inputs, tile, grad=False) == 36 + 2 * 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_untracked_statements_agree_with_the_guarded_ones(path, built):
    """Every example's schedule computes the same without autograd recording (no
    gradient guards, statements in the storage of dead tile tensors) as with it."""
    module = _module(built[path.stem], f"untracked_{path.stem}")
    if module.TORCH_FALLBACK is not None:
        pytest.skip(module.TORCH_FALLBACK)
    cascade = einsumattn.load(path)
    sizes = {r: 7 for r in drawn_ranks(cascade)}
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    cls = getattr(module, module.__all__[0])
    floating = [t.is_floating_point() for t in inputs.values()]
    with torch.no_grad():
        quick = cls(backend="torch")(*inputs.values())
    recorded = cls(backend="torch")(*[t.detach().requires_grad_() if f else t
                                      for t, f in zip(inputs.values(), floating)])
    # exp as exp2(x * log2(e)) and in-place statements without autograd: the two forms
    # differ by a relative |x| * 2**-24 per exp, float32 values of order 1.
    torch.testing.assert_close(quick, recorded.detach(), rtol=1e-5, atol=1e-6)


def test_constant_epilogue_factors_fold_into_the_contraction():
    """`QK_sum = sum[e] K*Q; QK = QK_sum * scale where m <= p` (the canonical form)
    folds to `QK_sum = sum[e] K*Q*scale; QK = QK_sum where m <= p`: the oracle's values
    are unchanged; a factor that reads a tensor, or a contraction read twice, stays."""
    from einsumattn.evaluate import evaluate
    plan = Plan(einsumattn.load(ROOT / "examples" / "causal_softmax.attn"))
    folded, what = torch_scheduled.fold_constant_factors(plan.kernel)
    assert what == ["QK_sum <- QK"]
    assert torch_scheduled.schedule(plan.kernel).facts["folded"] == what
    epilogue = folded.einsum("QK").body
    assert isinstance(epilogue, ir.Read) and epilogue.tensor == "QK_sum"
    assert ir.Param("scale") in ir.product_factors(folded.einsum("QK_sum").body)
    inputs = case_inputs(plan.kernel, Case({"B": 1, "H": 2, "P": 5, "M": 6, "E": 3, "F": 2},
                                           "float32", 1.0, False, 0))
    before, after = evaluate(plan.kernel, inputs), evaluate(folded, inputs)
    assert np.allclose(after["AV"], before["AV"], rtol=1e-12, atol=1e-12)
    twice = einsumattn.load("""attention twice
dims P, M, E
input Q[p, e], K[m, e], B0[p, m]
S[p, m] = Q[p, e] * K[m, e]
T[p, m] = S[p, m] * 0.5
U[p, m] = S[p, m] + T[p, m]
W[p, m] = Q[p, e] * K[m, e]
X[p, m] = W[p, m] * B0[p, m]
output U, X
""")
    assert torch_scheduled.fold_constant_factors(twice) == (twice, [])


def test_a_loop_whose_values_nothing_reads_is_left_out():
    """Found by the randomized profile: T2 is no output's input, so its key-tile loop
    computed only values nothing reads; leaving them out left a loop with no body (a
    module that did not import). The loop goes, its Einsum's comment stays."""
    text = ("attention gen_3e_bp\n\ndims  B, P\ninput X0[b], X1[b, p]\n\n"
            "T1[p] = exp(tanh(X1[b, p]))\n"
            "T2[b, p] = tanh(T1[p]) where (b <= b) and (b <= b)\n"
            "T3[p] = tanh(exp(tanh(X0[b + 1])) * 1)\n\noutput T1, T3\n")
    cascade = einsumattn.load(text)
    module = load_generated(generate(cascade), "unread_loop")
    cls = getattr(module, module.__all__[0])
    for size in (3, 5):
        sizes = {r: size for r in cascade.ranks if cascade.ranks[r].fixed is None}
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 0))
        for backend in ("torch", "triton"):
            results = compare(cascade, inputs, cls(backend=backend)(*inputs.values()),
                              "float32")
            assert all(r.ok for r in results), [r.describe() for r in results]
