"""Attention benchmarks: einsumattn's generated kernels against PyTorch's in one run.

    python benchmarks/attention.py                       # GPU: the DESIGN.md shapes
    python benchmarks/attention.py --smoke --device cpu  # a seconds-long check of the script
    python benchmarks/attention.py --train               # forward + backward (training)

`--train` times one training step instead of the forward: the call and the gradients of
Q, K and V for a fixed cotangent (torch.autograd.grad), for einsumattn modules compiled
with `train=True` (the backward's kernels, docs/gradients.md) and the peers' autograd;
TFLOP/s then count the forward's FLOPs times 3.5 (the backward's five products per score
against the forward's two, as FlashAttention counts them), and the check compares dQ.

For each spec and shape it times, on the same inputs: the fused Triton kernel
(backend="triton"), the unfused schedule (small sizes only), and the peers that compute
the same thing: torch.nn.functional.scaled_dot_product_attention (causal flag where the
spec is causal), FlexAttention when torch provides it, and the forward of Triton's
fused-attention tutorial (the kernel issue 12's targets name; its file from the shared
sm90 tool, at its own configuration for the head dim, on sequences a multiple of its row
tile). It reports milliseconds,
TFLOP/s (4*B*H*P*M*D multiply-adds counted as FLOPs, halved for causal masks) and the
ratio of each einsumattn backend to the best peer in the same run, with the device,
shapes and dtype, as a Markdown table (and JSON with --json).

Every einsumattn result is first checked against the peer's output (max |diff| is
reported); a benchmark of a wrong kernel is worse than none.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import einsumattn  # noqa: E402

# spec -> (is causal, the SDPA call that computes it)
SPECS = {
    "softmax_3pass": False,
    "softmax_1pass": False,
    "causal_softmax": True,
    "sigmoid_attention": None,   # no SDPA equivalent: timed without a peer
}


def timed(fn, device: str, repeats: int) -> float:
    """Milliseconds per call (median)."""
    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=5, rep=repeats * 10))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def peers(name: str, q, k, v, causal):
    """Functions computing the spec with PyTorch's own kernels."""
    found = {}
    if causal is None:
        return found
    scale = q.shape[-1] ** -0.5
    found["torch SDPA"] = lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal, scale=scale)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        if q.is_cuda:
            block_mask = None
            if causal:
                block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None,
                                               q.shape[-2], k.shape[-2], device=q.device)
            compiled = torch.compile(flex_attention)
            found["FlexAttention"] = lambda: compiled(q, k, v, block_mask=block_mask,
                                                      scale=scale)
    except Exception:  # noqa: BLE001 - a peer that cannot run is reported as absent
        pass
    return found


# Triton's fused-attention tutorial, the kernel issue 12's speed targets are set against:
# its forward kernels as the shared sm90 tool keeps them (ref_attn.py, MIT licence, loaded
# from there, not copied here; the GPU run carries it in .peers/: benchmarks/gpu_run.sh).
TUTORIAL = [ROOT / ".peers" / "ref_attn.py",
            ROOT.parent / "shared" / "tools" / "sm90" / "ref_attn.py"]
# (BLOCK_M, BLOCK_N, num_warps, num_stages) per head dim: the tutorial's Hopper choices
TUTORIAL_CONFIGS = {64: (128, 64, 4, 3), 128: (128, 128, 8, 3)}


def tutorial_peer(q, k, v, causal, path=None):
    """The tutorial's forward on these inputs (its Hopper TMA kernel where the GPU has
    TMA, else its pointer kernel), at its own configuration for the head dim; None where
    it cannot run: its file is not found, no Triton, a head dim it has no configuration
    for, a sequence not a multiple of its row tile (it does not mask), or a causal mask
    with queries and keys of different lengths."""
    found = next((p for p in ([path] if path else TUTORIAL) if p and pathlib.Path(p).exists()),
                 None)
    b, h, n, d = q.shape
    if found is None or d not in TUTORIAL_CONFIGS or k.shape[-2] != n:
        return None
    block_m, block_n, warps, stages = TUTORIAL_CONFIGS[d]
    if n % block_m:
        return None
    try:
        import importlib.util
        import triton
        import triton.language as tl
        spec = importlib.util.spec_from_file_location("einsumattn_bench_tutorial", found)
        tutorial = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tutorial)
        from triton.tools.tensor_descriptor import TensorDescriptor
    except Exception:  # noqa: BLE001 - a peer that cannot load is reported as absent
        return None
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    stats = torch.empty(b, h, n, device=q.device, dtype=torch.float32)
    scale, stage = d ** -0.5, 3 if causal else 1
    grid = (n // block_m, b * h, 1)
    meta = dict(HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, STAGE=stage,
                num_warps=warps, num_stages=stages)
    tma = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
    if tma:
        def descriptor(t, rows):
            return TensorDescriptor(t, shape=[b * h * n, d], strides=[d, 1],
                                    block_shape=[rows, d])
        dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(q.dtype)
        if dtype is None:
            return None
        descriptors = (descriptor(q, block_m), descriptor(k, block_n),
                       descriptor(v, block_n), descriptor(out, block_m))

        def call():
            tutorial._attn_fwd_tma[grid](scale, stats, b, h, *descriptors, n, DTYPE=dtype,
                                         **meta)
            return out
    else:
        def call():
            tutorial._attn_fwd[grid](q, k, v, scale, stats, out, *q.stride(), *k.stride(),
                                     *v.stride(), *out.stride(), b, h, N_CTX=n, **meta)
            return out
    return call


def run(args, emit=lambda row: None) -> list[dict]:
    """Time every spec, shape and backend; `emit` sees each row as soon as it is timed
    (a run stopped by a time limit still leaves what it measured)."""
    rows = []
    device = args.device
    dtype = getattr(torch, args.dtype)
    for name in args.specs:
        causal = SPECS[name]
        module = einsumattn.compile(ROOT / "examples" / f"{name}.attn", backend="torch",
                                    train=args.train)
        cls = getattr(module, module.__all__[0])
        for seq in args.seq:
            b, h, d = args.batch, args.heads, args.head_dim
            gen = torch.Generator(device="cpu").manual_seed(0)
            q, k, v = (torch.randn(b, h, seq, d, generator=gen).to(device=device, dtype=dtype)
                       .requires_grad_(args.train) for _ in range(3))
            flops = 4 * b * h * seq * seq * d * (0.5 if causal else 1.0) * \
                (3.5 if args.train else 1.0)
            cotangent = torch.randn(b, h, seq, d, generator=gen).to(device=device,
                                                                     dtype=dtype)
            candidates = {}
            backends = ["torch"] if device == "cpu" and not args.interpret else []
            if device == "cuda" or args.interpret:
                backends = ["triton"] + (["triton-unfused"] if seq <= args.unfused_max else [])
                # The scheduled torch backend is the path where Triton is missing (MPS,
                # ROCm without it): on a GPU its row shows what that path costs there.
                backends += ["torch"] if device == "cuda" and seq <= args.torch_max else []
            for backend in backends:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    layer = cls(backend=backend)
                candidates[f"einsumattn {backend}"] = (lambda layer=layer: layer(q, k, v))
                if backend == "triton":
                    for tune in args.tune:
                        candidates[f"einsumattn triton {tune}"] = tuned(
                            ROOT / "examples" / f"{name}.attn", module, tune, (q, k, v))
            references = peers(name, q, k, v, causal)
            tutorial = None if causal is None or args.train or \
                not (device == "cuda" or args.interpret) else tutorial_peer(q, k, v, causal)
            if tutorial is not None:
                references["Triton tutorial"] = tutorial
            if args.train:
                references = {label: training_step(fn, (q, k, v), cotangent)
                              for label, fn in references.items()}
                candidates = {label: training_step(fn, (q, k, v), cotangent)
                              for label, fn in candidates.items()}
            expected = next(iter(references.values()))() if references else None
            timed_rows = {}
            # The peers first, so that each of our rows has its ratio when it is printed
            # (a peer's own ratio, against the best of them, once every peer has run).
            for label, fn in {**references, **candidates}.items():
                out = fn()
                diff = float((out.float() - expected.float()).abs().max()) \
                    if expected is not None else None
                ms = timed(fn, device, args.repeats)
                row = {"spec": name, "seq": seq, "batch": b, "heads": h, "head_dim": d,
                       "dtype": args.dtype, "device": device_name(device, args.interpret),
                       "step": "forward+backward" if args.train else "forward",
                       "backend": label, "ms": ms, "tflops": flops / ms / 1e9,
                       "max_diff_vs_peer": diff}
                best_peer = min((timed_rows[p]["ms"] for p in references if p in timed_rows),
                                default=None)
                if best_peer and label not in references:
                    row["vs_best_peer"] = best_peer / ms
                timed_rows[label] = row
                rows.append(row)
                emit(row)
            best_peer = min((timed_rows[p]["ms"] for p in references), default=None)
            for label in references:
                timed_rows[label]["vs_best_peer"] = best_peer / timed_rows[label]["ms"]
    return rows


def training_step(forward, inputs, cotangent):
    """One training step of `forward`: its output's vector-Jacobian product with
    `cotangent`, the gradient of the first input returned (what the check compares)."""
    def step():
        out = forward()
        return torch.autograd.grad(out, inputs, cotangent)[0]
    return step


# Triton's launch options, which any kernel takes; the block sizes are each kernel's own.
LAUNCH_OPTIONS = ("num_warps", "num_stages")


class TuneError(ValueError):
    """A --tune variant that names no safe knob of the spec's fused kernels."""


def tuned(path, module, tune: str, inputs):
    """A call of the fused kernels in the variant `tune` ("p__BLOCK=64,num_warps=8"): the
    block sizes TUNING_FUSED lists and Triton's num_warps / num_stages override the
    module's tables (restored after each call): the key tile of the split the online
    rewrite makes (m0__BLOCK) is one of them; `tile=N` compiles the spec with N as that
    split's default instead. A knob the kernels do not have, a spec's own split factor,
    or a value the kernels refuse, is a TuneError."""
    overrides = {}
    for item in tune.split(","):
        key, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise TuneError(f"--tune {tune}: write KNOB=INTEGER pairs separated by commas, "
                            f"e.g. p__BLOCK=128,num_warps=8")
        overrides[key.strip()] = int(value)
    if "tile" in overrides:
        module = einsumattn.compile(path, backend="torch", tile=overrides.pop("tile"))
    # The knobs the schedule says may be tuned (a split the spec writes fixes its tile).
    schedule = module.SCHEDULE["kernels"]
    knobs = {name for kernel in schedule for name, knob in kernel["knobs"].items()
             if not knob["fixed"]} | set(LAUNCH_OPTIONS)
    fixed = sorted((name, knob["constraint"]) for kernel in schedule
                   for name, knob in kernel["knobs"].items()
                   if knob["fixed"] and name in overrides)
    if fixed:
        name, constraint = fixed[0]
        raise TuneError(f"--tune {tune}: {name} is {constraint}, fixed when the module was "
                        f"generated; for another key tile use tile=N")
    unknown = sorted(set(overrides) - knobs)
    if unknown:
        raise TuneError(f"--tune {tune}: {path.stem}'s fused kernels have no knob "
                        f"{unknown[0]}; they have {', '.join(sorted(knobs))} and tile=N")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = getattr(module, module.__all__[0])(backend="triton")

    def call():
        saved = {name: dict(table) for name, table in module.TUNING_FUSED.items()}
        try:
            for table in module.TUNING_FUSED.values():
                table.update({k: v for k, v in overrides.items()
                              if k in table or k in LAUNCH_OPTIONS})
            return layer(*inputs)
        finally:
            for name, table in saved.items():
                module.TUNING_FUSED[name] = table

    try:
        call()            # the kernels check their tiles: refused values stop here
    except ValueError as error:          # the host's check of a split's key tile
        raise TuneError(f"--tune {tune}: {error} (here: tile=N)") from None
    except (AssertionError, *triton_error()) as error:    # a kernel's tl.static_assert
        raise TuneError(f"--tune {tune}: {refusal(error)}") from None
    return call


def refusal(error: BaseException) -> str:
    """The sentence of a kernel's refusal. The interpreter's error starts with it; the
    compiler's (a CompilationError) starts with a source location and an excerpt and
    holds the sentence as its error_message, or in the error it was raised from."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        message = getattr(error, "error_message", None)
        if message:
            return str(message).strip().splitlines()[0]
        if not hasattr(error, "node"):             # not a CompilationError
            lines = [line for line in str(error).splitlines() if line.strip()]
            return lines[0] if lines else type(error).__name__
        error = error.__cause__ or error.__context__
    return "the kernel refused it"


def triton_error():
    """The error Triton raises for a failed tl.static_assert (a tile a kernel refuses)."""
    try:
        from triton.runtime.errors import InterpreterError
        from triton.compiler.errors import CompilationError
        return (InterpreterError, CompilationError)
    except ImportError:
        return ()


def device_name(device: str, interpret: bool) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{device} (Triton kernels in the interpreter)" if interpret else device


HEAD = ("| spec | seq | B x H x D | dtype | backend | ms | TFLOP/s | speed vs best peer "
        "| max diff vs peer |\n|---|---|---|---|---|---|---|---|---|")


def markdown_row(r: dict) -> str:
    ratio = f"{r['vs_best_peer']:.2f}x" if r.get("vs_best_peer") else "-"
    diff = f"{r['max_diff_vs_peer']:.2e}" if r["max_diff_vs_peer"] is not None else "-"
    return (f"| {r['spec']} | {r['seq']} | {r['batch']}x{r['heads']}x{r['head_dim']} "
            f"| {r['dtype']} | {r['backend']} | {r['ms']:.3f} | {r['tflops']:.2f} "
            f"| {ratio} | {diff} |")


def markdown(rows: list[dict]) -> str:
    lines = [HEAD, *map(markdown_row, rows)]
    return (f"Device: {rows[0]['device']}; timed: {rows[0]['step']}\n\n" + "\n".join(lines) +
            "\n") if rows else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--seq", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float16",
                        choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--unfused-max", type=int, default=2048,
                        help="largest sequence for the (slow) unfused schedule")
    parser.add_argument("--torch-max", type=int, default=4096,
                        help="on a GPU, the largest sequence to time backend='torch' at")
    parser.add_argument("--interpret", action="store_true",
                        help="on the CPU, also run the Triton kernels in the interpreter")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repeat: checks that the script runs")
    parser.add_argument("--tune", nargs="*", default=[],
                        help="extra fused-kernel variants to time, e.g. p__BLOCK=64,num_warps=4 "
                             "p__BLOCK=128,num_warps=8,tile=128: the block sizes in "
                             "TUNING_FUSED (p__BLOCK; the key tile: m__BLOCK, or m0__BLOCK "
                             "of the split the rewrite makes), num_warps, num_stages, and "
                             "tile=N (that split's default tile: a recompilation)")
    parser.add_argument("--train", action="store_true",
                        help="time forward + backward (modules compiled with train=True)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--progress", action="store_true",
                        help="print each row to stderr as soon as it is timed")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seq, args.batch, args.heads, args.head_dim, args.repeats = [32], 1, 2, 16, 1
        args.dtype = "float32"
    if args.progress:
        print(f"Device: {device_name(args.device, args.interpret)} (rows as timed)\n\n{HEAD}",
              file=sys.stderr, flush=True)
    progress = (lambda row: print(markdown_row(row), file=sys.stderr, flush=True)) \
        if args.progress else (lambda row: None)
    try:
        rows = run(args, progress)
    except TuneError as error:
        print(f"attention.py: {error}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
