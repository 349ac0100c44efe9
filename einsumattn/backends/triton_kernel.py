"""What the fused Triton schedules share: the kernel record, the kernel's arguments and
signature, the host lines that launch it, and one path (`printed`) from a schedule
lowered to the kernel IR to the kernel's text and launch."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import Cascade
from ..schedule import kernel_ir
from ..schedule.biases import MAX_KEY_BLOCK, PARAM_EXPONENT, SCALE_EXPONENT, BiasDots
from ..schedule.interior import NarrowIndices, NarrowOffsets, TmaLoads
from ..schedule.lowering import LoweredKernel
from ..schedule.model import Form, KernelSchedule
from ..schedule.stages import NotFusable
from . import triton_indices
from .triton_ir import KernelPrinter
from .triton_printer import tile_asserts


@dataclass
class KernelCall:
    """What the host passes to one printed kernel: the arguments' expressions, the
    compile-time keywords (knobs, held tiles, the dot's precision, flags), and the lines
    that compute them first (the TMA test)."""
    args: list[str]
    constants: list[str]
    setup: list[str]

    def lines(self, name: str, grid: str) -> list[str]:
        return [*self.setup, f"grid = ({grid})", f"{name}[grid](",
                f"    {', '.join(self.args)},", f"    {', '.join(self.constants)})"]


@dataclass
class SplitKernels:
    """A split kernel's split-KV form (schedule/split_kv.py): the partial and merge
    kernels, printed, and how the host calls them."""
    knob: str                       # the host's number of splits (schedule/split_kv.py)
    partial_name: str
    merge_name: str
    partial_call: KernelCall
    merge_call: KernelCall
    ranks: dict                     # state buffer -> its ranks past the split's


@dataclass
class FusedKernel:
    name: str
    source: list[str]
    host: list[str]                 # host statements: allocate outputs, launch
    schedule: KernelSchedule        # what it computes and how, as data (its knobs'
    #                                 table in the module: tuning_table)
    body: tuple = ()                # the kernel IR statements its source was printed from
    split_kv: SplitKernels | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The kernel's name, and its split-KV form's."""
        if self.split_kv is None:
            return (self.name,)
        return self.name, self.split_kv.partial_name, self.split_kv.merge_name

    @property
    def description(self) -> str:   # for the module's docstring
        return self.schedule.description


def kernel_arguments(cascade: Cascade, schedule: KernelSchedule) -> tuple[list[str],
                                                                          list[str]]:
    """A fused kernel's arguments and the host expressions passed for them, from its
    schedule: output and input pointers, their strides, the sizes and params."""
    tensors = list(schedule.outputs) + list(schedule.inputs)
    args = [f"{t}_ptr" for t in tensors]
    host = list(tensors)
    for tensor in tensors:
        for position in range(len(cascade.tensors[tensor].ranks)):
            args.append(f"{tensor}_s{position}")
            host.append(f"{tensor}.stride({position})")
    return args + list(schedule.scalars), host + list(schedule.scalars)


def kernel_source(name: str, args: list[str], blocks: list[str], knobs: list[str],
                  least: int, body: list[str]) -> list[str]:
    """A kernel's text: its signature (arguments, then the block sizes as constexprs),
    the compile-time checks of its tunable knobs, its body."""
    return ["@triton.jit",
            f"def {name}({', '.join(args)}, "
            f"{', '.join(b + ': tl.constexpr' for b in blocks)}):",
            *tile_asserts(knobs, least)] + body


def launch_lines(cascade: Cascade, schedule: KernelSchedule, call: KernelCall,
                 checks: list[str] = (), split_kv: SplitKernels | None = None) -> list[str]:
    """Host lines: allocate the outputs, size the held ranks' tiles, take the kernel's
    configuration (`checks` run on it), launch one program per batch point and row tile.
    An attention kernel's configuration is chosen per call (`_tuning` in the module:
    TUNING_FUSED's pinned knobs, else the first rule of CONFIG_RULES for the device,
    dtype and head dim; schedule/configs.py); it is launched by `launch`, which the
    autotuning mode also times. Plain integer arithmetic only: no JIT-wrapped helpers."""
    lines = []
    # An attention kernel stores its outputs rounded to their tensor's dtype (kernel IR
    # Store.rounded): `stored_dtype`, the module outputs' dtype where no later stage reads
    # them (module.py's _fused_host), float32 where one does. The loop schedules store
    # float32 (a recurrence reads back what it stored: gla_recurrent's state).
    dtype = "stored_dtype" if per_call_configuration(schedule) else "torch.float32"
    for output in schedule.outputs:
        ranks = cascade.tensors[output].ranks
        lines.append(f"{output} = torch.empty(({', '.join(ranks)}"
                     f"{',' if len(ranks) == 1 else ''}), device=device, dtype={dtype})")
    held = ", ".join(f'"{var}_BLOCK": _pow2_at_least({cascade.var_rank(var)}, 16)'
                     for var in schedule.held)
    lines.append(f"held = {{{held}}}")
    group = schedule.group
    programs = schedule.batch if group is None else group.programs(schedule.batch)
    batch = " * ".join(group.rank if group is not None and v == group.group else
                       cascade.var_rank(v) for v in programs) or "1"
    rows = cascade.var_rank(schedule.row)
    if group is not None:
        # rows packed with the query heads of a group: G = ceil(H / KH) per query row,
        # indexed in 32 bits after the loops (schedule/lower_attention.py, _rows_after_loops)
        rows = f"(-(-{group.extent} // {group.rank}) * {rows})"
        block = f'tuning["{schedule.row}_BLOCK"]'
        checks = [*checks, f"if {rows} + {block} > 2**31:",
                  f'    raise ValueError(f"{schedule.name}: {{{rows}}} packed rows (the query '
                  f'heads of a group times the rows) do not fit its 32-bit row index; call it '
                  f'on fewer rows at a time")']
    tiles = f"-(-{rows} // tuning[\"{schedule.row}_BLOCK\"])"
    grid = f"{tiles}, {batch}"
    keys = cascade.root_rank(schedule.loops[0].extent) if schedule.loops else None
    split = []
    if schedule.splits is not None:
        # Programs per row tile along the keys (the module's _splits, or pinned), each
        # adding its keys' sums into zeros (zeroed per launch: autotuning launches again).
        knob = f'tuning["{schedule.splits}"]'
        grid += f", {knob}"
        split = [f"{knob} = _splits(tuning.get(\"{schedule.splits}\"), {tiles} * {batch}, "
                 f"{keys}, {_knob_value(schedule.loops[0].tile, schedule)}, device, "
                 f"stored_dtype)",
                 f"if {knob} > 1:",
                 *(f"    {output}.zero_()" for output in schedule.outputs)]
    call = [*split, *call.lines(schedule.name, grid)]
    if split_kv is not None:
        call = _split_kv_lines(split_kv, call, grid, f"{tiles} * {batch}",
                               schedule.loops[0].extent)
    if not per_call_configuration(schedule):
        return lines + [f'tuning = dict(TUNING_FUSED["{schedule.name}"])', *checks, *call]
    lines.append("")
    lines.append("def launch(tuning):")
    lines += [f"    {line}" for line in [*checks, *call]]
    lines.append("")
    lines.append(f'launch(_tuning("{schedule.name}", {rows}, {keys}, max(held.values(), '
                 f"default=0), out_dtype, device, launch))")
    return lines


def _split_kv_lines(split: SplitKernels, call: list[str], grid: str, programs: str,
                    steps: str) -> list[str]:
    """The launch with split-KV: the number of splits for this call (the module's
    _kv_splits: a pinned TUNING_FUSED number, else from the programs the row tiles
    give and the steps), then with more than one the partial kernel over them into
    float32 state buffers and the merge kernel, else the kernel alone (`call`)."""
    knob = split.knob
    lines = ["tuning = dict(tuning)       # (the knob taken out: not the kernel's)",
             f'{knob} = _kv_splits(tuning.pop("{knob}", None), {programs}, {steps}, device)',
             f"if {knob} > 1:"]
    body = [f"{buffer} = torch.empty(({knob}, {', '.join(ranks)}), device=device, "
            f"dtype=torch.float32)" for buffer, ranks in split.ranks.items()]
    body += split.partial_call.lines(split.partial_name, f"{grid}, {knob}")
    body += split.merge_call.lines(split.merge_name, grid)
    lines += [f"    {line}" for line in body]
    lines.append("else:")
    lines += [f"    {line}" for line in call]
    return lines


def per_call_configuration(schedule: KernelSchedule) -> bool:
    """Whether a kernel's tiles, warps and stages are chosen per call: the attention
    schedules (a row tile, key tiles); the loop schedule keeps its table's values."""
    return schedule.form in (Form.ATTENTION, Form.SPLIT)


def tuning_table(schedule: KernelSchedule) -> dict:
    """The kernel's TUNING_FUSED entry: each knob's value, None where the configuration
    per call chooses it (a knob the spec fixes keeps its value, pinned)."""
    per_call = per_call_configuration(schedule)
    table = {knob.name: None if per_call and not knob.fixed else knob.default
             for knob in schedule.knobs}
    for knob in (schedule.splits, schedule.kv_splits):
        if knob is not None:
            table[knob] = None              # programs along the keys: chosen per call
    table.update(schedule.launch)
    return table


def kernel_lines(kernel: kernel_ir.Kernel) -> list[str]:
    """A lowered kernel's Triton source: its signature, the checks of its knobs, its
    statements (printed by backends/triton_ir.py)."""
    return kernel_source(kernel.name, list(kernel.args), list(kernel.knobs),
                         list(kernel.knobs), kernel.least,
                         KernelPrinter().statements(kernel.body))


def _knob_value(knob: str, schedule: KernelSchedule) -> str:
    """The host's value of a block knob at launch: a held rank's tile (`held`) or the
    configuration's (`tuning`)."""
    held = {f"{v}_BLOCK" for v in schedule.held}
    return f"{'held' if knob in held else 'tuning'}[\"{knob}\"]"


def _flag_test(flag, schedule: KernelSchedule) -> str:
    """The host's test for a compile-time flag of the lowering."""
    if isinstance(flag, TmaLoads):
        return "tma"
    if isinstance(flag, BiasDots):
        # bfloat16 dots (Ampere or later, or the interpreter), exact key columns, a/s
        # far from overflow (schedule/biases.py)
        test = (f"(_target(device)[0] == \"interpreter\" or _target(device)[1] >= 80) and "
                f"{_knob_value(flag.block, schedule)} <= {MAX_KEY_BLOCK}")
        if flag.param is not None:
            test += (f" and 2.0 ** -{SCALE_EXPONENT} <= {flag.param} <= "
                     f"2.0 ** {SCALE_EXPONENT}")
        test += "".join(f" and abs({param}) <= 2.0 ** {PARAM_EXPONENT}"
                        for param in flag.bounded)
        return test
    if isinstance(flag, NarrowOffsets):
        reach = {}          # per tensor: its largest tile offset
        for tensor, position, knob in flag.terms:
            reach.setdefault(tensor, []).append(
                f"({_knob_value(knob, schedule)} - 1) * abs({tensor}.stride({position}))")
        sums = [" + ".join(terms) for terms in reach.values()]
        return f"max({', '.join(sums)}) < 2**31" if len(sums) > 1 else f"{sums[0]} < 2**31"
    return f"0 < {flag.param} < math.inf"


def printed(cascade: Cascade, lowered: LoweredKernel, checks: list[str] = ()) -> FusedKernel:
    """A fused schedule lowered to the kernel IR, printed as a Triton kernel and its
    launch: the arguments the schedule says and the host's offsets, the knobs and held
    ranks' tiles as constexprs (the dot's precision where there is a dot), the checks
    of the tunable knobs, the statements; `checks`: host lines run on the tuning table.
    NotFusable where Triton cannot spell a statement (printers raise Unsupported)."""
    source, call, body = printed_call(cascade, lowered)
    schedule = lowered.schedule
    return FusedKernel(schedule.name, source, launch_lines(cascade, schedule, call, checks),
                       schedule, body)


def printed_split_kv(cascade: Cascade, lowered: LoweredKernel, state: Cascade, plan,
                     partial: LoweredKernel, merge: LoweredKernel,
                     checks: list[str] = ()) -> FusedKernel:
    """A split kernel printed with its split-KV form (schedule/split_kv.py): the partial
    and merge kernels (`state`: the cascade with the state buffers as tensors), and the
    host's launch choosing per call between them and the kernel alone."""
    partial_source, partial_call, _ = printed_call(state, partial)
    merge_source, merge_call, _ = printed_call(state, merge)
    # The merge kernel takes the call's row tile and the held tiles; not its warps,
    # stages or key tile.
    row_knob = merge.schedule.knobs[0].name
    merge_call.constants = [f'{row_knob}=tuning["{row_knob}"]'] + [
        c for c in merge_call.constants if c != "**tuning"]
    split = SplitKernels(plan.knob, partial.schedule.name, merge.schedule.name,
                         partial_call, merge_call,
                         {b: state.tensors[b].ranks[1:] for b in plan.buffers})
    schedule = lowered.schedule.with_(kv_splits=plan.knob)
    source, call, body = printed_call(cascade, lowered)
    return FusedKernel(schedule.name, source + [""] + partial_source + [""] + merge_source,
                       launch_lines(cascade, schedule, call, checks, split), schedule,
                       body, split)


def printed_call(cascade: Cascade, lowered: LoweredKernel) -> tuple[list[str], KernelCall,
                                                                    tuple]:
    """A lowered kernel's Triton source, what its host call passes, and the statements
    it was printed from."""
    schedule = lowered.schedule
    args, host = kernel_arguments(cascade, schedule)
    offsets = {offset.name: f'_outwards({sympy.pycode(offset.value)}, "{offset.rounding}")'
               for offset in lowered.offsets}
    args += list(offsets)
    host += list(offsets.values())
    blocks = [knob.name for knob in schedule.knobs] + [f"{v}_BLOCK" for v in schedule.held]
    if schedule.splits is not None:
        blocks.append(schedule.splits)
    if schedule.uses_dot:
        blocks.append("DOT_DTYPE")
    # Compile-time flags the host computes per call (schedule/scales.py: a param's sign;
    # schedule/interior.py: 32-bit tile offsets, TMA; schedule/biases.py: a term's dot).
    body, tests = lowered.body, {}
    for flag in lowered.flags:
        if isinstance(flag, NarrowIndices):
            body, tests[flag.name] = _indices_bounded(cascade, lowered, flag, offsets)
    kept = [flag for flag in lowered.flags if tests.get(flag.name, "") is not None]
    blocks += [flag.name for flag in kept]
    flags = [f"{flag.name}={tests.get(flag.name) or _flag_test(flag, schedule)}"
             for flag in kept]
    setup = []
    for flag in lowered.flags:
        if isinstance(flag, TmaLoads):
            # the module's _tma_suits / _descriptor: TMA descriptors where the GPU and
            # the tensors allow, else None (the kernel then reads through pointers)
            reads = [(tensor, "[" + ", ".join(
                "1" if knob is None else _knob_value(knob, schedule)
                for knob in block) + "]") for tensor, block in flag.descriptors]
            setup.append(f"tma = _tma_suits(device, "
                         f"{', '.join(f'({t}, {b})' for t, b in reads)})")
            for tensor, block in reads:
                args.append(f"{tensor}_desc")
                host.append(f"_descriptor(tma, {tensor}, {block})")
    knobs = [knob.name for knob in schedule.knobs if not knob.fixed]
    try:
        lines = KernelPrinter().statements(body)
    except kernel_ir.Unsupported as reason:
        raise NotFusable(str(reason)) from None
    source = kernel_source(schedule.name, args, blocks, knobs,
                           16 if schedule.uses_dot else 1, lines)
    # The dot precision follows the inputs' dtype (_dot_dtype in the module); `flags`:
    # keyword arguments the host computes per call (a param's sign).
    dot_dtype = "_buffer_dot(dot_dtype)" if schedule.buffered_dots else "dot_dtype"
    constants = ["**tuning", "**held"] + \
        ([f"DOT_DTYPE={dot_dtype}"] if schedule.uses_dot else []) + flags
    return source, KernelCall(host, constants, setup), body


def index_bounds(cascade: Cascade, lowered: LoweredKernel, flag: str) -> tuple | None:
    """The bounds the host tests for a lowered kernel's 32-bit indices
    (backends/triton_indices.py), in terms of its knobs, strides and host offsets."""
    schedule = lowered.schedule
    knobs = {knob.name for knob in schedule.knobs} | {f"{v}_BLOCK" for v in schedule.held}
    if schedule.splits is not None:
        knobs.add(schedule.splits)
    strides = {f"{tensor}_s{position}": (tensor, position)
               for tensor in (*schedule.outputs, *schedule.inputs)
               for position in range(len(cascade.tensors[tensor].ranks))}
    return triton_indices.index_bounds(lowered.body, flag,
                                       {offset.name for offset in lowered.offsets}, knobs,
                                       strides)


def _indices_bounded(cascade: Cascade, lowered: LoweredKernel, flag: NarrowIndices,
                     offsets: dict[str, str]):
    """The kernel's statements and the host's test of `flag` (its 32-bit indices: every
    int32 value computed from them fits, backends/triton_indices.py), or the statements
    in int64 only and None where a value cannot be bounded. `offsets`: each host offset's
    expression."""
    schedule, body = lowered.schedule, lowered.body
    bounds = index_bounds(cascade, lowered, flag.name)
    if bounds is None:
        return triton_indices.wide_only(body, flag.name), None
    if not bounds:
        return body, "True"

    def text(bound) -> str:
        if isinstance(bound, int):
            return str(bound)
        if isinstance(bound, triton_indices.Leaf):
            return {"size": lambda b: b.name,
                    "knob": lambda b: _knob_value(b.name, schedule),
                    "stride": lambda b: f"abs({b.name}.stride({b.position}))",
                    "offset": lambda b: f"abs({offsets[b.name]})",
                    "grid": lambda b: f"grid[{b.position}]"}[bound.kind](bound)
        if isinstance(bound, triton_indices.Sum):
            return "(" + " + ".join(text(t) for t in bound.terms) + ")"
        if isinstance(bound, triton_indices.Product):
            return " * ".join(text(t) for t in bound.factors)
        return "max(" + ", ".join(text(t) for t in bound.terms) + ")"

    largest = bounds[0] if len(bounds) == 1 else triton_indices.Largest(bounds)
    return body, f"{text(largest)} < 2**31"
