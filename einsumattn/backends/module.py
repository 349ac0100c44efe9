"""Cascade -> the source of a self-contained Python module (templates/module.py.j2).

The module imports only torch and math, binds and checks shapes on every call, and
carries the spec and its analysis in its docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import textwrap

from .. import __version__
from ..analysis import analyze
from ..analysis.presence import absent_tensors
from ..diagnostics import SpecError
from ..ir import Cascade, rank_used
from ..ir import expr as ir
from ..ir.bind import sized_problem
from ..ir.divisors import checked_divisors, divisor_problem, proved_positive
from . import names
from .names import mangle, spec_text, string_literal
from .printers import PythonScalarPrinter
from .torch_reference import TorchEmitter
from ..ir.printer import cascade_text
from ..schedule.configs import candidates_table, rules_table
from ..schedule.loops import CUBIC_CHUNK, LoopRoles
from ..schedule.model import KernelSchedule, Schedule, kernel_data
from ..schedule.stages import NotFusable
from .registry import BACKENDS, choice_text
from .templates import module_template
from .triton_fused import fuse_stages
from .triton_kernel import FusedKernel, tuning_table
from .triton_printer import HELPERS, Unsupported
from .triton_unfused import TritonEmitter
from ..transform import CHUNKED, DEFAULT_TILE, Rewritten, rewrite as derive
from ..transform.algebra import replace_reads
from ..transform.backward import Backward, fast_backward
from ..transform.chunked import decaying
from ..transform.grad import GradientUnsupported
from ..transform.merge import Merge, derive_merge
from ..transform.states import combine_sides
from ..schedule.training import TrainingStages, training_stages
from . import torch_scheduled


def _backends_note(fallback: str | None, count: int, schedule: str) -> str:
    torch_note = "torch: the reference, one block of torch code per Einsum (any device)."
    if fallback is not None:
        return f"{torch_note}\ntriton: {fallback}; backend='triton' warns and runs torch."
    return (f"{torch_note}\ntriton: {schedule}.\ntriton-unfused: {count} kernel(s), one per "
            f"Einsum, intermediates in global memory (see docs/codegen.md).")


def _size_lines(cascade: Cascade) -> list[str]:
    """Statements of `_bind` that size the spec's ranks from the inputs' shapes alone
    (no params): the inputs' ranks, then the dims sized by other dims. `_shapes` (the
    custom ops' fake implementations) runs just these."""
    lines = []
    for tensor in cascade.inputs:
        ranks = "".join(f"{string_literal(r)}, " for r in tensor.ranks)
        computed = "".join(f"{string_literal(r)}, " for r in dict.fromkeys(tensor.ranks)
                           if cascade.ranks[r].sized)
        computed = f", computed=({computed.rstrip(' ')})" if computed else ""
        lines.append(f"_take(sizes, origin, {string_literal(tensor.name)}, "
                     f"{mangle(tensor.name)}, ({ranks.rstrip(' ')}){computed})")
    return lines + _sized_lines(cascade, _size_printer(cascade))


def _size_printer(cascade: Cascade) -> PythonScalarPrinter:
    return PythonScalarPrinter({**{r: f"sizes[{string_literal(r)}]" for r in cascade.ranks},
                                **{p: f"params[{string_literal(p)}]"
                                   for p in cascade.params}})


def _bind_lines(cascade: Cascade) -> list[str]:
    """Statements of `_bind`: sizes from inputs, params, then the splits' sizes. The
    `sizes` and `params` dicts are keyed by the spec's names (as strings)."""
    lines = _size_lines(cascade)
    printer = _size_printer(cascade)

    def split_lines(param_factors: bool) -> None:
        for split in cascade.splits:
            if not rank_used(cascade, split.parent):
                continue
            if isinstance(split.factor, str) and split.factor in cascade.params:
                if not param_factors:
                    continue
                factor = f"params[{string_literal(split.factor)}]"
                lines.append(f"if not float({factor}).is_integer() or {factor} < 1:")
                message = (f"param {split.factor} splits rank {split.parent} and must be a "
                           f"positive integer")
                lines.append(f"    raise ValueError({string_literal(message)})")
                factor = f"int({factor})"
            elif param_factors:
                continue
            elif isinstance(split.factor, str):
                factor = f"sizes[{string_literal(split.factor)}]"
            else:
                factor = str(split.factor)
            inner, outer = string_literal(split.inner), string_literal(split.outer)
            lines.append(f"sizes[{inner}] = {factor}")
            lines.append(f"sizes[{outer}] = -(-sizes[{string_literal(split.parent)}] // "
                         f"sizes[{inner}])")

    split_lines(param_factors=False)
    lines.append("params = dict(overrides)")
    for param in cascade.params.values():
        key = string_literal(param.name)
        if param.default is None:
            lines.append(f"if {key} not in params:")
            message = f"param {param.name} has no default and was not given"
            lines.append(f"    raise TypeError({string_literal(message)})")
        else:
            lines.append(f"params.setdefault({key}, {printer(param.default)})")
    split_lines(param_factors=True)
    for divisor, read in checked_divisors(cascade):   # e.g. K[b, h // (H // KH), m, e]
        lines.append(f"if {printer(divisor)} < 1:")
        lines.append(f"    raise ValueError({string_literal(divisor_problem(divisor, read))}"
                     f".format(value={printer(divisor)}, **sizes))")
    return lines


def _sized_lines(cascade: Cascade, printer: PythonScalarPrinter) -> list[str]:
    """Statements of `_bind` for the dims sized by other dims (`dims P = M, G = H //
    KH`), after the inputs' sizes: each computed (its dims first), checked to be at least
    1 (its divisors first), then checked against the inputs that have it; the messages
    are the oracle's (ir/bind.py)."""
    order: list[str] = []

    def visit(rank: str) -> None:
        definition = cascade.ranks[rank].definition
        if definition is None or rank in order:
            return
        for node in ir.walk(definition):
            if isinstance(node, ir.Dim):
                visit(node.rank)
        order.append(rank)

    for rank in cascade.ranks:
        if rank_used(cascade, rank):
            visit(rank)
    lines = []
    for rank in order:
        definition, key = cascade.ranks[rank].definition, string_literal(rank)
        problem = sized_problem(cascade, rank)
        divisors = [node.args[1] for node in ir.walk(definition)
                    if isinstance(node, ir.Op) and node.op == "//"]
        for divisor in reversed(divisors):       # a divisor's own divisors first
            if proved_positive(divisor, cascade.ranks):
                continue
            lines.append(f"if {printer(divisor)} < 1:")
            lines.append(f"    raise ValueError({string_literal(problem['divisor'])}.format("
                         f"divisor={string_literal(ir.to_text(divisor))}, "
                         f"value={printer(divisor)}, sizes=sizes))")
        lines.append(f"sizes[{key}] = {printer(definition)}")
        lines.append(f"origin[{key}] = {string_literal(f'{rank} = ' + ir.to_text(definition))}")
        lines.append(f"if sizes[{key}] < 1:")
        lines.append(f"    raise ValueError({string_literal(problem['size'])}.format("
                     f"value=sizes[{key}], sizes=sizes))")
        for tensor in cascade.inputs:
            for position, name in enumerate(tensor.ranks):
                if name != rank:
                    continue
                extent = f"{mangle(tensor.name)}.shape[{position}]"
                lines.append(f"if {extent} != sizes[{key}]:")
                lines.append(f"    raise ValueError({string_literal(problem['input'])}.format("
                             f"value=sizes[{key}], input={string_literal(tensor.name)}, "
                             f"extent={extent}, position={position}))")
    return lines


@dataclasses.dataclass(frozen=True)
class TritonPart:
    """The Triton part of a module: what the template writes for the two Triton
    backends, and the fused schedule as data. `fallback` says why there is none."""

    fallback: str | None = None           # why no Triton backend (None: there is one)
    not_fused: str | None = None          # why no fused schedule (None: there is one)
    kernel_sources: tuple[str, ...] = ()  # the unfused schedule: one kernel per Einsum
    host_lines: tuple[str, ...] = ()
    tuning: dict = dataclasses.field(default_factory=dict)
    helpers: str = ""
    fused: tuple[FusedKernel, ...] = ()   # the fused schedule, in launch order
    cut: str | None = None                # why it is more than one kernel
    schedule_note: str = ""
    kernel_names: tuple[str, ...] = ()
    unfused: tuple[KernelSchedule, ...] = ()   # the unfused schedule's kernels, as data

    @property
    def fused_source(self) -> str | None:
        return "\n\n".join("\n".join(k.source) for k in self.fused) or None

    @property
    def dot_rounding(self) -> dict:
        return {names.spec_name(e): n for k in self.fused for e, n in k.schedule.rounded}

    def _fused_host(self) -> list[str]:
        """Each fused kernel's host lines, after the dtype its outputs are stored in: the
        module's outputs' own (rounded once, by the kernel) where no later kernel reads
        them, float32 for a later stage to read."""
        lines = []
        for position, kernel in enumerate(self.fused):
            later = {t for k in self.fused[position + 1:] for t in k.schedule.inputs}
            final = not later & set(kernel.schedule.outputs)
            lines += [f"stored_dtype = {'out_dtype' if final else 'torch.float32'}",
                      *kernel.host]
        return lines

    def schedule(self) -> Schedule:
        return Schedule(tuple(k.schedule for k in self.fused), self.cut, self.not_fused,
                        self.unfused)

    def template_fields(self) -> dict:
        """The names the template reads."""
        return {"triton_fallback": self.fallback, "not_fused": self.not_fused,
                "kernel_sources": list(self.kernel_sources),
                "host_lines": list(self.host_lines), "tuning": self.tuning,
                "helpers": self.helpers, "fused_source": self.fused_source,
                "fused_host": self._fused_host(),
                "fused_tuning": {k.name: tuning_table(k.schedule) for k in self.fused},
                "config_rules": rules_table(), "config_candidates": candidates_table(),
                "dot_rounding": self.dot_rounding,
                "kernel_names": list(self.kernel_names),
                "schedule_note": self.schedule_note}


def _merged(cascade: Cascade, tile: int):
    """What a split kernel's split-KV form needs of the derived merge
    (transform/merge.py), in the kernels' names: each part's (register, empty, the
    combine's A and B inputs) and the combine cascade; None where the state does not
    merge (a prefix combine is not split-KV's)."""
    merge = derive_merge(cascade, tile=tile)
    if not isinstance(merge, Merge) or merge.kind != "merge":
        return None
    # The combine's own tensors (A_x, B_x, the weights) are the generator's: spelled as
    # derived names (`A_x__merge`), never as a spec name could be.
    parts = {p.name for p in merge.parts}
    own = {names.mangle(t): f"{names.mangle(t)}_merge" for t in merge.combine.tensors
           if t not in parts}
    found = tuple((names.mangle(p.name), p.empty, own[names.mangle(a)], own[names.mangle(b)])
                  for p, (a, b) in zip(merge.parts, combine_sides(merge.combine)))
    return found, _tensors_renamed(names.rename(merge.combine), own)


def _tensors_renamed(cascade: Cascade, renamed: dict[str, str]) -> Cascade:
    """`cascade` with its tensors renamed (old -> new), reads included."""
    def name(tensor: str) -> str:
        return renamed.get(tensor, tensor)
    einsums = tuple(dataclasses.replace(e, tensor=name(e.tensor), body=replace_reads(
        e.body, lambda read: dataclasses.replace(read, tensor=name(read.tensor))))
        for e in cascade.einsums)
    tensors = {name(n): dataclasses.replace(t, name=name(n)) for n, t in cascade.tensors.items()}
    return dataclasses.replace(cascade, tensors=tensors, einsums=einsums,
                               outputs=tuple(map(name, cascade.outputs)))


def _triton(cascade: Cascade, merged=None) -> TritonPart:
    """The Triton part of the module, or the reason there is none. The emitters run on
    the cascade renamed into the spec's namespace (names.py), so the code they print
    cannot collide with the generator's own names; what they say (notes, reasons) is
    turned back into the spec's spelling."""
    renamed = names.rename(cascade)
    try:
        emitter = TritonEmitter(renamed)
        kernels = emitter.kernels()
        host = emitter.host_lines(kernels)
    except Unsupported as reason:
        return TritonPart(fallback="not expressible in Triton yet: " + spec_text(str(reason)),
                          not_fused=spec_text(str(reason)))
    why = None
    try:
        fused, cut = fuse_stages(renamed, merged)
    except NotFusable as reason:
        fused, cut, why = [], None, spec_text(str(reason))
    if len(fused) == 1:
        note = fused[0].description
    elif fused:
        note = (f"{len(fused)} fused kernels, cut because {cut}: "
                + "; then ".join(k.description for k in fused))
    else:
        note = f"the unfused schedule (not fusable: {why})"
    return TritonPart(not_fused=why,
                      kernel_sources=tuple("\n".join(k.source) for k in kernels),
                      host_lines=tuple(host), tuning={k.name: k.tuning for k in kernels},
                      helpers=HELPERS.strip(), fused=tuple(fused),
                      cut=None if cut is None else spec_text(cut),
                      schedule_note=spec_text(note),
                      kernel_names=tuple(k.name for k in kernels) +
                      tuple(name for k in fused for name in k.names),
                      unfused=tuple(k.schedule for k in kernels))


@dataclasses.dataclass(frozen=True)
class TrainingPart:
    """The kernels that train (compile --train): the forward that also writes what the
    backward reads, and the backward's stages (transform/backward.py derives and proves
    the backward, schedule/training.py cuts it, each stage is scheduled and printed like
    any cascade). `reason`: why there are none; training then differentiates the torch
    backend in the backward, as without --train."""

    reason: str | None = None
    backward: Backward | None = None
    forward: TritonPart | None = None
    stages: tuple[TritonPart, ...] = ()
    # What the stages compute (schedule/training.py): the backward with its partial
    # sums split (output -> its partial sum), the backward itself where there are none.
    staged: TrainingStages | None = None

    @property
    def kernels(self) -> tuple[FusedKernel, ...]:
        parts = (self.forward, *self.stages) if self.forward is not None else ()
        return tuple(k for part in parts for k in part.fused)

    def data(self) -> dict | None:
        """SCHEDULE["training"]: what is saved and recomputed, the stages' kernels."""
        if self.backward is None:
            return {"reason": self.reason}
        backward = self.backward
        return {"reason": None,
                # The backward the stages compute, as .attn text, with what it reads
                # and writes by name: `einsumattn check` evaluates it with the oracle
                # on what _triton_saving saved (16-bit cases; verify.py).
                "backward": cascade_text(self.staged.backward),
                "gradients": dict(backward.gradients),
                # the stages' rounded dot operands per Einsum of the backward (as the
                # module's DOT_ROUNDING for the forward)
                "rounded": {e: n for part in self.stages for e, n in part.dot_rounding.items()},
                "cotangents": dict(backward.cotangents),
                # (name, why) pairs in the order _triton_saving returns them
                "saved": tuple((k, v) for k, v in backward.saved.items()),
                "recomputed": [spec_text(n) for n in backward.recomputed],
                # output -> the partial sum a stage computes per point of the ranks its
                # total sums (schedule/training.py, 2.)
                "partials": {spec_text(o): spec_text(p)
                             for o, p in self.staged.partials.items()},
                "rules": [step.comment() for step in backward.steps],
                "stages": [[spec_text(o) for o in part.fused[-1].schedule.outputs]
                           for part in self.stages],
                "kernels": tuple(kernel_data(k.schedule, spec_text) for k in self.kernels)}

    def describe(self) -> str:
        if self.backward is None:
            return f"training: the torch backend's autograd in the backward ({self.reason})"
        saved = ", ".join(f"{n} ({why})" for n, why in self.backward.saved.items())
        partials = "".join(f"; {o} as the total of {p}"
                           for o, p in self.staged.partials.items())
        return (f"training: {len(self.kernels)} kernel(s): the forward saving "
                f"{saved or 'nothing'}; the backward in {len(self.stages)} stage(s), "
                f"recomputing {', '.join(self.backward.recomputed) or 'nothing'}{partials}")


def _training(cascade: Cascade, tile: int) -> TrainingPart:
    """The training kernels of a cascade, or why there are none: every stage must have
    fused kernels (the unfused schedule's per-Einsum buffers would be O(N^2) here)."""
    try:
        backward = fast_backward(cascade)
    except GradientUnsupported as why:
        return TrainingPart(reason=f"no derived gradient: {why}")
    derived = derive(backward.forward, tile=tile, chunked=False)
    forward = _triton(derived.cascade if derived.applied else backward.forward)
    if forward.fallback is not None or not forward.fused:
        return TrainingPart(reason="the forward that saves the statistics does not fuse: "
                                   f"{forward.fallback or forward.not_fused}")
    staged = training_stages(backward.cascade, backward.streamed)
    stages = []
    for stage in staged.stages:
        part = _triton(stage)
        if part.fallback is not None or not part.fused:
            return TrainingPart(reason=f"the backward stage {stage.name} does not fuse: "
                                       f"{part.fallback or part.not_fused}")
        own = analyze(stage).primary_rank
        quadratic = _quadratic_buffers(stage, part, backward.streamed, own)
        if quadratic:
            return TrainingPart(reason=f"the backward stage {stage.name} would keep "
                                       f"{', '.join(quadratic)} in memory, a value per "
                                       f"point of both {backward.streamed} and {own} "
                                       f"(per key and per query, for attention: training "
                                       f"memory must stay linear in each)")
        stages.append(part)
    return TrainingPart(None, backward, forward, tuple(stages), staged)


def _quadratic_buffers(stage: Cascade, part: TritonPart, streamed: str | None,
                       own: str | None) -> list[str]:
    """The tensors a stage's kernels pass on in memory (every kernel's outputs but the
    last's) that have both the forward's streamed rank and the stage's own (GQA's dK
    summing the heads of a group in the loop schedule: a P x M buffer); `own`: the stage's
    primary rank. A buffer whose ranks an input of the stage has too is no larger than
    that input (squeeze-and-excitation's Z[b, c], beside X[b, c, h, w]): memory stays
    linear in the inputs' size, and it is not counted."""
    passed = [names.spec_name(o) for k in part.fused[:-1] for o in k.schedule.outputs]
    return [name for name in passed
            if {streamed, own} <= set(stage.tensors[name].ranks) and streamed != own and
            not stage.has_input_over(stage.tensors[name].ranks)]


def _derivation(cascade: Cascade, tile: int) -> tuple[Rewritten, str | None]:
    """The derivation the Triton backends run, and why rule 4's chunked form is not in
    it where the spec has a recurrence it applies to. That form pays off only in the
    chunk form's one kernel, which keeps each chunk's attention on chip (one kernel per
    Einsum would write every chunk's C x C attention to memory), and keeps float32 in
    range only where the gates are at most 1 (transform/chunked.py's `decaying`). Its
    chunks are of `tile` steps, or of CUBIC_CHUNK where a chunk's attention is a sum
    over three tile dimensions (GLA's decay per feature)."""
    plain = derive(cascade, tile=tile, chunked=False)
    if all(e.iterative is None for e in cascade.einsums):
        return plain, None
    chunked = derive(cascade, tile=tile)
    if not any(step.rule == CHUNKED for step in chunked.steps):
        return plain, None
    if not decaying(cascade):
        return plain, ("the recurrence runs as written: its gates are not provably at most "
                       "1, where the chunked form's exponentials could overflow (write the "
                       "gate as exp(logsigmoid(x)), exp(-softplus(x)) or exp(min(x, 0)) for "
                       "the chunked kernel; docs/rewrites.md, rule 4)")
    try:
        roles = LoopRoles(names.rename(chunked.cascade))
    except NotFusable as why:
        return plain, (f"the recurrence runs as written: the chunked form does not fuse "
                       f"({spec_text(str(why))})")
    if roles.cubic and tile > CUBIC_CHUNK:
        return derive(cascade, tile=tile, chunk=CUBIC_CHUNK), None
    return chunked, None


class Plan:
    """Which cascade each backend runs, decided once per compile. The torch reference is
    always the spec's own cascade (the readable statement of the math); the Triton
    backends run the derived cascade of `einsumattn rewrite`, unless rewriting is off,
    finds nothing, or the derived cascade does not fuse where the spec's own does (then
    the spec's own, said in the note). `kernel` is in the spec's names; the emitters see
    it renamed. The spec's own cascade is scheduled only when it is needed: without a
    derived one, or when the derived one does not fuse."""

    def __init__(self, cascade: Cascade, *, rewrite: bool = True, tile: int = DEFAULT_TILE,
                 train: bool = False):
        self.cascade = cascade
        self.options = {"rewrite": rewrite, "tile": tile, "train": train}
        self.training = _training(cascade, tile) if train else \
            TrainingPart(reason="compiled without --train")
        self.rewritten, self.unchunked = _derivation(cascade, tile) if rewrite else \
            (None, None)
        self.kernel = cascade
        self.note = "the spec's own cascade (rewrites off: --no-rewrite)" \
            if not rewrite else "the spec's own cascade (no rewrite applies)"
        # Derived (and proved) only where a split kernel asks for it (triton_fused.fuse).
        merged = functools.partial(_merged, cascade, tile) if rewrite else None
        if self.rewritten is None or not self.rewritten.applied:
            self.triton = _triton(cascade, merged)
            return
        change = self.rewritten.change()
        derived = _triton(self.rewritten.cascade, merged)
        own = _triton(cascade) if derived.fused_source is None else None
        if own is not None and own.fused_source is not None:
            self.triton = own
            self.note = (f"the spec's own cascade: the derived one ({change}) does "
                         f"not fuse ({derived.not_fused})")
        else:
            self.kernel, self.triton = self.rewritten.cascade, derived
            chunks = "".join(f"{step.summary}; " for step in self.rewritten.steps
                             if step.rule == CHUNKED)
            self.note = f"the derived cascade ({change}; {chunks}einsumattn rewrite prints it)"

    @functools.cached_property
    def backends(self) -> dict[str, str | None]:
        """Each registered backend's name -> None where it runs this plan, else why not."""
        return {backend.name: backend.applies(self) for backend in BACKENDS}

    def summary(self) -> str:
        return _backends_note(self.triton.fallback, len(self.kernel.einsums),
                              self.triton.schedule_note) + \
            f"\nTriton kernels compute {self.note}." + \
            (f"\nRule 4, the chunked form: {self.unchunked}." if self.unchunked else "") + \
            (f"\n{spec_text(self.training.describe())}."
             if self.options["train"] else "")

    def data(self) -> dict:
        """The plan as plain data: the generated module's SCHEDULE. `cascade` is the
        kernels' cascade as .attn text (what `check` evaluates the roundings on)."""
        schedule = self.triton.schedule()
        return {"cascade": cascade_text(self.kernel),
                "derived": self.kernel is not self.cascade,
                "options": dict(self.options),
                "backends": dict(self.backends),
                "kernels": tuple(kernel_data(k, spec_text) for k in schedule.kernels),
                "cut": schedule.cut,
                "not_fused": schedule.not_fused,
                "unfused": tuple(kernel_data(k, spec_text) for k in schedule.unfused),
                "training": self.training.data(),
                "describe": self.summary()}


def backends_summary(cascade: Cascade, *, rewrite: bool = True,
                     tile: int = DEFAULT_TILE) -> str:
    """What each backend of the compiled module runs, and why (shown at compile time).
    A caller that also generates the module builds the Plan once and asks it."""
    return Plan(cascade, rewrite=rewrite, tile=tile).summary()


def spec_sha256(text: str) -> str:
    """The module's SPEC_SHA256: the hash of the spec's text (which the cache checks)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _pass_summary(report) -> str:
    """The report's pass summary and reasons (the full report is a command away:
    einsumattn analyze)."""
    return report.passes_text().rstrip()


def _signatures(inputs: list[str], params: list[str]) -> dict:
    """The public API's argument lists (names.public_names) and the internal functions'
    (the mangled names), as the template writes them."""
    public = names.public_names(inputs + params)
    # A name starting with '__' is renamed by Python inside a class body (`__p` becomes
    # `_Cls__p`), so the class takes such params through **more, by the same names.
    explicit = [p for p in params if not public[p].startswith("__")]
    hidden = [p for p in params if p not in explicit]

    def keywords(chosen: list[str]) -> str:
        return "".join(f", {public[p]}=None" for p in chosen)

    def overrides(chosen: list[str], rest: list[str] = ()) -> str:
        items = [f"{string_literal(p)}: {public[p]}" for p in chosen] + \
            [f"{string_literal(p)}: more.pop({string_literal(public[p])}, None)"
             for p in rest] + ["**more"] * bool(rest)      # what is left is unknown
        return "{" + ", ".join(items) + "}"

    return {"public": public,
            "args": ", ".join(mangle(i) for i in inputs),
            "public_args": ", ".join(public[i] for i in inputs),
            "keyword_params": ", *" + keywords(params) if params else "",
            "function_params": keywords(params),
            "overrides": overrides(params),
            "class_params": (", *" + keywords(explicit) if explicit else "")
            + (", **more" if hidden else ""),
            "class_overrides": overrides(explicit, rest=hidden)}


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything besides the spec (its text and file name) that decides the generated
    text. `generate` takes exactly these fields, and compile()'s cache key hashes every
    field of this class, so an option cannot be left out of the key."""

    rewrite: bool = True
    tile: int = DEFAULT_TILE
    train: bool = False                # kernels for the backward (compile --train)
    merge: bool = False                # partial, merge, finish (compile --merge)
    module_name: str | None = None     # for the docstring's `from NAME import ...`


def generate(cascade: Cascade, *, plan: Plan | None = None, **options) -> str:
    """The source of the generated module for a cascade (`options`: the fields of
    `Options`). `plan`: the Plan already built for the cascade with these options (the
    CLI builds it once, for the module and for what it prints)."""
    settings = Options(**options)
    names.check_module_name(cascade)
    if not cascade.inputs:
        raise SpecError("a spec needs at least one input to compile",
                        hint="declare the tensors it computes from with 'input'",
                        source=cascade.source)
    options = {"rewrite": settings.rewrite, "tile": settings.tile, "train": settings.train}
    if plan is None:
        plan = Plan(cascade, **options)
    elif plan.cascade is not cascade or plan.options != options:
        raise ValueError("the plan was built for another cascade or other options")
    options["merge"] = settings.merge  # the Plan does not depend on it
    kernel, triton = plan.kernel, plan.triton
    analysis = _pass_summary(analyze(cascade))
    if kernel is not cascade and plan.rewritten is not None:
        analysis += ("\n\nThe Triton kernels compute the derived cascade (einsumattn "
                     "rewrite):\n\n" + _pass_summary(analyze(kernel)) + "\n\n" +
                     plan.rewritten.text().rstrip())
    source_text = cascade.source.text if cascade.source else ""
    inputs = [t.name for t in cascade.inputs]
    cls = names.class_name(cascade.name)
    context = {
        "name": cascade.name,
        "class_name": cls,
        "function_name": names.function_name(
            cascade.name, cls, triton.kernel_names +
            tuple(k.schedule.name for k in plan.training.kernels)),
        "module_name": settings.module_name or cascade.name,
        "version": __version__,
        "source_name": cascade.source.filename if cascade.source else "<spec>",
        "spec_source": source_text.strip(),
        "spec_hash": spec_sha256(source_text),
        "analysis": analysis,
        **triton.template_fields(),
        "fused_tuning": {**triton.template_fields()["fused_tuning"],
                         **{k.schedule.name: _training_tuning(k)
                            for k in plan.training.kernels}},
        "has_triton": triton.fallback is None,
        "schedule": plan.data(),
        "backend_choices": choice_text(),
        "backends_note": plan.summary(),
        "inputs": inputs,
        "outputs": list(cascade.outputs),
        "input_ranks": {t.name: t.ranks for t in cascade.inputs},
        "params": list(cascade.params),
        **_signatures(inputs, list(cascade.params)),
        # The kernel cascade's ranks include the spec's, plus the splits a rewrite added.
        "ranks": [r for r in kernel.ranks if rank_used(kernel, r)],
        "body_lines": TorchEmitter(names.rename(cascade)).emit(),
        "absent": absent_tensors(cascade),
        "compile_options": options,
        "training": _training_fields(plan.training, cascade) if triton.fused else None,
        # backend="torch": the kernels' schedule as torch code (backends/torch_scheduled.py)
        "torch_schedule": torch_scheduled.schedule(kernel),
        # How the forward binds its inputs and params: its ranks the kernels' cascade's.
        "main": _piece("_bind", cascade, kernel),
        "merge": _merge_fields(cascade, settings.tile) if settings.merge else None,
    }
    context["ops"] = _op_fields(
        cascade, kernel, plan.training if context["training"] else None,
        f"{context['spec_hash']}\0{options!r}\0{__version__}")
    source = module_template().render(**context)
    return names.spec_comments(source)


def _piece(bind: str, cascade: Cascade, kernel: Cascade | None = None) -> dict:
    """What the template needs to bind a cascade's inputs and params in a function of its
    own (`bind` names the binding function): the forward's (`main`, its ranks those of
    the kernels' cascade `kernel`) and each piece of the merge."""
    kernel = kernel or cascade
    inputs = [t.name for t in cascade.inputs]
    return {"bind": bind, "inputs": inputs, "args": ", ".join(mangle(i) for i in inputs),
            "params": list(cascade.params), "first_input": inputs[0],
            "fixed": _fixed_dims(kernel), "bind_lines": _bind_lines(kernel),
            "rank_sizes": [(r, f"sizes[{string_literal(r)}]") for r in kernel.ranks
                           if rank_used(kernel, r)]}


def _fixed_dims(cascade: Cascade) -> dict[str, int]:
    """The fixed dims of a cascade (the spec's, and a rewrite's such as rule 4's chunk
    C), not the parts of a split."""
    return {r.name: r.fixed for r in cascade.ranks.values()
            if r.fixed is not None and r.name not in
            {p for s in cascade.splits for p in (s.outer, s.inner)}}


def _merge_fields(cascade: Cascade, tile: int) -> dict:
    """What the template writes for compile --merge (docs/merge.md): the merge of
    partial states (transform/merge.py) as three torch functions and their public
    wrappers, or the reason there is none."""
    merge = derive_merge(cascade, tile=tile)
    if not isinstance(merge, Merge):
        return {"refused": textwrap.wrap(f"No merge of partial states: {merge.explain()}",
                                         86)}
    parts = [part.name for part in merge.parts]
    pieces = []
    for role, piece, returned in (
            ("partial", merge.partial, [(p.name, p.end) for p in merge.parts]),
            ("combine", merge.combine, [(name, name) for name in parts]),
            ("finish", merge.finish, [(o, o) for o in merge.finish.outputs])):
        pieces.append({**_piece(f"_merge_{role}_bind", piece), "role": role,
                       "function": f"_merge_{role}",
                       "body_lines": TorchEmitter(names.rename(piece)).emit(),
                       "absent": absent_tensors(piece), "returned": returned})
    public = names.public_names([t.name for t in cascade.inputs] + list(cascade.params))
    # The finish's params beside the spec's: the range's start and the rank's size
    # (required), the offsets of other ranks' positions (0 by default).
    finish_required = [p for p in (merge.start, merge.count) if p in merge.finish.params]
    finish_offsets = [p for p in merge.offsets.values() if p in merge.finish.params]
    # The finish's inputs that hold the state: the parts themselves, or for a prefix
    # combine the state entering the range (input -> part).
    state_of = {**{name: name for name in parts}, **merge.entering}
    finish_inputs = [t.name for t in merge.finish.inputs if t.name not in state_of]
    keywords = finish_required + [f"{p}=0" for p in finish_offsets] + \
        [f"{public[p]}=None" for p in cascade.params]
    return {
        "refused": None, "rank": merge.rank, "start": merge.start, "count": merge.count,
        "pieces": pieces,
        "kind": merge.kind,
        "data": {"kind": merge.kind, "rank": merge.rank, "start": merge.start,
                 "count": merge.count,
                 "state": {p.name: p.kind if p.shift is None else f"{p.kind} by {p.shift}"
                           for p in merge.parts},
                 "log_sum_exp": merge.lse, "finish_inputs": tuple(finish_inputs),
                 "finish_keywords": tuple(finish_required),
                 "finish_offsets": tuple(finish_offsets),
                 "offsets": merge.offsets, "commutative": merge.commutative,
                 "input_ranks": {t.name: t.ranks for t in cascade.inputs},
                 "output_ranks": {o: cascade.tensors[o].ranks for o in cascade.outputs}},
        "offsets": [p for p in merge.offsets.values() if p in merge.partial.params],
        "finish_passed": finish_required + finish_offsets,
        "lse": merge.lse,
        "combine_args": ", ".join(f"{side}[{string_literal(p)}]"
                                  for p in parts for side in ("a", "b")),
        "finish_signature": ", ".join(["state", *(public[i] for i in finish_inputs)]
                                      + (["*"] if keywords else []) + keywords),
        "finish_args": ", ".join(f"state[{string_literal(state_of[t.name])}]"
                                 if t.name in state_of else public[t.name]
                                 for t in merge.finish.inputs),
        "proofs": list(merge.proofs),
    }


def _training_tuning(kernel: FusedKernel) -> dict:
    """A training kernel's TUNING_FUSED entry: its keys split over programs pinned to
    one (atomic adds in any order would make the gradients vary in their last bits)."""
    table = tuning_table(kernel.schedule)
    if kernel.schedule.splits is not None:
        table[kernel.schedule.splits] = 1
    return table


def _training_fields(training: TrainingPart, cascade: Cascade) -> dict | None:
    """What the template writes for the training kernels (None: there are none): the
    host lines of the forward that saves and of the backward's stages, the names they
    bind, the kernels' sources (their knobs: _training_tuning)."""
    if training.backward is None:
        return None
    backward = training.backward
    ranks = []
    for name, rank in backward.cascade.ranks.items():
        if name in cascade.ranks:
            ranks.append((name, f"sizes[{string_literal(name)}]"))
        elif rank.fixed is not None:
            ranks.append((name, str(rank.fixed)))
    return {
        "ranks": ranks,
        "forward_host": [line for k in training.forward.fused for line in k.host],
        "forward_single": len(training.forward.fused) == 1,
        "backward_host": [line for part in training.stages for k in part.fused
                          for line in k.host],
        "saved": list(backward.saved),
        "cotangents": [backward.cotangents[o] for o in cascade.outputs],
        "gradients": [backward.gradients.get(t.name) for t in cascade.inputs],
        "source": "\n\n".join("\n".join(k.source) for k in training.kernels),
        "saved_lines": [f"{n}: {why}" for n, why in backward.saved.items()],
        "recomputed": ", ".join(backward.recomputed),
    }


def _op_fields(cascade: Cascade, kernel: Cascade, training: TrainingPart | None,
               identity: str) -> dict:
    """What the template writes for torch.compile (docs/torch_compile.md): the custom ops'
    name and schemas, and the shapes their fake implementations give. `identity`: what
    tells this module apart from others of the same spec name (its spec and options),
    hashed into the ops' name. `training`: the training kernels, None where there are
    none (the "train" ops then do not exist)."""
    # The spec's names, as torch's messages about the ops' arguments show them; the
    # mangled spelling where a name is the ops' own or one torch's schemas treat apart.
    public = names.public_names([t.name for t in cascade.inputs] + list(cascade.params))
    own = re.compile(r"backend|needs|cotangent\d+|saved\d+|self|out")
    spelled = {n: mangle(n) if own.fullmatch(p) else p for n, p in public.items()}
    inputs = [f"Tensor {spelled[t.name]}" for t in cascade.inputs]
    params = [f"float? {spelled[p]}" for p in cascade.params]
    cotangents = [f"Tensor cotangent{i}" for i in range(len(cascade.outputs))]

    def schema(arguments: list[str], returned: int) -> str:
        results = "Tensor" if returned == 1 else "(" + ", ".join(["Tensor"] * returned) + ")"
        return "(" + ", ".join(arguments) + ") -> " + results

    def shape(ranks: tuple[str, ...], sizes: dict[str, str]) -> str:
        return "(" + "".join(f"{sizes[r]}, " for r in ranks) + ")"

    spec_sizes = {r: f"sizes[{string_literal(r)}]" for r in kernel.ranks}
    grads = len(cascade.inputs)
    schemas = {
        "forward": schema(inputs + ["str backend"] + params, len(cascade.outputs)),
        "backward": schema(inputs + cotangents + ["str backend"] + params + ["bool[] needs"],
                           grads)}
    saved_shapes = []
    if training is not None:
        backward = training.backward
        sizes = {**spec_sizes, **{name: str(rank.fixed) for name, rank
                                  in backward.cascade.ranks.items()
                                  if name not in spec_sizes and rank.fixed is not None}}
        saved_shapes = [shape(backward.cascade.tensors[n].ranks, sizes)
                        for n in backward.saved]
        saved = [f"Tensor saved{i}" for i in range(len(backward.saved))]
        schemas["train"] = schema(inputs + params, len(cascade.outputs) + len(saved))
        schemas["train_backward"] = schema(inputs + saved + cotangents + params +
                                           ["bool[] needs"], grads)
    base = "".join(c if c.isalnum() else "_" for c in cascade.name)
    return {"name": f"{base}_{hashlib.sha256(identity.encode()).hexdigest()[:8]}",
            "schemas": schemas, "saved_count": len(saved_shapes),
            "output_shapes": [shape(cascade.tensors[o].ranks, spec_sizes)
                              for o in cascade.outputs],
            "saved_shapes": saved_shapes,
            "size_lines": _size_lines(kernel), "fixed": _fixed_dims(kernel)}


__all__ = ["generate", "Options", "Plan", "spec_sha256"]
