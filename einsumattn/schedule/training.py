"""The backward's kernels: the fast backward (transform/backward.py) cut into stages,
each a cascade the back end schedules like any other, as FlashAttention-2 cuts it.

1. **Statistics first.** A tensor of the backward that is a reduction without the
   forward's streamed rank (softmax's `DELTA[p] = sum[f] dO[p, f] O[p, f]`: one value
   per query row) is read whole by every kernel after it: a stage of its own computes
   it, and the later stages take it as an input. So is a per-row value that a
   contraction over a feature into a tensor over the keys reads (an online softmax
   whose division stays after V, where transform/backward.py's rule 0b cannot move it:
   `dO / RD_all` in `sum[f] dRNV_all[p, f] V[m, f]`): the dK/dV kernel streams the
   queries and loads it as a tile; it could not compute it. Where no one kernel
   computes every statistic (they reduce different ranks, and some read others:
   Efficient Attention's), they are stages in dependency order instead
   (`_statistics_levels`), each reading the earlier ones' buffers.
2. **Partial sums.** An output that sums over several ranks (GQA's dK: the query heads
   of a group and the queries) is not one kernel of the attention schedule, which
   streams one rank. It is split (transform/partial.py) into a partial sum over one
   rank, per point of the others (dK per query head), which a stage computes like any
   output, and the total over the others (the heads of a group), a small kernel of its
   own after it: FlashAttention-2's GQA backward. Memory: the partial has the output's
   size times the group (O(N)); no atomics. A statistic that sums over several ranks
   (the Differential Transformer's dLAM[h]) is split the same way where the statistics
   stage would not be scheduled otherwise: its partial joins the statistics stage, its
   total runs right after it, before the stages that read it.
3. **Outputs grouped by the schedule.** Each output starts as its own stage (what it
   needs, recomputed: the scores, the probabilities); two stages merge when the
   attention schedule fuses their outputs together. dK and dV merge (rows of keys, the
   queries streamed: one loop over query tiles accumulates both per key tile); dQ does
   not join them (rows of queries, the keys streamed). No atomics: every output is
   written by the one program that owns its rows, so results are deterministic.
4. **Totals** of the partial sums last.

The stages are returned in the order they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Cascade
from ..ir.cascade import Tensor
from ..transform.partial import partial_sum
from .fused import lower_fused
from .lower_attention import lower_attention
from .stages import NotFusable, cut_stages


@dataclass(frozen=True)
class TrainingStages:
    """The backward the stages compute (`backward` with its partial sums split), the
    stages in the order they run, and output -> the partial sum it is the total of."""

    backward: Cascade
    stages: tuple[Cascade, ...]
    partials: dict[str, str] = field(default_factory=dict)


def training_stages(backward: Cascade, streamed: str | None) -> TrainingStages:
    """The stages of `backward` (module docstring); `streamed` is the forward's streamed
    rank."""
    statistics = [e.tensor for e in backward.einsums
                  if e.tensor not in backward.outputs and e.iterative is None and
                  streamed not in backward.tensors[e.tensor].ranks and
                  (e.reduce_op is not None or
                   _contracted_with_keys(backward, e.tensor, streamed))]
    stages: list[Cascade] = []
    # A statistic that sums over several ranks (the Differential Transformer's dLAM[h],
    # over the batch, the queries and the keys), where the statistics stage would not be
    # scheduled otherwise: its partial sum joins the stage, its total is a stage of its
    # own right after it (2.).
    totals: dict[str, str] = {}
    together = _stage(backward, statistics, set(), _statistics_name(0)) if statistics \
        else None
    if together is not None and not _scheduled(together):
        for name in list(statistics):
            split = _partial(backward, name, set(), streamed) \
                if len(backward.einsum(name).reduced) > 1 else None
            if split is not None:
                backward, totals[name] = split
                statistics[statistics.index(name)] = totals[name]
        # Else statistics over different ranks that read each other: stages in order.
        levels = _statistics_levels(backward, statistics) if not totals else None
        stages += levels or [_stage(backward, statistics, set(), _statistics_name(0))]
    elif together is not None:
        stages.append(together)
    available = set(statistics)
    for name in totals:
        stages.append(_stage(backward, [name], available))
        available.add(name)
    partials: dict[str, str] = {}
    for output in backward.outputs:
        if not _fuses(_stage(backward, [output], available)):
            split = _partial(backward, output, available, streamed)
            if split is not None:
                backward, partials[output] = split
    groups: list[list[str]] = [[partials.get(output, output)] for output in backward.outputs]
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
    # The totals of the outputs' partial sums, each a small kernel of its own after them.
    available |= set(partials.values())
    stages += [_stage(backward, [output], available) for output in partials]
    return TrainingStages(backward, tuple(stages), {**totals, **partials})


def _statistics_name(number: int) -> str:
    """The name suffix of the statistics stage `number` (from 0)."""
    return "statistics" + (str(number + 1) if number else "")


def _statistics_levels(backward: Cascade, statistics: list[str]) -> list[Cascade] | None:
    """The statistics as stages in dependency order, where one stage of them all is not
    scheduled: first those that read no other statistic, then those that read only the
    first, and so on (Efficient Attention's: reductions over different ranks, some
    reading others, that no one kernel streams). None where that gives one stage, or a
    stage the fused schedules do not take."""
    # the statistics each one reads: what its own stage takes as buffers when every
    # other statistic is available
    reads = {name: {n for n, t in _stage(backward, [name], set(statistics) - {name})
                    .tensors.items() if t.buffer}
             for name in statistics}
    stages: list[Cascade] = []
    done: set[str] = set()
    while len(done) < len(statistics):
        level = [n for n in statistics if n not in done and reads[n] <= done]
        if not level:
            return None
        stage = _stage(backward, level, done, _statistics_name(len(stages)))
        if not _scheduled(stage):
            return None
        stages.append(stage)
        done |= set(level)
    return stages if len(stages) > 1 else None


def _contracted_with_keys(backward: Cascade, name: str, streamed: str | None) -> bool:
    """Whether a per-row value is a factor of a contraction over a feature into a tensor
    over the keys (`sum[f] dRNV_all[p, f] V[m, f]`, a division after V): the dK/dV
    kernel, which streams the queries, loads it as a tile, and cannot compute it."""
    return any(name in e.reads and e.reduce_op == "sum" and
               streamed in backward.tensors[e.tensor].ranks and
               not set(e.reduced) & {backward.ranks[streamed].var}
               for e in backward.einsums)


def _partial(backward: Cascade, output: str, available: set[str],
             streamed: str | None) -> tuple[Cascade, str] | None:
    """`backward` with `output`, a sum over several ranks that no stage computes in one
    kernel, split into a partial sum over one of them that a stage does (2. in the
    module docstring), and the partial's name; None where no split gives one. The
    variable summed in the partial is tried in this order: the forward's streamed
    rank (the partial is then per query row), then the others from the last (the
    sequence ranks come after the batch and head ranks in every example's layout)."""
    reduced = backward.einsum(output).reduced
    key = backward.ranks[streamed].var if streamed in backward.ranks else None
    for inner in sorted(reversed(reduced), key=lambda v: v != key):
        split = partial_sum(backward, output, inner)
        if split is not None and _fuses(_stage(split[0], [split[1]], available)):
            return split
    return None


def _scheduled(stage: Cascade) -> bool:
    """Whether the fused schedules take `stage`, as one kernel or cut into several."""
    def lowered(cascade: Cascade) -> Cascade:
        lower_fused(cascade)
        return cascade          # cut_stages names a cut by what it returns (`.name`)
    try:
        cut_stages(stage, lowered)
    except NotFusable:
        return False
    return True


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
    # In the backward's order, never a set's: the kernels' arguments follow it, and a
    # generated module must be the same bytes on every run.
    for name in (e.tensor for e in backward.einsums if e.tensor in available and
                 e.tensor in needed):
        # An earlier stage's float32 buffer: not exact in the inputs' dtype, so a dot
        # reading it counts its rounding and takes float32 tiles where float16's range
        # could overflow (schedule/attention.py, _exact_operand and _buffered).
        inputs[name] = Tensor(name, backward.tensors[name].ranks, True, buffer=True)
    einsums = tuple(e for e in backward.einsums if e.tensor in needed and
                    e.tensor not in available)
    tensors = {**inputs, **{e.tensor: backward.tensors[e.tensor] for e in einsums}}
    name = f"{backward.name}_{suffix or '_'.join(outputs)}"
    return Cascade(name, dict(backward.ranks), backward.splits, dict(backward.params),
                   tensors, einsums, tuple(outputs), backward.source)
