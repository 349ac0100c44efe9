"""Context parallelism on one machine's CPUs (gloo): time per step and bytes sent per
process, against the analytic minimum, per world size.

    python benchmarks/context_parallel.py [--length 1024] [--worlds 1 2 4] [-o FILE.md]

For each spec and strategy (ring and all-gather for causal softmax, LASP-2 for GLA),
W processes each hold 1/W of the sequence (the balanced layout for softmax, contiguous
for LASP-2) and run einsumattn.distributed.context_parallel forward and backward. A step
is timed from a barrier to a barrier (the slowest process), the median of the repeats.
Bytes are what one process sent (einsumattn.distributed.Traffic), against the minimum:

- ring: (W-1) shards of K and V, i.e. (W-1)/W of the whole K and V per process;
- all-gather: the same bytes leave each process, in one collective;
- LASP-2: one state (and its decays) per process.

W = 1 is the module's own pieces on one process (no communication): the baseline the
ratios are taken against. The pieces run as torch code (module.partial, merge, finish):
the numbers measure the distribution, not kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = [("causal_softmax", "ring", "balanced"), ("causal_softmax", "allgather", "balanced"),
         ("gla", "prefix", "contiguous")]


def _inputs(module, length: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    sizes = dict(B=1, H=4, P=length, M=length, T=length, E=32, D=32, F=32)
    return [torch.randn([sizes[r] for r in module.MERGE["input_ranks"][name]],
                        generator=generator) for name in module.INPUTS]


def _worker(index: int, world: int, folder: str, length: int, repeats: int) -> None:
    import einsumattn
    from einsumattn.distributed import Traffic, context_parallel, shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous",
                            rank=index, world_size=world)
    rows = []
    for name, strategy, layout in CASES:
        module = einsumattn.compile(ROOT / "examples" / f"{name}.attn", merge=True)
        whole = _inputs(module, length)
        sharded = {module.MERGE["rank"], *module.MERGE["offsets"]}
        local = []
        for value, name_ in zip(whole, module.INPUTS):
            ranks = module.MERGE["input_ranks"][name_]
            axis = next(a for a, r in enumerate(ranks) if r in sharded)
            local.append(shard(value, axis, world, index, layout).requires_grad_())
        times, traffic = [], Traffic()
        for _ in range(repeats):
            for value in local:
                value.grad = None
            traffic = Traffic()
            dist.barrier()
            start = time.perf_counter()
            out = context_parallel(module, *local, layout=layout, traffic=traffic,
                                   strategy="ring" if strategy == "prefix" else strategy)
            out.sum().backward()
            dist.barrier()
            times.append(time.perf_counter() - start)
        key_inputs = [v for v, n in zip(local, module.INPUTS)
                      if module.MERGE["rank"] in module.MERGE["input_ranks"][n]]
        shard_bytes = sum(v.numel() * v.element_size() for v in key_inputs)
        if strategy == "prefix":
            state = module.partial(*[v.detach() for v in local], **{
                module.MERGE["start"]: 0, module.MERGE["count"]: length})
            minimum = sum(v.numel() * v.element_size() for v in state.values()) \
                if world > 1 else 0
        else:
            minimum = (world - 1) * shard_bytes
        rows.append({"spec": name, "strategy": strategy, "layout": layout,
                     "seconds": statistics.median(times), "bytes": traffic.bytes_sent,
                     "minimum": minimum})
    if index == 0:
        pathlib.Path(folder, f"world{world}.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", type=pathlib.Path)
    args = parser.parse_args()
    os.environ.setdefault("EINSUMATTN_CACHE_DIR", tempfile.mkdtemp())
    results = {}
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(_worker, args=(world, folder, args.length, args.repeats),
                     nprocs=world, join=True)
            results[world] = json.loads(pathlib.Path(folder, f"world{world}.json").read_text())
        print(f"world {world}: done", file=sys.stderr)
    lines = [f"# Context parallelism on CPU (gloo), {time.strftime('%Y-%m-%d')}", "",
             f"`python benchmarks/context_parallel.py --length {args.length} --worlds "
             f"{' '.join(map(str, args.worlds))} --repeats {args.repeats}`", "",
             f"Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs (one thread per process), torch {torch.__version__}. "
             f"Shapes: B=1, H=4, sequence {args.length}, head dims 32, float32; forward "
             f"and backward per step, median of {args.repeats}.", "",
             "| spec | strategy | layout | W | s/step | vs W=1 | bytes sent/process | "
             "analytic minimum | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["spec"], r["strategy"]): r["seconds"] for r in results.get(1, [])}
    for world, rows in results.items():
        for r in rows:
            ratio = f"{r['bytes'] / r['minimum']:.2f}" if r["minimum"] else "-"
            speed = base.get((r["spec"], r["strategy"]))
            speedup = f"{speed / r['seconds']:.2f}x" if speed else "-"
            lines.append(f"| {r['spec']} | {r['strategy']} | {r['layout']} | {world} | "
                         f"{r['seconds']:.3f} | {speedup} | {r['bytes']} | {r['minimum']} | "
                         f"{ratio} |")
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
