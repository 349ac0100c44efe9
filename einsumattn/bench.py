"""`einsumattn bench spec.attn`: the compiled module timed against the peers that compute
the same thing, over a sweep of sequence lengths, on the current device.

Peers, each kept only where it agrees with the module on the sweep's first length
(a benchmark of a different computation is worse than none):
- SDPA (`torch.nn.functional.scaled_dot_product_attention`), plain and causal, for a
  spec whose inputs are query, key and value (grouped-query heads included);
- FlexAttention (on a GPU, compiled), plain, causal, and soft-capped where the spec has
  a `cap` param;
- flash-linear-attention's chunked GLA, where installed, for a gated recurrence of a
  query, key, value and gate;
- einsumattn's own straight-line reference (the spec as written, in torch), always. Results: a Markdown table, JSON, and a PNG
plot (time and TFLOP/s against the length, one line per implementation) when
matplotlib is installed. docs/bench.md says more.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

# Sizes of the ranks the sweep does not set (override with --shape), by rank name; any
# other rank gets OTHER_SIZE.
DEFAULT_SIZES = {"B": 1, "H": 8, "KH": 2, "E": 64, "F": 64, "D": 64, "C": 64}
OTHER_SIZE = 16
# Ranks the sweep sets to each length: the sequence ranks of the examples.
SEQUENCE_RANKS = ("P", "M", "T", "N")


@dataclass
class Implementation:
    name: str
    peer: bool                       # False: einsumattn's compiled backend
    call: Callable
    note: str = ""


@dataclass
class Result:
    """What `run` measured: rows of (length, implementation, ms, TFLOP/s, GB/s)."""
    spec: str
    attention: str
    device: str
    dtype: str
    sizes: dict
    lengths: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def data(self) -> dict:
        return {"spec": self.spec, "attention": self.attention, "device": self.device,
                "dtype": self.dtype, "sizes": self.sizes, "lengths": self.lengths,
                "notes": self.notes, "rows": self.rows}


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    import os
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sizes_at(cascade, length: int, given: dict) -> dict:
    """The sizes of the spec's drawn ranks at one length of the sweep."""
    from .verify import drawn_ranks

    return {r: given.get(r, length if r in SEQUENCE_RANKS else
                         DEFAULT_SIZES.get(r, OTHER_SIZE)) for r in drawn_ranks(cascade)}


def inputs_at(cascade, sizes: dict, dtype: str, device: str) -> list:
    from .verify import Case, case_inputs

    return list(case_inputs(cascade, Case(sizes, dtype, 1.0, True, 0), device).values())


def _qkv_roles(module) -> bool:
    """Whether the spec's inputs are exactly a query, key and value of 4 ranks each
    (batch, heads, sequence, head dim): what SDPA and FlexAttention take."""
    ranks = list(module.INPUT_RANKS.values())
    return len(ranks) == 3 and all(len(r) == 4 for r in ranks)


def _fla_peers(module, cascade) -> list[Implementation]:
    """flash-linear-attention's chunked GLA kernel, where installed, for a recurrence
    whose inputs are a query, key, value and a gate of four ranks (batch, heads, time,
    features): fla takes log-space decays, and which function of the gate input the spec
    decays by is decided by agreement (the gate itself, log-sigmoid, or GLA's
    log-sigmoid / 16)."""
    ranks = list(module.INPUT_RANKS.values())
    if not (any(e.iterative is not None for e in cascade.einsums) and len(ranks) == 4
            and all(len(r) == 4 for r in ranks)):
        return []
    try:
        from fla.ops.gla import chunk_gla
    except Exception:           # noqa: BLE001 - not installed, or not for this platform
        return []
    import torch.nn.functional as F

    def gla(decay):
        def call(q, k, v, gate):
            to_fla = [t.transpose(1, 2).contiguous() for t in (q, k, v, decay(gate))]
            return chunk_gla(*to_fla)[0].transpose(1, 2)
        return call

    return [Implementation(f"fla chunk_gla ({name})", True, gla(decay))
            for name, decay in (("log gates", lambda g: g),
                                ("logsigmoid", F.logsigmoid),
                                ("logsigmoid / 16", lambda g: F.logsigmoid(g) / 16))]


def peers(module, cascade, device: str) -> list[Implementation]:
    """The candidate peers of a spec (each checked for agreement before it is timed)."""
    import torch
    import torch.nn.functional as F

    candidates = [Implementation("reference", True,
                                 lambda *x: module.reference(*x),
                                 "einsumattn's straight-line torch (the spec as written)")]
    candidates += _fla_peers(module, cascade)
    if not _qkv_roles(module):
        return candidates
    scale_default = "scale" in module.PARAMS

    def sdpa(causal):
        def call(q, k, v):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
        return call

    candidates += [Implementation("SDPA", True, sdpa(False)),
                   Implementation("SDPA causal", True, sdpa(True))]
    if device == "cuda":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError:         # pragma: no cover - depends on torch
            return candidates
        compiled = torch.compile(flex_attention, dynamic=False)

        def flex(causal, score_mod=None):
            def call(q, k, v):
                mask = create_block_mask(lambda b, h, p, m: m <= p, None, None,
                                         q.shape[2], k.shape[2]) if causal else None
                return compiled(q, k, v, score_mod=score_mod, block_mask=mask,
                                enable_gqa=k.shape[1] != q.shape[1])
            return call

        candidates += [Implementation("FlexAttention", True, flex(False)),
                       Implementation("FlexAttention causal", True, flex(True))]
        if scale_default:
            cap = _constant_param(cascade, "cap")
            if cap is not None:
                def softcap(score, b, h, p, m):
                    return cap * torch.tanh(score / cap)
                candidates.append(Implementation("FlexAttention softcap", True,
                                                 flex(False, softcap)))
    return candidates


def _constant_param(cascade, name: str) -> float | None:
    """A param's default where the spec gives a number (`param cap = 50`)."""
    from .ir import expr as ir

    param = cascade.params.get(name)
    default = param.default if param is not None else None
    return float(default.value) if isinstance(default, ir.Const) else None


def timed(call, inputs, device: str, repeats: int) -> float:
    """Milliseconds per call: Triton's do_bench on a GPU, else the median of `repeats`
    calls after one warm-up."""
    import torch

    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(lambda: call(*inputs), warmup=10,
                                             rep=max(20, repeats * 10)))
    with torch.no_grad():
        for _ in range(3):                  # warm-up: lazy initialisation, caches
            call(*inputs)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(*inputs)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _agrees(got, want, dtype: str) -> tuple[bool, float]:
    # float32: both sides sum in float32 in different orders (relative 1e-5 at these
    # lengths); 16-bit: inputs and outputs rounded to 8/11 bits (2**-8 relative) and
    # P rounded before P V in the fused kernels: 2e-2 of values of magnitude about 1.
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    got, want = got.float(), want.float()
    error = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, want.abs().max().item() if want.numel() else 0.0)
    return bool(error <= tolerance * scale and got.shape == want.shape), error


def run(spec: str, lengths: list[int], *, given: dict | None = None, dtype: str | None = None,
        device: str | None = None, repeats: int = 5, progress: bool = False) -> Result:
    """Time the compiled spec and its agreeing peers at each length. `progress`: show a
    bar on a terminal (einsumattn.progress) saying what is being timed."""
    import torch

    from .analysis.cost import analyse_cost
    from .codegen import compile as compile_spec
    from .loader import load
    from .progress import bar

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    cascade = load(spec)
    module = compile_spec(spec)
    given = dict(given or {})
    result = Result(spec=str(spec), attention=cascade.name, device=device_name(device),
                    dtype=dtype, sizes=sizes_at(cascade, lengths[0], given) | {
                        r: "length" for r in SEQUENCE_RANKS
                        if r in sizes_at(cascade, lengths[0], given) and r not in given},
                    lengths=list(lengths))
    ours = [Implementation(f"einsumattn {b}", False,
                           (lambda backend: lambda *x: getattr(module, module.__all__[1])(
                               *x, backend=backend))(b))
            for b in (("triton", "torch") if device == "cuda" else ("torch",))]
    if device != "cuda":
        result.notes.append("backend triton: not timed without a GPU (Triton's interpreter "
                            "is not a timing); FlexAttention: timed on GPUs only (unfused "
                            "without torch.compile on the CPU)")
    if any(e.iterative is not None for e in cascade.einsums) and \
            importlib.util.find_spec("fla") is None:
        result.notes.append("flash-linear-attention: the peer for linear recurrences, "
                            "not installed")
    cost = analyse_cost(cascade, torch.finfo(getattr(torch, dtype)).bits // 8)
    candidates = peers(module, cascade, device)
    implementations = ours + candidates
    # Agreement on the first length: ours against the reference, the peers against ours.
    sizes = sizes_at(cascade, lengths[0], given)
    inputs = inputs_at(cascade, sizes, dtype, device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _single(candidates[0].call(*inputs))
        kept = []
        for implementation in implementations:
            try:
                got = _single(implementation.call(*inputs))
            except Exception as error:  # noqa: BLE001 - a peer that cannot run this
                if not implementation.peer:
                    raise
                message = (str(error).splitlines() or [""])[0][:80]
                result.notes.append(f"{implementation.name}: cannot run here "
                                    f"({type(error).__name__}: {message})")
                continue
            ok, error = _agrees(got, want, dtype)
            if ok:
                kept.append(implementation)
            elif implementation.peer:
                result.notes.append(f"{implementation.name}: computes something else "
                                    f"(max |diff| {error:.3g}), not timed")
            else:
                raise AssertionError(f"{implementation.name} disagrees with the reference "
                                     f"(max |diff| {error:.3g}); run einsumattn check")
    with bar(len(lengths) * len(kept) if progress else 0, f"{cascade.name}: bench",
             **({} if progress else {"stream": _NOT_A_TERMINAL})) as steps:
        for length in lengths:
            _time_length(result, cascade, cost, kept, length, given, dtype, device, repeats,
                         steps)
    return result


class _NotATerminal:
    def isatty(self) -> bool:
        return False


_NOT_A_TERMINAL = _NotATerminal()


def _time_length(result, cascade, cost, kept, length, given, dtype, device, repeats,
                 steps) -> None:
    """Time every kept implementation at one length; rows into `result`."""
    import torch

    sizes = sizes_at(cascade, length, given)
    inputs = inputs_at(cascade, sizes, dtype, device)
    # sizes of ranks the sweep does not draw (a split's parts) count as 1: a bound
    symbols = {s: sizes.get(str(s), 1)
               for s in cost.flops.free_symbols | cost.bytes.free_symbols}
    flops = float(cost.flops.subs(symbols))
    moved = float(cost.bytes.subs(symbols))
    for implementation in kept:
        steps.set_description(f"{cascade.name}: {implementation.name}, {length}")
        try:
            ms = timed(implementation.call, inputs, device, repeats)
        except torch.OutOfMemoryError:
            ms = math.nan
            result.notes.append(f"{implementation.name}: out of memory at {length}")
        result.rows.append({"length": length, "implementation": implementation.name,
                            "peer": implementation.peer, "ms": ms,
                            "tflops": flops / ms / 1e9 if ms == ms else math.nan,
                            "gbps": moved / ms / 1e6 if ms == ms else math.nan})
        steps.update()


def _single(outputs):
    return outputs[0] if isinstance(outputs, tuple) else outputs


def markdown(result: Result) -> str:
    """The table: per length and implementation, ms, TFLOP/s, GB/s, and each
    einsumattn backend's time over the best peer's."""
    lines = [f"# einsumattn bench: {result.attention}", "",
             f"{result.device}, {result.dtype}; sizes "
             + ", ".join(f"{r}={v}" for r, v in result.sizes.items())
             + "; TFLOP/s count the spec's dense FLOPs (masked points included), GB/s its "
               "minimum traffic (inputs read and outputs written once).", "",
             "| length | implementation | ms | TFLOP/s | GB/s | vs best peer |",
             "|---:|---|---:|---:|---:|---:|"]
    for length in result.lengths:
        rows = [r for r in result.rows if r["length"] == length]
        best = min((r["ms"] for r in rows if r["peer"] and r["ms"] == r["ms"]),
                   default=math.nan)
        for r in rows:
            ratio = "" if r["peer"] or best != best else f"{best / r['ms']:.2f}x"
            lines.append(f"| {length} | {r['implementation']} | {r['ms']:.4g} | "
                         f"{r['tflops']:.3g} | {r['gbps']:.3g} | {ratio} |")
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"


def plot(result: Result, path) -> bool:
    """Time and TFLOP/s against the length, one line per implementation, as a PNG.
    False where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dict.fromkeys(r["implementation"] for r in result.rows))
    for name in names:
        rows = [r for r in result.rows if r["implementation"] == name]
        style = "--" if rows[0]["peer"] else "-"
        left.plot([r["length"] for r in rows], [r["ms"] for r in rows], style, marker="o",
                  label=name)
        right.plot([r["length"] for r in rows], [r["tflops"] for r in rows], style,
                   marker="o", label=name)
    for axes, label in ((left, "ms per call"), (right, "TFLOP/s (dense count)")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("sequence length")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    left.set_yscale("log")
    right.legend(fontsize=8)
    figure.suptitle(f"{result.attention}: {result.device}, {result.dtype}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


__all__ = ["run", "markdown", "plot", "Result"]
