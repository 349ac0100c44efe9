"""The example specs in `examples/`, evaluated by the float64 oracle, against hand-written
PyTorch implementations of their papers' math (`tests/reference.py`) and, for the softmax
family, against `torch.nn.functional.scaled_dot_product_attention`.

Tolerance: rtol=1e-9, atol=1e-12. Oracle and references both compute in float64, so they
differ only by rounding and summation order (relative error ~1e-15 at these sizes, ~1e-12
on scores of magnitude 1e4); a wrong mask, index or formula changes results by far more.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import einsumattn

try:
    from . import reference as ref
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import reference as ref

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RTOL, ATOL = 1e-9, 1e-12


# ----------------------------------------------------------------------------- helpers

@functools.cache
def load(name: str):
    """The cascade of `examples/<name>.attn`, parsed once per session."""
    return einsumattn.load(EXAMPLES / f"{name}.attn")


def shape_id(sizes: dict[str, int]) -> str:
    return "".join(f"{rank}{size}" for rank, size in sizes.items())


def random_inputs(cascade, sizes: dict[str, int], seed: int = 0,
                  prepare: dict[str, Callable] | None = None) -> dict[str, torch.Tensor]:
    """Seeded standard-normal float64 inputs shaped from the cascade's declared ranks;
    `prepare[name]` maps an input's raw sample (e.g. to log-space gates)."""
    gen = torch.Generator().manual_seed(seed)
    prepare = prepare or {}
    inputs = {}
    for tensor in cascade.inputs:
        shape = tuple(sizes[rank] for rank in tensor.ranks)
        value = torch.randn(shape, generator=gen, dtype=torch.float64)
        inputs[tensor.name] = prepare.get(tensor.name, lambda x: x)(value)
    return inputs


def evaluate(cascade, inputs, params=None) -> dict[str, torch.Tensor]:
    """The oracle's outputs as float64 torch tensors, after checking their names/order."""
    out = einsumattn.evaluate(cascade, inputs, params)
    assert list(out) == list(cascade.outputs)
    for value in out.values():
        assert isinstance(value, np.ndarray) and value.dtype == np.float64
    return {name: torch.from_numpy(np.asarray(value)) for name, value in out.items()}


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------- example registry

def shapes(ranks, *rows, **fixed):
    """One dict of sizes per row, by the ranks named in order (plus the fixed ones)."""
    return tuple(dict(zip(ranks, row), **fixed) for row in rows)


def attn_shapes(*rows):
    return shapes("BHPMEF", *rows)


# (B, H, P, M, E, F): sizes of 1, odd/prime sizes, M below / at / above the 1-pass chunk
# (16), P > M and P < M, self-attention P == M.
ATTN_SHAPES = attn_shapes(
    (1, 1, 1, 7, 3, 2),
    (2, 3, 5, 13, 4, 3),
    (1, 2, 17, 33, 5, 1),
    (1, 1, 3, 16, 2, 2),
    (1, 1, 2, 1, 1, 1),
    (2, 1, 11, 11, 3, 5),
)
GQA_SHAPES = shapes(("B", "H", "KH", "P", "M", "E", "F"),
    (1, 1, 1, 1, 7, 3, 2),
    (2, 4, 2, 5, 13, 4, 3),
    (1, 6, 3, 7, 9, 2, 2),
    (1, 4, 1, 3, 5, 3, 1),
    (1, 3, 3, 2, 17, 1, 4),
)
GLA_SHAPES = shapes("BHTDF",
    (1, 1, 1, 1, 1),
    (2, 3, 5, 4, 3),
    (1, 2, 13, 3, 7),
)
CLIPPED_SHAPES = shapes("BHPMEFD",
    (1, 1, 1, 7, 3, 2, 1),
    (2, 3, 5, 13, 4, 3, 5),
    (1, 2, 17, 33, 5, 1, 3),
    (2, 1, 11, 11, 3, 5, 2),
)
SE_SHAPES = shapes("BCHWR",
    (1, 1, 1, 1, 1),
    (2, 7, 3, 5, 3),
    (1, 16, 4, 4, 4),
    (2, 13, 1, 7, 2),
)
CBAM_SHAPES = shapes("BCHWR",
    (1, 1, 1, 1, 1),
    (2, 5, 3, 4, 2),
    (1, 3, 9, 8, 3),      # a map larger than the 7 x 7 window
    (1, 4, 2, 11, 1),
    I=7, J=7)
# (B, H, P, M, E, F) for neighborhood_2d: M a multiple of the spec's image width IW = 4
# (heights 1, 3, 5 and 2 against the window of 3), P == M, P < M and P > M.
NEIGHBORHOOD_2D_SHAPES = attn_shapes(
    (1, 1, 4, 4, 3, 2),
    (2, 3, 12, 12, 4, 3),
    (1, 2, 20, 20, 5, 1),
    (1, 1, 7, 16, 2, 2),
    (2, 1, 13, 8, 3, 5),
)
ECA_SHAPES = shapes("BCHWK",
    (1, 1, 1, 1, 1),
    (2, 7, 3, 5, 3),
    (1, 2, 2, 3, 5),      # fewer channels than taps
    (2, 13, 4, 4, 5),
    (1, 3, 1, 2, 3),
)


@dataclass(frozen=True)
class Example:
    """An example spec, its reference (inputs in declaration order, spec params as
    keyword arguments with the spec's names), the shapes to try, and input preparation."""
    reference: Callable[..., torch.Tensor]
    shapes: tuple[dict[str, int], ...]
    prepare: dict[str, Callable] = field(default_factory=dict)


EXAMPLE_REGISTRY: dict[str, Example] = {
    "softmax_3pass": Example(ref.softmax_attention, ATTN_SHAPES),
    "softmax_1pass": Example(ref.softmax_attention, ATTN_SHAPES),
    "causal_softmax": Example(ref.causal_softmax_attention, ATTN_SHAPES),
    "sliding_window_sinks": Example(
        lambda q, k, v, W=4, S=1, scale=None:
            ref.sliding_window_sinks_attention(q, k, v, W, S, scale),
        ATTN_SHAPES),
    "alibi": Example(ref.alibi_attention, ATTN_SHAPES),
    "softcap": Example(ref.softcap_attention, ATTN_SHAPES),
    "gqa": Example(ref.gqa_attention, GQA_SHAPES),
    "sigmoid_attention": Example(ref.sigmoid_attention, ATTN_SHAPES),
    "linear_attention": Example(ref.linear_attention, ATTN_SHAPES),
    # GK holds log-space forget gates: log(sigmoid(x)) < 0, as GLA's parametrisation.
    "gla_recurrent": Example(ref.gla_recurrent, GLA_SHAPES, {"GK": F.logsigmoid}),
    "gla": Example(ref.gla, GLA_SHAPES),
    "eca": Example(ref.eca, ECA_SHAPES),
    "diff_transformer": Example(ref.diff_transformer, ATTN_SHAPES),
    "relu_attention": Example(ref.relu_attention, ATTN_SHAPES),
    "clipped_softmax": Example(ref.clipped_softmax, CLIPPED_SHAPES),
    "neighborhood_1d": Example(ref.neighborhood_1d, ATTN_SHAPES),
    "neighborhood_2d": Example(ref.neighborhood_2d, NEIGHBORHOOD_2D_SHAPES),
    "squeeze_excitation": Example(ref.squeeze_excitation, SE_SHAPES),
    "retention": Example(ref.retention, ATTN_SHAPES),
    "softpick": Example(ref.softpick_attention, ATTN_SHAPES),
    "normalized_attention": Example(ref.normalized_attention, ATTN_SHAPES),
    "stick_breaking": Example(ref.stick_breaking_attention, ATTN_SHAPES),
    "cbam": Example(ref.cbam, CBAM_SHAPES),
    "aaren": Example(ref.aaren, ATTN_SHAPES),
    "efficient_attention": Example(ref.efficient_attention, ATTN_SHAPES),
    "cosine_attention": Example(ref.cosine_attention, ATTN_SHAPES),
}


def run_example(name: str, sizes: dict[str, int], params: dict | None = None,
                seed: int = 0, inputs: dict[str, torch.Tensor] | None = None):
    """(oracle output, reference output) for one example on one shape."""
    example, cascade = EXAMPLE_REGISTRY[name], load(name)
    if inputs is None:
        inputs = random_inputs(cascade, sizes, seed, example.prepare)
    (got,) = evaluate(cascade, inputs, params).values()
    expected = example.reference(*inputs.values(), **(params or {}))
    return got, expected


def example_cases():
    for name, example in EXAMPLE_REGISTRY.items():
        for sizes in example.shapes:
            yield pytest.param(name, sizes, id=f"{name}-{shape_id(sizes)}")


# ---------------------------------------------------------------------- generic checks

def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.attn")) == sorted(EXAMPLE_REGISTRY)


@pytest.mark.parametrize("name", sorted(EXAMPLE_REGISTRY))
def test_example_header_names_paper(name):
    lines = (EXAMPLES / f"{name}.attn").read_text().splitlines()
    assert lines[0].startswith("# Paper:"), lines[0]
    assert any(line.startswith("# Computes:") for line in lines[:6])


@pytest.mark.parametrize("name, sizes", example_cases())
def test_example_matches_reference(name, sizes):
    got, expected = run_example(name, sizes)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    assert_close(got, expected)


# ------------------------------------------------------------------- softmax family

def sdpa_mask(name: str, p: int, m: int):
    """(is_causal, attn_mask) for torch's SDPA equivalent of a softmax example."""
    if name == "causal_softmax":
        return True, None
    if name == "sliding_window_sinks":
        return False, ref.sliding_window_sinks_mask(p, m, window=4, sinks=1)
    return False, None


@pytest.mark.parametrize("sizes", ATTN_SHAPES, ids=shape_id)
@pytest.mark.parametrize(
    "name", ["softmax_3pass", "softmax_1pass", "causal_softmax", "sliding_window_sinks"])
def test_softmax_matches_torch_sdpa(name, sizes):
    cascade = load(name)
    inputs = random_inputs(cascade, sizes, seed=1)
    (got,) = evaluate(cascade, inputs).values()
    is_causal, mask = sdpa_mask(name, sizes["P"], sizes["M"])
    expected = F.scaled_dot_product_attention(
        *inputs.values(), attn_mask=mask, is_causal=is_causal, scale=1 / math.sqrt(sizes["E"]))
    assert_close(got, expected)


@pytest.mark.parametrize("m", [1, 5, 15, 16, 17, 31, 32, 48, 50])
def test_one_pass_agrees_with_three_pass(m):
    """FuseMax Cascade 5 (16-key chunks, running max) equals Cascade 4, M a multiple of
    16 or not, and M < 16."""
    sizes = dict(B=1, H=2, P=3, M=m, E=4, F=3)
    inputs = random_inputs(load("softmax_3pass"), sizes, seed=m)
    (three,) = evaluate(load("softmax_3pass"), inputs).values()
    (one,) = evaluate(load("softmax_1pass"), inputs).values()
    assert_close(one, three)


STRICT_CAUSAL_SPEC = """
attention strict_causal
dims  B, H, P, M, E, F
input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]
param scale = 1 / sqrt(E)
QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e] * scale  where m < p
GM[b, h, p]    = max[m] QK[b, h, p, m]
SN[b, h, p, m] = exp(QK[b, h, p, m] - GM[b, h, p])
SD[b, h, p]    = sum[m] SN[b, h, p, m]
A[b, h, p, m]  = SN[b, h, p, m] / SD[b, h, p]
AV[b, h, p, f] = A[b, h, p, m] * V[b, h, m, f]
output AV
"""


def test_fully_masked_row_is_zero_not_nan():
    """With `where m < p`, query 0 has no key: max over nothing is -inf, the sum is 0,
    and the absent output row is returned as exactly 0."""
    cascade = einsumattn.load(STRICT_CAUSAL_SPEC)
    sizes = dict(B=2, H=3, P=5, M=7, E=3, F=2)
    q, k, v = random_inputs(cascade, sizes, seed=2).values()
    (got,) = evaluate(cascade, {"Q": q, "K": k, "V": v}).values()
    assert not torch.isnan(got).any()
    assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))
    expected = ref.softmax_attention(q, k, v, keep=ref.causal_mask(5, 7, strict=True))
    assert_close(got, expected)


@pytest.mark.parametrize("name", ["softmax_3pass", "softmax_1pass", "causal_softmax"])
def test_large_logits_stay_finite(name):
    """Scores of magnitude ~1e4 would overflow a naive exp; the max subtraction (global
    in Cascade 4, running in Cascade 5) keeps every value finite."""
    cascade = load(name)
    sizes = dict(B=1, H=2, P=6, M=37, E=4, F=3)
    inputs = random_inputs(cascade, sizes, seed=3)
    inputs["Q"] = inputs["Q"] * 100
    inputs["K"] = inputs["K"] * 100
    scores = torch.einsum("bhpe,bhme->bhpm", inputs["Q"], inputs["K"]) / 2
    assert scores.abs().max() > 1e4
    got, expected = run_example(name, sizes, inputs=inputs)
    assert torch.isfinite(got).all()
    assert_close(got, expected)


# --------------------------------------------------------------------- other variants

@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=lambda kh: f"KH{kh}")
def test_gqa_kv_head_counts(kv_heads):
    """Multi-query (KH=1), grouped (KH=2) and multi-head (KH=H) attention for H=4."""
    sizes = dict(B=2, H=4, KH=kv_heads, P=5, M=9, E=3, F=2)
    got, expected = run_example("gqa", sizes, seed=kv_heads)
    assert_close(got, expected)
    q, k, v = random_inputs(load("gqa"), sizes, seed=kv_heads).values()
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(3), enable_gqa=True)
    assert_close(got, sdpa)


def test_alibi_slopes_h8():
    """Press et al.: for 8 heads the slopes are 1/2, 1/4, ..., 1/256. Read them back from
    the oracle: with Q = 0 the scores are the bias alone, so for query 1 over keys (0, 1)
    the weight of key 0 is sigmoid(-slope); V = (1, 0) makes that weight the output."""
    cascade = load("alibi")
    q = torch.zeros(1, 8, 2, 1, dtype=torch.float64)
    k = torch.randn(1, 8, 2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 1).repeat(1, 8, 1, 1)
    (av,) = evaluate(cascade, {"Q": q, "K": k, "V": v}).values()
    weight = av[0, :, 1, 0]
    slopes = torch.log((1 - weight) / weight)
    paper = torch.tensor([2.0 ** -(i + 1) for i in range(8)], dtype=torch.float64)
    assert_close(slopes, paper)
    assert_close(ref.alibi_slopes(8), paper)
    # Query 0 sees key 0 only.
    assert_close(av[0, :, 0, 0], torch.ones(8, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 2, 4, 9], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("ksize", [1, 3, 5], ids=lambda k: f"K{k}")
def test_eca_kernel_sizes(ksize, channels):
    """ECA's 1-D conv across channels, including fewer channels than taps (all but the
    centre taps then read zero padding)."""
    sizes = dict(B=2, C=channels, H=3, W=2, K=ksize)
    got, expected = run_example("eca", sizes, seed=10 * ksize + channels)
    assert_close(got, expected)


# ------------------------------------------------------------------ parameter overrides

PARAM_CASES = [
    ("softmax_3pass", {"scale": 0.3}),
    ("softmax_1pass", {"scale": 2.0}),
    ("causal_softmax", {"scale": 0.05}),
    ("sliding_window_sinks", {"W": 2, "S": 0}),
    ("sliding_window_sinks", {"W": 1, "S": 3}),
    ("sliding_window_sinks", {"W": 100, "S": 0}),
    ("alibi", {"scale": 0.1}),
    ("softcap", {"cap": 0.5}),
    ("softcap", {"cap": 3, "scale": 1.5}),
    ("sigmoid_attention", {"bias": 0.25}),
    ("sigmoid_attention", {"bias": -1.0, "scale": 1.0}),
    ("gla_recurrent", {"scale": 0.7}),
]


@pytest.mark.parametrize(
    "name, params",
    [pytest.param(n, p, id=f"{n}-" + "-".join(f"{k}={v}" for k, v in p.items()))
     for n, p in PARAM_CASES])
def test_params_override_defaults(name, params):
    # The largest shape, so that every override (e.g. a window wider than P) matters.
    sizes = max(EXAMPLE_REGISTRY[name].shapes, key=lambda s: math.prod(s.values()))
    got, expected = run_example(name, sizes, params, seed=5)
    assert_close(got, expected)
    default, _ = run_example(name, sizes, seed=5)
    assert not torch.allclose(got, default), "the override did not change the result"


def test_inputs_as_numpy_sequence():
    """Inputs may also be numpy arrays given in declaration order."""
    cascade = load("softmax_3pass")
    inputs = random_inputs(cascade, ATTN_SHAPES[1], seed=6)
    (from_dict,) = evaluate(cascade, inputs).values()
    (from_seq,) = evaluate(cascade, [t.numpy() for t in inputs.values()]).values()
    assert torch.equal(from_dict, from_seq)
