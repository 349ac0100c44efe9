"""The fused Triton schedule: one Triton kernel for a cascade (or a stage of one), the
attention schedule where it applies, else the loop schedule. The decisions are
schedule/attention.py's and schedule/loops.py's, their statements the kernel IR that
schedule/lower_attention.py and schedule/lowering.py lower them to; this prints them
(triton_kernel.py's `printed`, with triton_ir.py's printer) and adds what only a Triton
host says: how a split's key tile binds the split's sizes (a rewrite's split: per call; a
spec's own: the check that the tile is the one in the tuning table).
"""

from __future__ import annotations

from ..ir import Cascade
from ..schedule.fused import lower_fused
from ..schedule.lowering import LoweredKernel
from ..schedule.model import Form
from ..schedule.split_kv import split_kv, state_cascade
from ..schedule.stages import NotFusable, cut_stages
from .names import spec_text
from .triton_kernel import FusedKernel, printed, printed_split_kv


def fuse(cascade: Cascade, merged=None) -> FusedKernel:
    """The fused kernel for a cascade (schedule/fused.py's choice), printed; a split
    stream's kernel with the host's check of its tile, and its split-KV form where
    `merged()` (the derived merge's parts and combine, in the kernel's names: split_kv's
    arguments; None where the state does not merge) merges its carried state."""
    lowered = lower_fused(cascade)
    checks = _split_tile_check(cascade, lowered) if lowered.schedule.form is Form.SPLIT \
        else []
    found = merged() if merged is not None and lowered.schedule.form is Form.SPLIT else None
    if found is not None:
        try:
            plan, partial, merge = split_kv(lowered, cascade, *found)
            return printed_split_kv(cascade, lowered, state_cascade(cascade, plan), plan,
                                    partial, merge, checks)
        except NotFusable:
            pass            # the kernel alone (SCHEDULE's kv_splits: None)
    return printed(cascade, lowered, checks)


def fuse_stages(cascade: Cascade, merged=None) -> tuple[list[FusedKernel], str | None]:
    """The fused kernels of a cascade: one, or the stages of schedule/stages.py's cuts
    (with split-KV where `merged` fits a stage's kernel)."""
    return cut_stages(cascade, lambda stage: fuse(stage, merged))


def _split_tile_check(cascade: Cascade, lowered: LoweredKernel) -> list[str]:
    """Host lines tying the key tile to the split: the kernel's key index is
    m1 * BLOCK_M0 + m0 over the host's M1 = ceil(M / M0) steps. A rewrite's split takes
    the tile as its M0 (any tile gives the same result: ir/cascade.py, Split.tunable); a
    spec's own split refuses a tile other than its factor."""
    schedule = lowered.schedule
    (split,) = cascade.splits           # the attention schedule takes one split
    inner = split.inner
    tile_block = schedule.loops[0].tile
    if split.tunable:
        return [f'{inner} = tuning["{tile_block}"]',
                f"{split.outer} = -(-{split.parent} // {inner})"]
    (lanes,) = (knob.default for knob in schedule.knobs if knob.name == tile_block)
    if lanes != split.factor:      # a padded tile (schedule/attention.py, padded_tile)
        return [f'if tuning["{tile_block}"] != {lanes}:',
                f'    raise ValueError(f"TUNING_FUSED[\'{schedule.name}\'][\'{tile_block}\'] is '
                f'{{tuning[\'{tile_block}\']}}, but the key tile is '
                f'{spec_text(f"the split factor {inner}")} = {split.factor} padded to '
                f'{lanes} lanes, fixed when the module was generated")']
    name = schedule.name
    entry = f"TUNING_FUSED['{name}']['{tile_block}']"
    # The message says the spec's names (names.py); {inner} is the value at run time.
    factor = spec_text(f"the split factor {inner}")
    split_text = spec_text(f"(split {split.parent} -> {split.outer}, {inner} by "
                           f"{split.factor})")
    return [f'if tuning["{tile_block}"] != {inner}:',
            f'    raise ValueError(f"{entry} is {{tuning[\'{tile_block}\']}}, but the '
            f'key tile is {factor} = {{{inner}}} of the cascade {split_text}, fixed when the '
            f'module was generated: for another tile, change the split or the tile the '
            f'online rewrite splits by (einsumattn compile --tile N)")']
