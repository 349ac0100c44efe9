"""The scheduled torch backend on the CPU against torch's own attention, in one run.

    python benchmarks/torch_cpu.py                          # N = 2048 and 8192
    python benchmarks/torch_cpu.py --sizes 1024 --repeats 3 # quicker
    python benchmarks/torch_cpu.py --tune 128x128 256x256   # row_block x key_tile
    python benchmarks/torch_cpu.py --tune 256x256x1         # ... x threads (row blocks)
    python benchmarks/torch_cpu.py --out benchmarks/results/torch_cpu

Causal softmax attention (examples/causal_softmax.attn), float32, B = 1, H = 8, D = 64,
torch.set_num_threads(os.cpu_count()), under torch.no_grad(). For each sequence length N
it times, interleaved repetition by repetition so that load from other processes falls
on every contender alike: backend="torch" (the scheduled backend),
torch.nn.functional.scaled_dot_product_attention(is_causal=True) (SDPA) and, where its
N x N intermediates fit (--reference-max), backend="reference". It reports the median
time of each, their ratio to SDPA's median, and the largest difference from SDPA's
output (a benchmark of a wrong result is worse than none).

Working memory is the peak resident memory during one call beyond what the process held
just before it, less the output: measured in a fresh process per backend and size
(inputs created and a tiny warm-up call made first, so that torch's kernels and thread
pool are initialised), by resetting the kernel's peak-RSS counter (`echo 5 >
/proc/self/clear_refs`) before the call and reading VmHWM from /proc/self/status after
it. It counts everything the call touches: torch's allocations, the allocator's and
BLAS's buffers, temporaries inside an operation (which a profiler's per-operation
accounting nets out). Linux only.

The load average (os.getloadavg) before and after, and OMP_WAIT_POLICY, are part of the
results: on a shared machine they say how much to trust them (spinning OpenMP threads,
the default, wait for descheduled siblings at every parallel operation).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.compile_time import cpu_name  # noqa: E402  (after ROOT is on the path)

SPEC = ROOT / "examples" / "causal_softmax.attn"
HEADS, DIM = 8, 64


def _inputs(n: int, heads: int = HEADS, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, DIM, generator=generator) for _ in range(3)]


def _load(path: pathlib.Path):
    from einsumattn.codegen.compile import import_file
    return import_file(path, f"bench_{path.stem}")


# ---------------------------------------------------------------- working memory

_MEASURE = r"""
import importlib.util, json, re, sys, torch
path, backend, n, heads, tuning, threads = sys.argv[1:7]
n, heads, threads = int(n), int(heads), int(threads)
torch.set_num_threads(threads)
def status(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024
def run(q, k, v):
    if backend == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return layer(q, k, v)
spec = importlib.util.spec_from_file_location("measured", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.TORCH_TUNING.update(json.loads(tuning))
layer = getattr(module, module.__all__[0])(backend=backend if backend != "sdpa" else "torch")
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    run(*[torch.randn(1, heads, 16, 64, generator=generator) for _ in range(3)])
    inputs = [torch.randn(1, heads, n, 64, generator=generator) for _ in range(3)]
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as counter:
        counter.write("5")                      # the peak RSS restarts from here
    out = run(*inputs)
    peak = status("VmHWM")
print(json.dumps(peak - before - out.nelement() * out.element_size()))
"""


def working_memory(path, backend: str, n: int, heads: int = HEADS,
                   tuning: dict | None = None, threads: int | None = None) -> int:
    """Bytes of working memory of one call of `backend` ("torch", "reference" or
    "sdpa") on causal attention of length n, in a fresh process (see the docstring)."""
    command = [sys.executable, "-c", _MEASURE, str(path), backend, str(n), str(heads),
               json.dumps(tuning or {}), str(threads or os.cpu_count())]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return int(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- time

def _times(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, interleaved: one call of each per round."""
    samples = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()                                      # warm-up
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def measure(module, path, n: int, repeats: int, tuning: dict, reference_max: int,
            memory: bool = True) -> dict:
    q, k, v = _inputs(n)
    module.TORCH_TUNING.update(tuning)
    scheduled = getattr(module, module.__all__[0])(backend="torch")
    reference = getattr(module, module.__all__[0])(backend="reference")
    contenders = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(
                      q, k, v, is_causal=True),
                  "torch": lambda: scheduled(q, k, v)}
    if n <= reference_max:
        contenders["reference"] = lambda: reference(q, k, v)
    with torch.no_grad():
        expected = contenders["sdpa"]()
        error = {name: float((fn() - expected).abs().max())
                 for name, fn in contenders.items() if name != "sdpa"}
        samples = _times(contenders, repeats)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    row = {"N": n, "tuning": dict(tuning),
           "median_s": medians, "samples_s": samples,
           "ratio_to_sdpa": {name: medians[name] / medians["sdpa"] for name in medians},
           "max_abs_diff_vs_sdpa": error}
    if memory:
        row["working_memory_bytes"] = {
            name: working_memory(path, name, n, tuning=tuning) for name in contenders}
    return row


def _table(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        tuning = f"{row['tuning']['row_block']}x{row['tuning']['key_tile']}"
        if row["tuning"].get("threads") is not None:
            tuning += f"x{row['tuning']['threads']}"
        for name, median in row["median_s"].items():
            memory = row.get("working_memory_bytes", {}).get(name)
            memory = f"{memory / 2**20:9.1f}" if memory is not None else f"{'-':>9}"
            diff = row["max_abs_diff_vs_sdpa"].get(name)
            lines.append(f"{row['N']:>6} {tuning:>10} {name:>10} {median * 1e3:10.1f} "
                         f"{row['ratio_to_sdpa'][name]:7.2f} {memory} "
                         f"{'' if diff is None else f'{diff:10.1e}'}")
    return lines


def _report(rows: list[dict], header: dict) -> str:
    lines = [f"# {header['command']}",
             f"# {header['machine']}; torch {header['torch']}, {header['threads']} threads",
             f"# causal softmax (examples/causal_softmax.attn), float32, B=1, H={HEADS}, "
             f"D={DIM}; median of {header['repeats']} interleaved repetitions",
             f"# load average (1, 5, 15 min) before {header['load_before']}, after "
             f"{header['load_after']}; OMP_WAIT_POLICY {header['omp_wait_policy']}",
             "",
             f"{'N':>6} {'tuning':>10} {'backend':>10} {'median ms':>10} {'x SDPA':>7} "
             f"{'work MiB':>9} {'max|diff|':>10}"] + _table(rows)
    memories = {row["N"]: row.get("working_memory_bytes", {}).get("torch") for row in rows}
    if len(memories) > 1 and None not in memories.values():
        low, high = min(memories), max(memories)
        lines.append("")
        lines.append(f"working memory of backend='torch': N={high} / N={low} = "
                     f"{memories[high] / memories[low]:.2f}")
    return "\n".join(lines) + "\n"


def _tuning(text: str) -> dict:
    """TORCH_TUNING from ROWSxKEYS[xTHREADS] (every key set: measure() updates)."""
    rows, keys, *threads = (int(part) for part in text.split("x"))
    return {"row_block": rows, "key_tile": keys, "threads": threads[0] if threads else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tune", nargs="*", metavar="ROWSxKEYS[xTHREADS]",
                        help="row_block x key_tile [x threads] variants (default: the "
                             "module's; threads default: torch.get_num_threads())")
    parser.add_argument("--reference-max", type=int, default=4096,
                        help="the largest N to run the reference at (it holds N x N "
                             "float32 scores per head several times over)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", help="write OUT.txt and OUT.json")
    args = parser.parse_args(argv)
    from einsumattn.codegen import compile_to_file
    torch.set_num_threads(os.cpu_count())
    folder = pathlib.Path(tempfile.mkdtemp())
    path = compile_to_file(SPEC, folder)
    module = _load(path)
    variants = [dict(module.TORCH_TUNING)]
    if args.tune:
        variants = [_tuning(text) for text in args.tune]
    load_before = os.getloadavg()
    rows = []
    for n in args.sizes:
        for tuning in variants:
            rows.append(measure(module, path, n, args.repeats, tuning, args.reference_max,
                                memory=not args.no_memory))
            print("\n".join(_table(rows[-1:])), flush=True)
    header = {"command": "python3 benchmarks/torch_cpu.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()} {cpu_name()}, {os.cpu_count()} CPUs",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "repeats": args.repeats,
              # Spinning OpenMP threads (the default) suffer on a loaded machine.
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (active)"),
              "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    text = _report(rows, header)
    print(text)
    if args.out:
        pathlib.Path(args.out + ".txt").write_text(text)
        pathlib.Path(args.out + ".json").write_text(json.dumps(
            {**header, "shape": {"B": 1, "H": HEADS, "D": DIM, "dtype": "float32",
                                 "spec": "examples/causal_softmax.attn"},
             "rows": rows}, indent=1) + "\n")
    return 0



if __name__ == "__main__":
    sys.exit(main())
