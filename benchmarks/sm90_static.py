"""Issue 12's static H100 report: what the generated attention kernels will execute on an
sm_90a GPU, beside Triton's fused-attention tutorial, without a GPU.

    python benchmarks/sm90_static.py                                  # every case, report to stdout
    python benchmarks/sm90_static.py --out benchmarks/results/sm90-static-2026-11-30.md
    python benchmarks/sm90_static.py --only causal_softmax --head-dims 64 \
        --set 'TUNING_FUSED.*.p__BLOCK=128' --set 'TUNING_FUSED.*.num_warps=8'

For each case (spec x head dim) it compiles the spec with `einsumattn compile`, then runs
the shared tool `../shared/tools/sm90/sm90.py` (override with --sm90 or $EINSUMATTN_SM90),
which calls the module on zero-filled CPU tensors, intercepts every Triton launch, and
compiles each kernel for sm_90a exactly as Triton's JIT would for those shapes: MMA kind,
registers, spills, shared memory, and the hot loop's warp-issue slots per 128 x 64 score
tile ("norm"). The configuration is the one the module chooses for an H100 (its
`CONFIG_TARGET` set to ("cuda", 90): the host runs on the CPU); `--set` overrides it
(`TUNING_FUSED.*.p__BLOCK=64` pins a knob), for exploring.

The tutorial's figures come from the tool's reference.json (the same compiler, the same
shapes: bf16, B=4, H=16, N=4096). Each row is compared with the tutorial kernel doing the
same work per score (causal or not, the same head dim, its Hopper tile), against both its
TMA and pointer-load builds; the target uses the smaller (stricter) of the two norms:

* every attention kernel uses wgmma and does not spill;
* softmax kernels (causal: the unmasked interior loop, which the tool takes as the hot
  loop when a kernel has one) run at most 1.1x the tutorial's norm;
* sigmoid attention (no running max) at most 0.9x.

It cannot time anything: docs/codegen.md and benchmarks/attention.py say what a GPU run adds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SM90 = ROOT.parent / "shared" / "tools" / "sm90" / "sm90.py"
B, H, N = 4, 16, 4096
KV_HEADS = 4          # GQA: 4 query heads share each of 4 key/value heads

# case -> (spec file, causal?, the norm target as a multiple of the tutorial's)
CASES = {
    "causal_softmax": ("examples/causal_softmax.attn", True, 1.1),
    "softmax": ("examples/softmax_3pass.attn", False, 1.1),
    "sigmoid": ("examples/sigmoid_attention.attn", False, 0.9),
    "gqa": ("examples/gqa.attn", False, 1.1),
    "alibi": ("examples/alibi.attn", True, 1.1),
}

# The tutorial's Hopper configuration per head dim (reference.json's labels).
TUTORIAL_TILE = {64: "128x64_w4s3", 128: "128x128_w8s3"}


def inputs_for(case: str, head_dim: int) -> str:
    """The tool's --inputs: Q, K, V in BHSD layout at the report's shape."""
    kv_heads = KV_HEADS if case == "gqa" else H
    q = f"{B},{H},{N},{head_dim}"
    kv = f"{B},{kv_heads},{N},{head_dim}"
    return f"Q={q} K={kv} V={kv}"


def tutorial_rows(sm90: Path) -> dict:
    """reference.json's rows by label (ref_<tma|ptr>_d<D>_<causal|full>_<tile>)."""
    data = json.loads((sm90.parent / "reference.json").read_text())
    return {row["label"]: row for row in data["rows"]}


def tutorial_for(reference: dict, causal: bool, head_dim: int) -> dict:
    """The tutorial's TMA and pointer rows for the same work per score."""
    kind = "causal" if causal else "full"
    tile = TUTORIAL_TILE[head_dim]
    return {build: reference[f"ref_{build}_d{head_dim}_{kind}_{tile}"] for build in ("tma", "ptr")}


def compile_spec(spec: Path, out: Path) -> Path:
    """`einsumattn compile` into `out`; the generated module's path."""
    subprocess.run([sys.executable, "-m", "einsumattn", "compile", str(spec), "-o", str(out)],
                   check=True, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out / f"{spec.stem}.py"


def tile_knobs(module: Path) -> tuple[str, str]:
    """The fused kernel's row and key tile knobs, read from the module's SCHEDULE (its
    schedule as data): the tool scales each hot loop to one 128 x 64 tile by them."""
    row, key = next(iter(kernel_tiles(module).values()))
    return row, key


def kernel_tiles(module: Path) -> dict:
    """Fused kernel name -> [row tile knob, key tile knob], the training kernels' too,
    from the module's SCHEDULE, in launch order."""
    found = subprocess.run(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
         f"m = __import__({module.stem!r}); s = m.SCHEDULE; "
         "ks = list(s['kernels']) + list(s['training'].get('kernels', ())); "
         "print(json.dumps({k['name']: [k['grid']['row_tile'], k['loops'][0]['tile']] "
         "for k in ks}))", str(module.parent)],
        check=True, capture_output=True, text=True)
    return json.loads(found.stdout)


def measure(sm90: Path, module: Path, case: str, head_dim: int, sets: list[str]) -> dict:
    """The tool's JSON for one module at the report's shape."""
    # Configure as on an H100 (the host runs on the CPU, in the interpreter), unless the
    # caller pins something else.
    return run_tool(sm90, module, case, head_dim,
                    ["--tile-keys", ",".join(tile_knobs(module))],
                    ["CONFIG_TARGET=('cuda', 90)", *sets])


def run_tool(sm90: Path, module: Path, case: str, head_dim: int, options: list[str],
             sets: list[str]) -> dict:
    """sm90.py on one module at the report's shape (bf16, `inputs_for`), with `options`
    and each of `sets` as a --set: its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "facts.json"
        command = [sys.executable, str(sm90), str(module), *options,
                   "--inputs", inputs_for(case, head_dim), "--dtype", "bfloat16",
                   "--json", str(out)]
        for s in sets:
            command += ["--set", s]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"sm90.py failed on {module.name} ({case}, d{head_dim}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def verdict(row: dict, tutorial: dict, factor: float) -> tuple[float, list[str]]:
    """The row's norm over the tutorial's (the smaller of its two builds), and the targets
    it misses."""
    best = min(int(t["norm"]) for t in tutorial.values())
    ratio = row["norm"] / best if row.get("norm") else float("nan")
    misses = []
    if row["mma"] != "wgmma":
        misses.append(f"mma {row['mma']}")
    if row["spill_store"] or row["spill_load"]:
        misses.append(f"spills {row['spill_store']}/{row['spill_load']} B")
    if not ratio <= factor:
        misses.append(f"norm {ratio:.2f}x > {factor}x")
    return ratio, misses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--head-dims", nargs="+", type=int, choices=sorted(TUTORIAL_TILE),
                        default=sorted(TUTORIAL_TILE))
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="passed to sm90.py: override a module table before the call")
    parser.add_argument("--sm90", type=Path,
                        default=Path(os.environ.get("EINSUMATTN_SM90", DEFAULT_SM90)))
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write every row's facts here")
    args = parser.parse_args(argv)
    if not args.sm90.exists():
        print(f"sm90.py not found at {args.sm90}: pass --sm90 PATH or set EINSUMATTN_SM90",
              file=sys.stderr)
        return 2

    reference = tutorial_rows(args.sm90)
    rows, facts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.only:
            spec, causal, factor = CASES[case]
            module = compile_spec(ROOT / spec, Path(tmp) / case)
            for head_dim in args.head_dims:
                print(f"  {case} d{head_dim} ...", file=sys.stderr, flush=True)
                data = measure(args.sm90, module, case, head_dim, args.set)
                tutorial = tutorial_for(reference, causal, head_dim)
                for row in data["rows"]:
                    ratio, misses = verdict(row, tutorial, factor)
                    rows.append((case, head_dim, row, tutorial, ratio, factor, misses))
                    facts.append({"case": case, "head_dim": head_dim, "spec": spec,
                                  "ratio": ratio, "target": factor, "misses": misses, **row})

    write(report(rows, args), facts, args)
    return 0


def write(text: str, facts: list, args) -> None:
    """The Markdown report to --out (else stdout), every row's facts to --json."""
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1, default=str))


def provenance() -> tuple[str, str]:
    """(the commit, Triton's version) a report names."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    try:
        import triton
        return commit, triton.__version__
    except ImportError:
        return commit, "?"


def report(rows: list, args) -> str:
    commit, triton_version = provenance()
    lines = [
        f"# Static sm_90a report (no GPU), {datetime.date.today()}",
        "",
        f"Generated kernels compiled for the H100 by `{args.sm90.name}` (Triton {triton_version}, "
        f"ptxas shipped with it), bf16, B={B}, H={H}, N={N} (GQA: {KV_HEADS} key/value heads), "
        f"commit {commit}, {platform.machine()}.",
        "",
        "    python benchmarks/sm90_static.py " + " ".join(
            [f"--only {' '.join(args.only)}" if args.only != list(CASES) else "",
             *(f"--set '{s}'" for s in args.set)]).strip(),
        "",
        "Configuration: the one each module chooses for an H100 (CONFIG_TARGET = ('cuda', 90))" +
        (f", with {', '.join(args.set)}" if args.set else "") +
        ". norm: hot-loop SASS instructions x warps per 128 x 64 score tile (lower is better); "
        "vs tutorial: over the smaller norm of the tutorial's TMA and pointer builds for the "
        "same work (causal or not, same head dim, its Hopper tile).",
        "",
        "| case | d | kernel | tile (P x keys), w, s | mma | regs | spills st/ld | smem B "
        "| loop | norm | tutorial tma / ptr | vs tutorial | target | meets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, head_dim, row, tutorial, ratio, factor, misses in rows:
        # norm_basis names the tile: "len*warps per 128x64 (ROWxKEY=16x64)"
        basis = re.search(r"=(\d+)x(\d+)\)", row.get("norm_basis") or "")
        tile = f"{basis.group(1)} x {basis.group(2)}" if basis else "?"
        lines.append(
            f"| {case} | {head_dim} | {row['kernel']} | {tile}, {row['num_warps']}, "
            f"{row['num_stages']} | {row['mma']} | {row['regs']} | {row['spill_store']}/"
            f"{row['spill_load']} | {row['smem']} | {(row.get('hot_loop') or {}).get('len', '-')} "
            f"| {row.get('norm', '-')} | {tutorial['tma']['norm']} / {tutorial['ptr']['norm']} "
            f"| {ratio:.2f}x | <= {factor}x | {'yes' if not misses else 'no: ' + '; '.join(misses)} |")
    met = sum(1 for *_, misses in rows if not misses)
    lines += ["", f"{met} of {len(rows)} kernels meet every target."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
