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


MODULES = [*EXAMPLES, WINDOW]
SHARDS = 4


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_example_kernel_compiles_for_sm90(shard, tmp_path):
    """The modules in four shards of four or five (about 20 s of compiling per module):
    the workers share them out, and each shard starts Python, torch and Triton once."""
    paths = MODULES[shard::SHARDS]
    modules = [str(compile_to_file(path, tmp_path / "modules")) for path in paths]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")   # compile, not a cache hit
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" /
                                                 "compile_for_gpu.py"), *modules],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.endswith(" ok")]
    # Every fused kernel of every module compiled, for fp32, fp16 and bf16 inputs (those
    # with TMA loads once with them and once through pointers).
    for module in modules:
        fused = len(re.findall(r"^\s*def \w+_fused\(", open(module).read(), re.M))
        assert fused >= 1                 # every example fuses (some into several stages)
        name = module.rsplit("/", 1)[-1]
        forms = {(line.split()[1], line.split()[2]) for line in lines
                 if "_fused " in line and line.startswith(name)}
        assert len(forms) == 3 * fused, name
    if any("causal_softmax" in m for m in modules):
        assert any(" tma " in line for line in lines) and any(" ptr " in line for line in lines)
    assert "failures 0" in result.stdout
