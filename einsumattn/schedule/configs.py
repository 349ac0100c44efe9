"""Per-shape configurations of the fused attention kernels: which row tile, key tile,
warps and pipeline stages a call launches with, by device, dtype and head dim.

A heuristic, written down as data (`RULES`, first match wins) and copied into every
generated module (`CONFIG_RULES`), whose host code picks a rule per call from the
inputs (the module imports only torch and triton, so it carries the table, not this
file). A tile the user pins in the module's `TUNING_FUSED` always wins; the autotuning
mode times `CANDIDATES` instead (docs/codegen.md, "Configurations per call").

Where the numbers come from:
* Hopper (sm_90), 16-bit inputs: Triton's fused-attention tutorial uses 128 x 64 tiles
  with 4 warps at head dim 64 and 128 x 128 or 128 x 64 with 8 warps at 128. On an H200
  (benchmarks/results/gpu-h200-2026-11-30) our kernels ran fastest at 128 rows with 8
  warps at head dim 128; they spilled at 128 x 128 then, and fit since K and V are read
  by TMA (or at addresses made before the loops): the tutorial's 128 x 128 with 8 warps.
  At head dim 64 the tutorial's 4 warps (they spilled before the dot operands stayed
  16-bit: benchmarks/results/sm90-static-2026-11-30-heuristic.md, and no longer do).
* Ampere/Ada (sm_80/sm_89): FlashAttention-2's forward tiles, 128 x 64 at head dim 64
  and 64 x 64 at 128, 4 warps, 2 stages (less shared memory than Hopper).
* float32 inputs: the dots run in IEEE float32 (never TF32): twice the registers and
  shared memory per element, so half the tiles.
* backward kernels (three or more tl.dot per key tile: `dots`): FlashAttention-2's
  backward tile, 64 x 64 with 4 warps and 2 stages, where the forward's 128 rows spill;
  at head dim 128, 32 streamed for the dK+dV kernel (four products per tile), whose two
  accumulators spill at 64 x 64.
* Triton's interpreter (the CPU): the schedule's defaults, which keep tests fast.
Rows and keys never exceed the sequence's own (a power of two, at least 16): a short
sequence or a decoding call (a few query rows) gets a small row tile, not 128 rows of
padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Rule:
    """A configuration for the calls it matches: `device` 'interpreter' (Triton's CPU
    interpreter), or 'cuda' with the GPU's compute capability >= `capability`; the
    inputs' float dtype in `dtypes`; the head dim (the largest held feature tile) at most
    `head_dim`. None for a tile: the schedule's default."""

    device: str
    capability: int            # major * 10 + minor: 90 is Hopper, 80 Ampere
    dtypes: tuple[str, ...]
    head_dim: int
    rows: int | None
    keys: int | None
    warps: int | None
    stages: int | None
    why: str
    dots: int = 0              # for kernels with at least this many tl.dot per key tile


HALF = ("float16", "bfloat16")
FLOAT = ("float32",)
ANY = HALF + FLOAT
WIDEST = 1 << 30          # any head dim

# A backward kernel (docs/gradients.md) computes three or four products per key tile
# (dQ: the scores, dP = dO V^T and dS K; dK and dV: four, with two accumulators): at the
# forward's 128 rows it spills on Hopper (sm90-training-2026-12-01-before.md), so these
# rules come first for such kernels.
BACKWARD_DOTS = 3

RULES: tuple[Rule, ...] = (
    Rule("interpreter", 0, ANY, WIDEST, None, None, None, None,
         "Triton's interpreter: the schedule's defaults (fast tests)"),
    Rule("cuda", 80, HALF, 64, 64, 64, 4, 2,
         "a backward kernel on Ampere or later, d <= 64: 64 x 64 tiles, 2 stages "
         "(FlashAttention-2's backward tile; 128 rows spill: sm90-training-*.md)",
         BACKWARD_DOTS),
    Rule("cuda", 80, HALF, 128, 64, 32, 4, 2,
         "a backward kernel with two accumulators (dK and dV: four products per tile) on "
         "Ampere or later, d <= 128: 64 rows, 32 streamed (the accumulators and the K, V "
         "tiles fill the registers: at 64 x 64 it spills 754 B on Hopper, at 64 x 32 24 B: "
         "sm90-training-*.md)",
         BACKWARD_DOTS + 1),
    Rule("cuda", 80, HALF, 128, 64, 64, 4, 2,
         "a backward kernel on Ampere or later, d <= 128: 64 x 64 (dQ fits: no spill)",
         BACKWARD_DOTS),
    Rule("cuda", 90, HALF, 64, 128, 64, 4, 3,
         "Hopper, d <= 64: the tutorial's 128 x 64 with 4 warps (no spills since the dot "
         "operands stay 16-bit; fewer issue slots than 8 warps: sm90-static-2026-11-30.md)"),
    Rule("cuda", 90, HALF, 128, 128, 128, 8, 3,
         "Hopper, d <= 128: the tutorial's 128 x 128 with 8 warps (fits in registers with "
         "TMA loads: sm90-static-2026-11-30-session23.md; 128 x 64 with 4 warps spills)"),
    Rule("cuda", 90, HALF, WIDEST, 64, 32, 8, 2, "Hopper, d > 128: registers bound the tile"),
    Rule("cuda", 80, HALF, 64, 128, 64, 4, 2, "Ampere/Ada, d <= 64: FlashAttention-2's tile"),
    Rule("cuda", 80, HALF, 128, 64, 64, 4, 2, "Ampere/Ada, d <= 128: FlashAttention-2's tile"),
    Rule("cuda", 80, HALF, WIDEST, 64, 32, 4, 2, "Ampere/Ada, d > 128"),
    Rule("cuda", 0, HALF, 128, 64, 32, 4, 2, "before Ampere: small shared memory"),
    Rule("cuda", 0, FLOAT, 64, 64, 32, 4, 2, "float32 inputs: half the 16-bit tile"),
    Rule("cuda", 0, FLOAT, 128, 32, 32, 4, 2, "float32 inputs: half the 16-bit tile"),
    Rule("cuda", 0, ANY, WIDEST, 16, 16, 4, 1, "anything else: the smallest dot tile"),
)

# The autotuning mode's candidates (rows, keys, warps, stages), timed per shape on the
# first call of a shape; those a kernel cannot take (a key tile a spec's split fixes,
# a tile above the sequence's) are skipped.
CANDIDATES: tuple[tuple[int, int, int, int], ...] = (
    (64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
    (128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 8, 4),
)


def rules_table() -> list[dict]:
    """RULES as plain literals, for the generated module (it reads them with first-match
    semantics: see `_config_rule` in templates/module.py.j2)."""
    return [asdict(rule) for rule in RULES]


def candidates_table() -> list[dict]:
    return [dict(zip(("rows", "keys", "warps", "stages"), c)) for c in CANDIDATES]
