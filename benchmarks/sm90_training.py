"""Issue 13's static H100 report of the training kernels: the forward that saves what the
backward reads, and the backward's stages, without a GPU.

    python benchmarks/sm90_training.py --out benchmarks/results/sm90-training-<date>.md
    python benchmarks/sm90_training.py --only causal_softmax --head-dims 64 \
        --set 'TUNING_FUSED.causal_softmax_backward_dQ__fused.p__BLOCK=64'

For each case (spec x head dim) it compiles the spec with `einsumattn compile --train`,
copies the module with a `TrainStep` module appended (one forward and `backward()` through
`backend="triton"`), and runs the shared tool `../shared/tools/sm90/sm90.py` on it (see
benchmarks/sm90_static.py): every kernel the step launches is compiled for sm_90a as
Triton's JIT would for bf16, B=4, H=16, N=4096, at the configuration the module chooses
for an H100. Each kernel's hot loop is scaled to one 128 x 64 tile of scores by its own
row and key tiles (read from the module's SCHEDULE), so the forward's and the backward's
norms compare per score. It cannot time anything.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sm90_static import (B, DEFAULT_SM90, H, N, ROOT, kernel_tiles,  # noqa: E402
                         provenance, run_tool, write)

CASES = {
    "causal_softmax": "examples/causal_softmax.attn",
    "softmax": "examples/softmax_3pass.attn",
    "sigmoid": "examples/sigmoid_attention.attn",
    "gqa": "examples/gqa.attn",
    "softmax_1pass": "examples/softmax_1pass.attn",
}

TRAIN_STEP = '''

# ---- appended by benchmarks/sm90_training.py: one training step through the kernels ----
CONFIG_TARGET = ("cuda", 90)


class TrainStep(torch.nn.Module):
    def forward(self, *inputs):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in inputs]
            out = globals()[__all__[0]](backend="triton")(*leaves)
            out.backward(torch.ones_like(out))
        return out
'''


def training_module(spec: Path, out: Path) -> Path:
    """`einsumattn compile --train`, then the copy with TrainStep appended."""
    subprocess.run([sys.executable, "-m", "einsumattn", "compile", str(spec), "--train", "-o",
                    str(out)], check=True, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    module = out / f"{spec.stem}.py"
    step = out / f"train_{spec.stem}.py"
    step.write_text(module.read_text() + TRAIN_STEP)
    return step


def measure(sm90: Path, module: Path, case: str, head_dim: int, sets: list[str]) -> dict:
    """The tool's JSON for one training step (the module's TrainStep sets CONFIG_TARGET)."""
    return run_tool(sm90, module, case, head_dim, ["--class", "TrainStep"], sets)


def role(kernel: str) -> str:
    for part, said in (("_saving_", "forward, saving"), ("_statistics", "backward: statistics"),
                       ("_dK_dV_", "backward: dK, dV"), ("_dQ_", "backward: dQ"),
                       ("_dK_p_dV_p_", "backward: dK, dV per query head"),
                       ("_dK__", "backward: dK, the heads of a group summed"),
                       ("_dV__", "backward: dV, the heads of a group summed")):
        if part in kernel:
            return said
    return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--sm90", type=Path,
                        default=Path(os.environ.get("EINSUMATTN_SM90", DEFAULT_SM90)))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows, facts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.only:
            module = training_module(ROOT / CASES[case], Path(tmp) / case)
            knobs = kernel_tiles(module.with_name(module.name.removeprefix("train_")))
            for head_dim in args.head_dims:
                print(f"  {case} d{head_dim} ...", file=sys.stderr, flush=True)
                for row in measure(args.sm90, module, case, head_dim, args.set)["rows"]:
                    row_knob, key_knob = knobs.get(row["kernel"], (None, None))
                    constants = row.get("constexprs") or {}
                    loop = (row.get("hot_loop") or {}).get("len")
                    per_tile = None
                    # A kernel without products (the statistics: a sum per row) is
                    # memory-bound: its loop has no score tile to count per.
                    if loop and row["mma"] != "none" and row_knob in constants and \
                            key_knob in constants:
                        scores = int(constants[row_knob]) * int(constants[key_knob])
                        per_tile = round(loop * row["num_warps"] * 8192 / scores)
                        row_tile = f"{constants[row_knob]} x {constants[key_knob]}"
                    else:
                        row_tile = "?"
                    rows.append((case, head_dim, row, row_tile, per_tile))
                    facts.append({"case": case, "head_dim": head_dim, "role": role(row["kernel"]),
                                  "norm_128x64": per_tile, **row})
    write(report(rows, args), facts, args)
    return 0


def report(rows: list, args) -> str:
    commit, triton_version = provenance()
    lines = [
        f"# Static sm_90a report of the training kernels (no GPU), {datetime.date.today()}",
        "",
        f"`einsumattn compile --train` modules, one training step (forward and backward through "
        f"backend='triton') compiled for the H100 by `{args.sm90.name}` (Triton "
        f"{triton_version}), bf16, B={B}, H={H}, N={N}, commit {commit}.",
        "",
        "    python benchmarks/sm90_training.py " + " ".join(
            [f"--only {' '.join(args.only)}" if args.only != list(CASES) else "",
             *(f"--set '{s}'" for s in args.set)]).strip(),
        "",
        "Configuration: the one each module chooses for an H100" +
        (f", with {', '.join(args.set)}" if args.set else "") + ". norm: hot-loop SASS "
        "instructions x warps per 128 x 64 tile of scores, each kernel scaled by its own tiles "
        "(lower is better). The backward does five products per score where the forward "
        "does two, so its kernels' norms are not held to the forward's.",
        "",
        "| case | d | kernel | role | tile (rows x keys), w, s | mma | regs | spills st/ld "
        "| smem B | loop | norm | exp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, head_dim, row, tile, norm in rows:
        lines.append(
            f"| {case} | {head_dim} | {row['kernel']} | {role(row['kernel'])} | {tile}, "
            f"{row['num_warps']}, {row['num_stages']} | {row['mma']} | {row['regs']} | "
            f"{row['spill_store']}/{row['spill_load']} | {row['smem']} | "
            f"{(row.get('hot_loop') or {}).get('len', '-')} | {norm if norm else '-'} | "
            f"{row.get('exp') or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
