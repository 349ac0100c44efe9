"""Cascade -> the source of a self-contained Python module (templates/module.py.j2).

The module imports only torch and math, binds and checks shapes on every call, and
carries the spec and its analysis in its docstring.
"""

from __future__ import annotations

import hashlib
import keyword
from importlib import resources

import jinja2

from .. import __version__
from ..analysis import analyze
from ..analysis.presence import absent_tensors
from ..diagnostics import SpecError
from ..ir import Cascade
from ..ir.divisors import checked_divisors, divisor_problem
from .printers import PythonScalarPrinter
from .torch_backend import TorchEmitter
from .fused import NotFusable, fuse_stages
from .triton_backend import HELPERS, TritonEmitter, Unsupported
from ..transform import DEFAULT_TILE, Rewritten, rewrite as derive

# Names the generated code defines itself; a spec may not use them.
GENERATED_NAMES = frozenset({
    # the module and its host code
    "device", "sizes", "params", "origin", "out_dtype", "math", "torch", "warnings",
    "reference", "overrides", "annotations", "os", "triton", "tl", "tuning", "dot_dtype",
    "fused", "self", "backend", "lower_offset", "upper_offset",
    # kernel locals and launch constants
    "lanes", "live", "row_live", "batch", "rest", "pid", "start", "flat", "rflat", "r0",
    "term", "ok", "step", "DOT_DTYPE", "RBLOCK",
    # builtins the generated code calls
    "float", "int", "range", "dict", "set", "next", "sorted", "super", "getattr",
    "isinstance", "len", "tuple", "str", "repr", "TypeError", "ValueError", "RuntimeError"})



def _backends_note(fallback: str | None, count: int, schedule: str) -> str:
    torch_note = "torch: the reference, one block of torch code per Einsum (any device)."
    if fallback is not None:
        return f"{torch_note}\ntriton: {fallback}; backend='triton' warns and runs torch."
    return (f"{torch_note}\ntriton: {schedule}.\ntriton-unfused: {count} kernel(s), one per "
            f"Einsum, intermediates in global memory (see docs/codegen.md).")


def class_name(name: str) -> str:
    """`softmax_3pass` -> `Softmax3pass` (LANGUAGE.md, `attention NAME`)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Attention"


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(lambda name: resources.files("einsumattn").joinpath(
        "templates", name).read_text("utf-8"))
    return jinja2.Environment(loader=loader, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined, autoescape=False)


def _check_names(cascade: Cascade) -> None:
    if not cascade.name.isidentifier() or keyword.iskeyword(cascade.name):
        raise SpecError(f"the module name '{cascade.name}' is not a Python identifier",
                        hint="name the attention with an `attention NAME` line (letters, "
                             "digits and '_'), or rename the file",
                        source=cascade.source)
    names = set(cascade.tensors) | set(cascade.params) | set(cascade.ranks) | \
        {r.var for r in cascade.ranks.values()}
    clash = sorted(n for n in names if n in GENERATED_NAMES or n.startswith("_")
                   or n.endswith("_ok") or keyword.iskeyword(n))
    if clash:
        declared = cascade.tensors.get(clash[0]) or cascade.params.get(clash[0]) or \
            cascade.ranks.get(clash[0])
        raise SpecError(f"the name '{clash[0]}' is used by the generated code",
                        span=getattr(declared, "span", None),
                        hint="rename it in the spec (names may not start with '_', end in "
                             "'_ok', be a Python keyword, or be one of: " +
                             ", ".join(sorted(GENERATED_NAMES)) + ")",
                        source=cascade.source)


def _bind_lines(cascade: Cascade) -> list[str]:
    """Statements of `_bind`: sizes from inputs, params, then the splits' sizes."""
    lines = []
    for tensor in cascade.inputs:
        ranks = ", ".join(f'"{r}"' for r in tensor.ranks)
        ranks = f"({ranks},)" if len(tensor.ranks) == 1 else f"({ranks})"
        lines.append(f'_take(sizes, origin, "{tensor.name}", {tensor.name}, {ranks})')
    printer = PythonScalarPrinter({**{r: f'sizes["{r}"]' for r in cascade.ranks},
                                   **{p: f'params["{p}"]' for p in cascade.params}})

    def split_lines(param_factors: bool) -> None:
        for split in cascade.splits:
            if isinstance(split.factor, str) and split.factor in cascade.params:
                if not param_factors:
                    continue
                lines.append(f'if not float(params["{split.factor}"]).is_integer() or '
                             f'params["{split.factor}"] < 1:')
                lines.append(f'    raise ValueError("param {split.factor} splits rank '
                             f'{split.parent} and must be a positive integer")')
                factor = f'int(params["{split.factor}"])'
            elif param_factors:
                continue
            elif isinstance(split.factor, str):
                factor = f'sizes["{split.factor}"]'
            else:
                factor = str(split.factor)
            lines.append(f'sizes["{split.inner}"] = {factor}')
            lines.append(f'sizes["{split.outer}"] = -(-sizes["{split.parent}"] // '
                         f'sizes["{split.inner}"])')

    split_lines(param_factors=False)
    lines.append("params = dict(overrides)")
    for param in cascade.params.values():
        if param.default is None:
            lines.append(f'if "{param.name}" not in params:')
            lines.append(f'    raise TypeError("param {param.name} has no default and was '
                         f'not given")')
        else:
            lines.append(f'params.setdefault("{param.name}", {printer(param.default)})')
    split_lines(param_factors=True)
    for divisor, read in checked_divisors(cascade):   # e.g. K[b, h // (H // KH), m, e]
        lines.append(f"if {printer(divisor)} < 1:")
        lines.append(f"    raise ValueError({divisor_problem(divisor, read)!r}"
                     f".format(value={printer(divisor)}, **sizes))")
    return lines


def _triton(cascade: Cascade) -> dict:
    """The Triton part of the module, or the reason there is none."""
    try:
        emitter = TritonEmitter(cascade)
        kernels = emitter.kernels()
        host = emitter.host_lines(kernels)
    except Unsupported as reason:
        return {"triton_fallback": f"not expressible in Triton yet: {reason}",
                "kernel_sources": [], "host_lines": [], "tuning": {}, "helpers": "",
                "fused_source": None, "fused_host": [], "fused_tuning": {},
                "schedule_note": "", "not_fused": str(reason), "dot_rounding": {}}
    why = None
    try:
        fused, cut = fuse_stages(cascade)
    except NotFusable as reason:
        fused, cut, why = [], None, str(reason)
    if len(fused) == 1:
        note = fused[0].description
    elif fused:
        note = (f"{len(fused)} fused kernels, cut because {cut}: "
                + "; then ".join(k.description for k in fused))
    else:
        note = f"the unfused schedule (not fusable: {why})"
    return {"triton_fallback": None,
            "kernel_sources": ["\n".join(k.source) for k in kernels],
            "host_lines": host,
            "tuning": {k.einsum.tensor: k.tuning for k in kernels},
            "helpers": HELPERS.strip(),
            "fused_source": "\n\n".join("\n".join(k.source) for k in fused) or None,
            "fused_host": [line for k in fused for line in k.host],
            "fused_tuning": {k.name: k.tuning for k in fused},
            "dot_rounding": {e: n for k in fused for e, n in k.facts.get("rounded", {}).items()},
            "not_fused": why,
            "schedule_note": note}


class Plan:
    """Which cascade each backend runs. The torch reference is always the spec's own
    cascade (the readable statement of the math); the Triton backends run the derived
    cascade of `einsumattn rewrite`, unless rewriting is off, finds nothing, or the
    derived cascade does not fuse where the spec's own does (then the spec's own, said
    in the note)."""

    def __init__(self, cascade: Cascade, *, rewrite: bool = True, tile: int = DEFAULT_TILE):
        self.cascade = cascade
        self.rewritten: Rewritten | None = derive(cascade, tile=tile) if rewrite else None
        self.kernel = cascade
        self.note = "the spec's own cascade (rewrites off: --no-rewrite)" \
            if not rewrite else "the spec's own cascade (no rewrite applies)"
        self.triton = _triton(cascade)
        if self.rewritten is not None and self.rewritten.steps:
            change = self.rewritten.change()
            derived = _triton(self.rewritten.cascade)
            if derived["fused_source"] is None and self.triton["fused_source"] is not None:
                self.note = (f"the spec's own cascade: the derived one ({change}) does "
                             f"not fuse ({derived['not_fused']})")
            else:
                self.kernel, self.triton = self.rewritten.cascade, derived
                self.note = f"the derived cascade ({change}; einsumattn rewrite prints it)"

    def summary(self) -> str:
        return _backends_note(self.triton["triton_fallback"], len(self.kernel.einsums),
                              self.triton["schedule_note"]) + f"\nTriton kernels compute {self.note}."


def backends_summary(cascade: Cascade, *, rewrite: bool = True,
                     tile: int = DEFAULT_TILE) -> str:
    """What each backend of the compiled module runs, and why (shown at compile time)."""
    return Plan(cascade, rewrite=rewrite, tile=tile).summary()


def _pass_summary(report) -> str:
    """The report's pass summary and reasons (the full report is a command away:
    einsumattn analyze)."""
    lines = report.to_text().split("\n")
    cut = next((i for i, line in enumerate(lines) if line.startswith("Cost")), len(lines))
    return "\n".join(lines[:cut]).rstrip()


def generate(cascade: Cascade, *, module_name: str | None = None, rewrite: bool = True,
             tile: int = DEFAULT_TILE) -> str:
    """The source of the generated module for a cascade."""
    _check_names(cascade)
    plan = Plan(cascade, rewrite=rewrite, tile=tile)
    kernel = plan.kernel
    _check_names(kernel)
    report = analyze(kernel)
    triton = plan.triton
    source_text = cascade.source.text if cascade.source else ""
    source_name = cascade.source.filename if cascade.source else "<spec>"
    absent = absent_tensors(cascade)
    first = cascade.inputs[0].name if cascade.inputs else None
    if first is None:
        raise SpecError("a spec needs at least one input to compile",
                        hint="declare the tensors it computes from with 'input'",
                        source=cascade.source)
    out_dtype = ("next((t.dtype for t in (" + ", ".join(t.name for t in cascade.inputs) +
                 ",) if t.is_floating_point()), torch.float32)")
    fixed = {r.name: r.fixed for r in cascade.ranks.values()
             if r.fixed is not None and r.name not in
             {p for s in cascade.splits for p in (s.outer, s.inner)}}
    analysis = _pass_summary(analyze(cascade))
    if kernel is not cascade and plan.rewritten is not None:
        analysis += ("\n\nThe Triton kernels compute the derived cascade (einsumattn "
                     "rewrite):\n\n" + _pass_summary(report) + "\n\n" +
                     plan.rewritten.text().rstrip())
    analysis = analysis.replace("\\", "\\\\").replace('"""', "\'\'\'")
    context = {
        "name": cascade.name,
        "class_name": class_name(cascade.name),
        "function_name": cascade.name,
        "module_name": module_name or cascade.name,
        "version": __version__,
        "source_name": source_name,
        "spec_source": source_text.strip().replace("\\", "\\\\").replace('"""', "'''"),
        "spec_hash": hashlib.sha256(source_text.encode("utf-8")).hexdigest(),
        "analysis": analysis,
        **triton,
        "has_triton": triton["triton_fallback"] is None,
        "backends_note": plan.summary(),
        "inputs": [t.name for t in cascade.inputs],
        "outputs": list(cascade.outputs),
        "params": list(cascade.params.values()),
        "ranks": list(kernel.ranks),
        "first_input": first,
        "out_dtype": out_dtype,
        "float_inputs": [t.name for t in cascade.inputs],
        "fixed_sizes": repr(fixed),
        "fixed_origin": repr({r: "its fixed size in the spec" for r in fixed}),
        # The kernel cascade's ranks include the spec's, plus the splits a rewrite added.
        "bind_lines": _bind_lines(kernel),
        "body_lines": TorchEmitter(cascade).emit(),
        "absent": absent,
        "compile_options": {"rewrite": rewrite, "tile": tile},
    }
    return _environment().get_template("module.py.j2").render(**context)


__all__ = ["generate", "class_name"]
