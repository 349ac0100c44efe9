"""The fused schedules' choice for a cascade (or a stage of one): the attention schedule
where it applies, else the loop schedule, lowered to the kernel IR."""

from __future__ import annotations

from ..ir import Cascade
from .lower_attention import lower_attention
from .lowering import LoweredKernel, lower_loops
from .stages import Crossing, NotFusable


def lower_fused(cascade: Cascade) -> LoweredKernel:
    """The attention schedule's kernel where it applies, else the loop schedule's;
    NotFusable with both reasons if neither does, the loop schedule's Crossing as it is
    (a value crossing program tiles: a cut can help)."""
    try:
        return lower_attention(cascade)
    except NotFusable as reason:
        attention = str(reason)
    try:
        return lower_loops(cascade)
    except Crossing:
        raise
    except NotFusable as loop:
        raise NotFusable(f"{attention} (the loop schedule: {loop})") from None


__all__ = ["lower_fused"]
