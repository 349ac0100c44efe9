"""Every generated Triton kernel compiles for a Hopper GPU (sm_90), here, without one.

The other tests run kernels in Triton's interpreter, which accepts code the GPU compiler
rejects; this one runs Triton's real compiler (front end, LLVM, ptxas) ahead of time.
"""

import os
import re
import subprocess
import sys

import pytest

from einsumattn.codegen import compile_to_file

from conftest import EXAMPLES, ROOT, WINDOW

pytest.importorskip("triton")


# Every module's fused kernels in bf16 (TMA loads); fp32, fp16, pointer loads (the
# kernels' TMA=False branch) in every dtype, and the unfused schedule's kernels (one per Einsum,
# from one generator), for the examples that cover their forms: masks and a derived split
# (causal), a spec's own split and recurrences over its tiles (softmax_1pass), an index
# divisor (gqa), a recurrence over the sequence (gla_recurrent), shifted reads (eca), and
# the window's tile bounds. fp16 takes bf16's code path with another element type. CI's
# time: all of it for every example was a third of the suite's.
ALL_KERNELS = {"causal_softmax", "softmax_1pass", "gqa", "gla_recurrent", "eca"}
SHARDS = 4


def _stem(path) -> str:
    return path.stem if hasattr(path, "stem") else "sliding_window"


# The covering modules first, so that the shards take one or two each (they compile
# four dtypes and two load paths: three of them in one shard made it twice the others).
MODULES = sorted([*EXAMPLES, WINDOW],
                 key=lambda p: _stem(p) not in ALL_KERNELS | {"sliding_window"})


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_example_kernel_compiles_for_sm90(shard, tmp_path):
    """The modules in four shards of six or seven: the workers share them out, and each
    shard starts Python, torch and Triton once."""
    paths = MODULES[shard::SHARDS]
    modules = [str(compile_to_file(path, tmp_path / "modules")) for path in paths]
    fused = {m: len(re.findall(r"^\s*def \w+_fused\(", open(m).read(), re.M)) for m in modules}
    # A module without a fused schedule (stick_breaking: it says why) runs its unfused one.
    whole = [m for m, p in zip(modules, paths)
             if _stem(p) in ALL_KERNELS | {"sliding_window"} or not fused[m]]
    fused_only = [m for m in modules if m not in whole]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")   # compile, not a cache hit
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" /
                                                 "compile_for_gpu.py"), *whole,
                             "--fused-only", *fused_only],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.endswith(" ok")]
    # Every fused kernel of every module compiled for bf16 inputs, for fp32 and fp16 too in
    # the covering modules (those with TMA loads once with them and once through pointers).
    assert sum(1 for m in modules if fused[m]) >= len(modules) - 1
    for module in modules:
        name = module.rsplit("/", 1)[-1]
        forms = {(line.split()[1], line.split()[2]) for line in lines
                 if "_fused " in line and line.startswith(name)}
        assert len(forms) == (3 if module in whole else 1) * fused[module], name
    if any("causal_softmax" in m for m in modules):
        assert any(" tma " in line for line in lines) and any(" ptr " in line for line in lines)
    for module in whole:              # the unfused kernels too
        name = module.rsplit("/", 1)[-1]
        assert any("__kernel " in line and line.startswith(name) for line in lines), name
    assert "failures 0" in result.stdout
