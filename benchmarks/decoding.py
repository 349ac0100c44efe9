"""Decoding benchmark: split-KV (docs/merge.md) against the split kernel alone and
PyTorch's scaled_dot_product_attention, in one run, on decoding shapes (a few query rows
against a long KV cache).

    python benchmarks/decoding.py                          # GPU: B 4 and 16, KV 4k-64k
    python benchmarks/decoding.py --smoke --device cpu     # a check of the script

For each shape it times, on the same inputs: the module's triton backend as the host
chooses (`_kv_splits`: split-KV where the row tiles leave multiprocessors idle), the
same with one split pinned (the split kernel alone), and SDPA; each einsumattn result is
checked against SDPA's first. Columns: milliseconds (median; triton.testing.do_bench on
CUDA), the splits the host took, the KV cache's bytes read per second (K and V once:
the bound a decoding kernel meets), and the speed relative to SDPA in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import einsumattn  # noqa: E402
from einsumattn.codegen import compile_to_file  # noqa: E402
from einsumattn.codegen.compile import import_file  # noqa: E402
from attention import device_name, timed  # noqa: E402

SPEC = "softmax_3pass"          # non-causal: every cached key is seen by the new query


def _module(folder: pathlib.Path):
    path = compile_to_file(einsumattn.load(ROOT / "examples" / f"{SPEC}.attn"), folder)
    return import_file(path, f"decoding_{SPEC}")


def _splits_taken(module, call) -> int:
    """The number of programs per row tile the call launched along the keys."""
    taken = []
    original = module._kv_splits

    def recorded(*args):
        taken.append(original(*args))
        return taken[-1]
    module._kv_splits = recorded
    try:
        call()
    finally:
        module._kv_splits = original
    return taken[-1] if taken else 1


def run(args) -> list[dict]:
    folder = pathlib.Path(args.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    module = _module(folder)
    kernel = next(k["name"] for k in module.SCHEDULE["kernels"] if k["kv_splits"])
    table = module.TUNING_FUSED[kernel]
    dtype = getattr(torch, args.dtype)
    rows = []
    for batch in args.batch:
        for keys in args.kv:
            torch.manual_seed(0)
            q = torch.randn(batch, args.heads, args.queries, args.head_dim,
                            device=args.device, dtype=dtype)
            k = torch.randn(batch, args.heads, keys, args.head_dim, device=args.device,
                            dtype=dtype)
            v = torch.randn_like(k)
            peer = torch.nn.functional.scaled_dot_product_attention
            expected = peer(q, k, v)
            peer_ms = timed(lambda: peer(q, k, v), args.device, args.repeats)
            for label, pinned in args.variants:
                table["m1__SPLITS"] = pinned
                module._CONFIGS.clear()

                def call():
                    return module.softmax_3pass(q, k, v, backend="triton")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    splits = _splits_taken(module, call)
                    diff = (call().float() - expected.float()).abs().max().item()
                    ms = timed(call, args.device, args.repeats)
                table["m1__SPLITS"] = None
                kv_bytes = 2 * k.numel() * k.element_size()
                rows.append({
                    "device": device_name(args.device, args.device != "cuda"),
                    "spec": SPEC, "batch": batch, "heads": args.heads,
                    "queries": args.queries, "kv": keys, "head_dim": args.head_dim,
                    "dtype": args.dtype, "backend": label, "splits": splits, "ms": ms,
                    "kv_gb_per_s": kv_bytes / ms / 1e6, "sdpa_ms": peer_ms,
                    "vs_sdpa": peer_ms / ms, "max_diff_vs_sdpa": diff})
                print(_row(rows[-1]), flush=True)
    return rows


HEAD = ("| B x H x queries x D | KV | dtype | backend | splits | ms | KV GB/s | SDPA ms "
        "| speed vs SDPA | max diff |\n|---|---|---|---|---|---|---|---|---|---|")


def _row(r: dict) -> str:
    return (f"| {r['batch']}x{r['heads']}x{r['queries']}x{r['head_dim']} | {r['kv']} "
            f"| {r['dtype']} | {r['backend']} | {r['splits']} | {r['ms']:.3f} "
            f"| {r['kv_gb_per_s']:.0f} | {r['sdpa_ms']:.3f} | {r['vs_sdpa']:.2f}x "
            f"| {r['max_diff_vs_sdpa']:.2e} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--kv", nargs="+", type=int, default=[4096, 16384, 65536])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes in Triton's interpreter (checks the script)")
    parser.add_argument("--out-dir", default="/tmp/einsumattn-decoding")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.device != "cuda":
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("the Triton kernels run on CUDA, or on the CPU with TRITON_INTERPRET=1",
                  file=sys.stderr)
            return 2
    args.variants = [("split-KV (host's choice)", None), ("one split", 1)]
    if args.smoke:
        # The interpreter's host takes one split: two are pinned (100 keys, 2 steps).
        args.batch, args.kv, args.heads, args.head_dim, args.repeats = [1], [100], 2, 16, 1
        args.dtype = "float32"
        args.variants[0] = ("split-KV (2 pinned)", 2)
    print(HEAD, flush=True)
    rows = run(args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
