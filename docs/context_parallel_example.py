"""Causal softmax attention with its sequence sharded over two processes (gloo, CPU).

    python docs/context_parallel_example.py

Each process holds half of the sequence (the balanced layout: one early and one late
quarter) of Q, K and V; the ring passes the key shards around. The result and the
gradients equal the single-process module's (tests/test_distributed.py runs this file).
"""

import os
import pathlib
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import einsumattn
from einsumattn.distributed import context_parallel, shard

SPEC = pathlib.Path(__file__).resolve().parent.parent / "examples" / "causal_softmax.attn"
WORLD = 2


def main(index: int, rendezvous: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=index,
                            world_size=WORLD)
    module = einsumattn.compile(SPEC, merge=True)
    torch.manual_seed(0)                      # the same whole tensors in every process
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))

    # This process's shards of the sequence (axis 2: P for Q, M for K and V).
    local = [shard(x, 2, WORLD, index, "balanced").requires_grad_() for x in (q, k, v)]
    out = context_parallel(module, *local, strategy="ring", layout="balanced")
    out.sum().backward()

    # The same on one process, for comparison.
    whole = [x.clone().requires_grad_() for x in (q, k, v)]
    expected = module.reference(*whole)
    expected.sum().backward()
    assert torch.allclose(out, shard(expected, 2, WORLD, index, "balanced"), atol=1e-5)
    for piece, full in zip(local, whole):
        assert torch.allclose(piece.grad, shard(full.grad, 2, WORLD, index, "balanced"),
                              atol=1e-5)
    print(f"process {index}: output {tuple(out.shape)} and gradients equal one process's")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("EINSUMATTN_CACHE_DIR", tempfile.mkdtemp())
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(main, args=(os.path.join(folder, "rendezvous"),), nprocs=WORLD)
    sys.exit(0)
