"""The peers benchmarks/attention.py times einsumattn's kernels against compute what the
kernels compute: Triton's fused-attention tutorial (the kernel issue 12's speed targets
name), loaded from the shared sm90 tool's copy, run in the interpreter here (its pointer
kernel; a Hopper GPU takes its TMA kernel) against SDPA, causal and not."""

import importlib.util

import pytest
import torch

from conftest import GPU, ROOT

spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" /
                                              "attention.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.skipif(not any(p.exists() for p in bench.TUTORIAL),
                    reason="the shared sm90 tool's ref_attn.py is absent")
@pytest.mark.parametrize("causal", [True, False])
def test_the_tutorial_peer_computes_softmax_attention(causal):
    device = "cuda" if GPU else "cpu"
    dtype = torch.bfloat16 if GPU else torch.float32
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=generator).to(device, dtype)
               for _ in range(3))
    call = bench.tutorial_peer(q, k, v, causal)
    assert call is not None
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                            is_causal=causal)
    # float32 in the interpreter: both sides sum 256 float32 terms (1e-5 on outputs of
    # magnitude about 1). On a GPU the tutorial runs in bfloat16: P rounded to 8 bits
    # before P V (2**-9 relative per term) and the output stored in bfloat16 (2**-9 of
    # values below 4): 2e-2 bounds their sum with room for the 64-term dot sums.
    assert torch.allclose(call().float(), want, atol=2e-2 if GPU else 1e-5)


def test_the_tutorial_peer_declines_what_it_cannot_run():
    q = torch.randn(1, 1, 100, 64)              # not a multiple of its 128-row tile
    assert bench.tutorial_peer(q, q, q, False) is None
    q = torch.randn(1, 1, 128, 48)              # no configuration for head dim 48
    assert bench.tutorial_peer(q, q, q, False) is None
