"""einsumattn.distributed: the sequence sharded over 2 and 4 processes (gloo, CPU), the
forward and the gradients against the single-process module, for causal softmax, a
sliding window with sinks, document masks, ALiBi and sigmoid attention, both strategies
and both layouts."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
import torch

from conftest import ROOT, compiled_specs

DOCUMENTS = """attention document_causal
# Causal attention within documents: DQ, DK hold each position's document id.
dims B, H, P, M, E, F
input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f], DQ[b, p], DK[b, m]
param scale = 1 / sqrt(E)
QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e] * scale where m <= p and DQ[b, p] == DK[b, m]
GM[b, h, p]    = max[m] QK[b, h, p, m]
SN[b, h, p, m] = exp(QK[b, h, p, m] - GM[b, h, p])
SD[b, h, p]    = sum[m] SN[b, h, p, m]
AV[b, h, p, f] = SN[b, h, p, m] / SD[b, h, p] * V[b, h, m, f]
output AV
"""
SPECS = {name: (ROOT / "examples" / f"{name}.attn").read_text()
         for name in ("causal_softmax", "sliding_window_sinks", "alibi",
                      "sigmoid_attention")}
SPECS["document_causal"] = DOCUMENTS
CASES = [(name, strategy, layout) for name in SPECS for strategy in ("ring", "allgather")
         for layout in ("contiguous", "balanced")]
# Linear recurrences: LASP-2 (one all-gather of the states), contiguous layout.
for name in ("gla", "gla_recurrent"):
    SPECS[name] = (ROOT / "examples" / f"{name}.attn").read_text()
    CASES.append((name, "prefix", "contiguous"))


def _global_inputs(module, seed: int) -> list[torch.Tensor]:
    """Whole inputs: 16 positions (B=2, H=2, E=4, F=3); documents of 5, 6 and 5 tokens."""
    generator = torch.Generator().manual_seed(seed)
    sizes = dict(B=2, H=2, P=16, M=16, E=4, F=3, T=16, D=4)
    values = []
    for name in module.INPUTS:
        ranks = module.MERGE["input_ranks"][name]
        if name in ("DQ", "DK"):
            values.append(torch.tensor([0] * 5 + [1] * 6 + [2] * 5).repeat(2, 1))
        else:
            values.append(torch.randn([sizes[r] for r in ranks], generator=generator))
        if name == "GK":       # gla_recurrent's log-space gates: decays below 1
            values[-1] = torch.nn.functional.logsigmoid(values[-1])
    return values


def _worker(index: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    from einsumattn.codegen.compile import import_file
    from einsumattn.distributed import Traffic, context_parallel, shard

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous",
                            rank=index, world_size=world)
    results = []
    for name, strategy, layout in CASES:
        path = pathlib.Path(folder) / "out" / f"{name}.py"
        module = import_file(path, f"distributed_{name}_{index}")
        whole = _global_inputs(module, seed=7)
        ranks = module.MERGE["input_ranks"]
        sharded = {module.MERGE["rank"], "P"}   # T for a prefix, M and P otherwise

        def cut(value, ranks_of):
            axis = next((a for a, r in enumerate(ranks_of) if r in sharded), None)
            return value if axis is None else shard(value, axis, world, index, layout)

        leaves = [x.clone().requires_grad_(x.is_floating_point()) for x in whole]
        expected = module.reference(*leaves)
        cotangent = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
        (expected * cotangent).sum().backward()
        local = [cut(x.detach(), ranks[n]).requires_grad_(x.is_floating_point())
                 for x, n in zip(whole, module.INPUTS)]
        traffic = Traffic()
        got = context_parallel(module, *local, layout=layout,
                               strategy="ring" if strategy == "prefix" else strategy,
                               traffic=traffic,
                               queries="P" if name == "sigmoid_attention" else None)
        out_ranks = module.MERGE["output_ranks"][module.OUTPUTS[0]]
        (got * cut(cotangent, out_ranks)).sum().backward()
        errors = {"out": (got - cut(expected.detach(), out_ranks)).abs().max().item()}
        for leaf, piece, n in zip(leaves, local, module.INPUTS):
            if leaf.grad is not None:
                errors[f"d{n}"] = (piece.grad - cut(leaf.grad, ranks[n])).abs().max().item()
        results.append({"case": [name, strategy, layout], "errors": errors,
                        "bytes": traffic.bytes_sent})
    (pathlib.Path(folder) / f"result{index}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    compiled_specs(folder, SPECS, "distributed", merge=True)
    return folder


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_forward_and_backward_equal_one_process(compiled, world, tmp_path):
    import torch.multiprocessing as mp

    folder = tmp_path
    (folder / "out").symlink_to(compiled / "out")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world, str(folder)), nprocs=world, join=True)
    key_bytes = 2 * 2 * 16 * (4 + 3) * 4 // world       # one process's K and V shard
    for index in range(world):
        for result in json.loads((folder / f"result{index}.json").read_text()):
            # float32 everywhere; the merged sums round in another order than the
            # single-process reference: a few ulps of values of order 1-10.
            for what, error in result["errors"].items():
                assert error < 2e-5, (result["case"], what, error, index)
            name, strategy, layout = result["case"]
            extra = 2 * 2 * 16 * 4 // world if name == "document_causal" else 0
            if strategy == "ring":   # W-1 shards of K and V (and the key-side ids)
                assert result["bytes"] == (world - 1) * (key_bytes + extra)
            if strategy == "prefix":  # one state (S and its decays P: B H D F) each
                assert result["bytes"] == 2 * 2 * 2 * 4 * 3 * 4


def test_the_documented_two_process_example_runs(tmp_path):
    import subprocess

    result = subprocess.run([sys.executable, str(ROOT / "docs" / "context_parallel_example.py")],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "EINSUMATTN_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("gradients equal one process's") == 2


def test_what_cannot_be_sharded_says_why(tmp_path):
    from einsumattn.distributed import chunk_starts, context_parallel

    found = compiled_specs(tmp_path, {name: (ROOT / "examples" / f"{name}.attn").read_text()
                                      for name in ("clipped_softmax", "gla")},
                           "unsharded", merge=True)
    with pytest.raises(ValueError, match="no merge of partial states"):
        context_parallel(found["clipped_softmax"][1], torch.zeros(1))
    with pytest.raises(ValueError, match="needs the contiguous layout"):
        context_parallel(found["gla"][1], torch.zeros(1), layout="balanced")
    with pytest.raises(ValueError, match="compile it with merge=True"):
        context_parallel(object(), torch.zeros(1))
    assert chunk_starts(16, 4, 1, "balanced") == [(2, 2), (12, 2)]
    with pytest.raises(ValueError, match="2 x 4 equal chunks"):
        chunk_starts(12, 4, 0, "balanced")
