"""The backward's kernels: the fast backward (transform/backward.py) cut into stages,
each a cascade the back end schedules like any other, as FlashAttention-2 cuts it.

1. **Statistics first.** A tensor of the backward that is a reduction without the
   forward's streamed rank (softmax's `DELTA[p] = sum[f] dO[p, f] O[p, f]`: one value
   per query row) is read whole by every kernel after it: a stage of its own computes
   it, and the later stages take it as an input.
2. **Outputs grouped by the schedule.** Each output starts as its own stage (what it
   needs, recomputed: the scores, the probabilities); two stages merge when the
   attention schedule fuses their outputs together. dK and dV merge (rows of keys, the
   queries streamed: one loop over query tiles accumulates both per key tile); dQ does
   not join them (rows of queries, the keys streamed). No atomics: every output is
   written by the one program that owns its rows, so results are deterministic.

The stages are returned in the order they run.
"""

from __future__ import annotations

from ..ir import Cascade
from ..ir.cascade import Tensor
from .lower_attention import lower_attention
from .stages import NotFusable


def training_stages(backward: Cascade, streamed: str | None) -> list[Cascade]:
    """The stages of `backward` (module docstring); `streamed` is the forward's streamed
    rank."""
    statistics = [e.tensor for e in backward.einsums
                  if e.reduce_op is not None and e.tensor not in backward.outputs and
                  streamed not in backward.tensors[e.tensor].ranks]
    stages: list[Cascade] = []
    if statistics:
        stages.append(_stage(backward, statistics, set(), "statistics"))
    available = set(statistics)
    groups: list[list[str]] = [[output] for output in backward.outputs]
    merged = True
    while merged:
        merged = False
        for first in range(len(groups)):
            for second in range(first + 1, len(groups)):
                union = groups[first] + groups[second]
                if _fuses(_stage(backward, union, available)):
                    groups[first] = union
                    del groups[second]
                    merged = True
                    break
            if merged:
                break
    stages += [_stage(backward, group, available) for group in groups]
    return stages


def _fuses(stage: Cascade) -> bool:
    try:
        lower_attention(stage)
    except NotFusable:
        return False
    return True


def _stage(backward: Cascade, outputs: list[str], available: set[str],
           suffix: str | None = None) -> Cascade:
    """The cascade that computes `outputs` from the backward's inputs and the
    `available` tensors (an earlier stage's), recomputing everything else it needs."""
    needed: list[str] = []
    pending = list(outputs)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.append(name)
        if backward.tensors[name].is_input or name in available:
            continue
        pending += [r for r in backward.einsum(name).reads if r != name]
    inputs = {t.name: t for t in backward.inputs if t.name in needed}
    for name in available & set(needed):
        inputs[name] = Tensor(name, backward.tensors[name].ranks, True)
    einsums = tuple(e for e in backward.einsums if e.tensor in needed and
                    e.tensor not in available)
    tensors = {**inputs, **{e.tensor: backward.tensors[e.tensor] for e in einsums}}
    name = f"{backward.name}_{suffix or '_'.join(outputs)}"
    return Cascade(name, dict(backward.ranks), backward.splits, dict(backward.params), tensors, einsums,
                   tuple(outputs), backward.source)
