"""Equivalence checking of generated backends against the float64 oracle.

Shared by `einsumattn check` and the test suite, so both judge with the same tolerance.

The oracle evaluates the *same rounded inputs* a backend receives (cast to the dtype, then
to float64), so input rounding needs no tolerance. What remains is the backend's own
arithmetic: intermediates in float32 and the final cast of the outputs.

Tolerance, per output element (the one place it is stated):

    |out - ref| <= u_out * |ref| + K * u_f32 * S * max(1, max|ref|),   K = 32

- u_out: unit roundoff of the output dtype (float16 2**-11, bfloat16 2**-8, float32
  2**-24): the final cast alone may move a value by that relative amount.
- u_f32 * S: a float32 intermediate of magnitude S carries an absolute rounding error of
  about S * u_f32; exp() turns an absolute error d in its argument into a relative error
  d, so a softmax over logits of size S is only good to about S * u_f32 relative. S is
  the largest finite magnitude among the inputs and the oracle's intermediates, which is
  what makes logits of 1e4 checkable at all.
- K = 32: rounding accumulates along reductions, and the tree reductions used here
  (torch's sums, tl.sum, tl.dot) grow it like log2 of the length: 32 covers any length
  up to 2**32. Measured on the examples, errors stay below K = 1 (about 0.25 at logits
  of ~450), so the bound is tight enough that a wrong mask or a misplaced rescale, which
  moves a result by far more, cannot hide in it.

Below the output dtype's smallest normal (float16 6.1e-5; float32 and bfloat16 1.2e-38)
a value has only absolute precision, and hardware and libraries may flush it to zero
(flush-to-zero on GPUs; torch's float32 sigmoid(-90) is 0, not the subnormal 8.2e-40):

    allowed = max(allowed, smallest normal of the output dtype)   where |ref| is below it

so a difference inside the subnormal range is no mismatch, while one at a normal |ref|
is judged as above.

One more term applies to the fused Triton kernels with float16/bfloat16 inputs, whose
tl.dot operands are in the inputs' precision (tensor cores): a computed operand, like the
probabilities of P V, is rounded to that dtype before the dot. For those kernels

    allowed += E_out

where E_out is the first-order bound of how far those roundings (by the dtype's u, per
rounded operand; the module lists them in DOT_ROUNDING) can move the output, evaluated
exactly by the oracle on the kernels' own cascade (analysis/roundoff.py). For softmax
attention it is u * sum_m P|V| / sum_m P per output element: the rounding's true reach,
not a constant widened until the kernel passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluate import evaluate, overflowing
from .ir import Cascade
from .ir.divisors import checked_divisors
from .ir.expr import Const, Expr, Op

UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24}
# Smallest normal numbers: below them a value is subnormal (absolute precision only).
SMALLEST_NORMAL = {"float16": 2.0 ** -14, "bfloat16": 2.0 ** -126, "float32": 2.0 ** -126}
ACCUMULATION_FACTOR = 32


@dataclass
class Comparison:
    output: str
    max_error: float
    allowed: float        # the tolerance at the worst element
    worst_index: tuple
    ok: bool

    def describe(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (f"{self.output}: max |error| {self.max_error:.3g} (allowed {self.allowed:.3g} "
                f"at {self.worst_index}) {verdict}")


def magnitude(values) -> float:
    """Largest finite |x| over arrays (1.0 if none)."""
    largest = 1.0
    for array in values:
        array = np.asarray(array, dtype=np.float64)
        finite = array[np.isfinite(array)]
        if finite.size:
            largest = max(largest, float(np.abs(finite).max()))
    return largest


# Largest finite values: an exact intermediate past float32's range, or an output past
# its dtype's, cannot be represented by a backend that follows the language.
LARGEST = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028e38}
# Exact intermediates within this factor of float32's largest value are not judged:
# a backend may sum or multiply the same terms in another order (a kernel's partial sums,
# q * (scale * s) for (q * scale) * s), and near the top of the range that alone
# overflows where the Einsum as written does not (gla_recurrent at scale 10: an exact
# output of 2.94e38, inf in the Triton kernel).
FLOAT32_HEADROOM = 2.0 ** 10


def representable(cascade: Cascade, inputs: dict, dtype: str,
                  params: dict | None = None) -> bool:
    """Whether the exact intermediates fit float32 and the outputs fit `dtype`: none
    past float64's range either (where the oracle's infinity is no answer)."""
    reference = evaluate(cascade, inputs, params, intermediates=True)
    if any(not np.isfinite(v).all() for v in reference.values()) and \
            overflowing(cascade, inputs, params):
        return False
    if magnitude(reference.values()) > LARGEST["float32"] / FLOAT32_HEADROOM:
        return False
    return magnitude(reference[name] for name in cascade.outputs) <= LARGEST[dtype]


def well_conditioned(cascade: Cascade, inputs: dict, dtype: str,
                     params: dict | None = None) -> bool:
    """Whether plain float32 arithmetic can reach the exact result here: the oracle run
    in float32 must itself pass `compare`, both with numpy's gradual underflow and with
    subnormal results flushed to zero. When it does not (elu(-100) + 1 is 0 in float32
    and 3.7e-44 exactly, so a ratio of such values is 0/0; log(sigmoid(-90)) is -90 with
    the subnormal sigmoid 8.2e-40 and -inf where it is flushed, as on a GPU or in
    torch), a float32 backend need not agree, and a mismatch says nothing about the
    generated code."""
    return all(_float32_agrees(probe, cascade, inputs, dtype, params)
               for probe in (cascade, flushing_subnormals(cascade))) and \
        not _digits_lost(cascade, inputs, params)


def _digits_lost(cascade: Cascade, inputs: dict, params: dict | None) -> bool:
    """Whether the oracle run in float32 is off by more than the exact value itself at
    some output point: every digit lost (linear attention's elu(x) + 1 of a scale-100
    x below -17 is 0 or 6e-8 in float32, as rounding falls, and its denominator 0 or
    not). `compare` may still pass it there, its tolerance being scaled by the largest
    intermediates; a backend's float32 arithmetic can then give any value, NaN too."""
    exact = evaluate(cascade, inputs, params)
    rounded = evaluate(cascade, inputs, params, dtype=np.float32)
    for name in cascade.outputs:
        ref, got = exact[name], rounded[name].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            lost = np.isfinite(ref) & (np.abs(ref) > 0) & \
                ~(np.abs(got - ref) <= np.abs(ref))
        if lost.any():
            return True
    return False


def _float32_agrees(probe: Cascade, cascade: Cascade, inputs: dict, dtype: str,
                    params: dict | None) -> bool:
    """Whether `probe` (the cascade, or a variant of it) evaluated in float32 passes
    `compare` against the float64 oracle of `cascade`."""
    outputs = evaluate(probe, inputs, params, dtype=np.float32)
    return all(r.ok for r in compare(cascade, inputs, tuple(outputs.values()), dtype, params))


def flushing_subnormals(cascade: Cascade) -> Cascade:
    """The cascade with every value that can come out subnormal flushed to zero where
    it is computed: float32 arithmetic as flush-to-zero hardware does it."""
    def flushed(expr: Expr | None) -> Expr | None:
        if not isinstance(expr, Op):
            return expr
        rebuilt = Op(expr.op, tuple(flushed(arg) for arg in expr.args), expr.span)
        return _flush(rebuilt) if expr.op in _UNDERFLOWING else rebuilt

    from dataclasses import replace

    return replace(cascade, einsums=tuple(
        replace(e, body=flushed(e.body), init=flushed(e.init)) for e in cascade.einsums))


# The operations whose result can be subnormal when their operands are normal numbers:
# products and quotients of small values, and exp's tail (sigmoid's, softplus's, silu's too). Sums cannot
# fall below the spacing of their operands, and the other functions map normal
# operands to normal results (or to exact zeros).
_UNDERFLOWING = frozenset({"*", "/", "**", "exp", "sigmoid", "softplus", "logsigmoid", "silu"})


def _flush(expr: Op) -> Op:
    """`expr * (|expr| >= smallest normal)`: 0 below it; NaN, inf and absent points
    stay as they are (a `where` would make an absent point present). The oracle
    evaluates `expr` twice, so nested products cost twice per level: only a probe run
    after a mismatch pays it."""
    normal = Op(">=", (Op("abs", (expr,)), Const(SMALLEST_NORMAL["float32"])))
    return Op("*", (expr, normal))


@dataclass
class DotRounding:
    """A backend's rounded tl.dot operands: the cascade its kernels compute and, per
    Einsum of it, how many of the dot's operands are rounded to the inputs' dtype."""
    cascade: Cascade
    operands: dict


def dot_rounding(cascade: Cascade, module) -> DotRounding | None:
    """What the fused Triton kernels of a generated module round (None: nothing). The
    kernels' cascade is the one the module's SCHEDULE carries (read, not rebuilt)."""
    operands = getattr(module, "DOT_ROUNDING", None)
    if not operands:
        return None
    from .diagnostics import Source
    from .loader import load_source

    schedule = module.SCHEDULE
    kernel = load_source(Source(schedule["cascade"], "<SCHEDULE['cascade']>")) \
        if schedule["derived"] else cascade
    return DotRounding(kernel, dict(operands))


def _rounding_bounds(rounding: DotRounding | None, inputs: dict, dtype: str,
                     params: dict | None) -> dict:
    """Output -> its first-order bound from the dot roundings (empty at float32, where
    the operands are not rounded)."""
    if rounding is None or dtype == "float32":
        return {}
    from .analysis.roundoff import roundoff_cascade

    u = UNIT_ROUNDOFF[dtype]
    extended, names = roundoff_cascade(rounding.cascade,
                                       {t: k * u for t, k in rounding.operands.items()})
    values = evaluate(extended, inputs, params)
    return {output: np.abs(values[bound]) for output, bound in names.items()}


def compare(cascade: Cascade, inputs: dict, outputs, dtype: str,
            params: dict | None = None, rounding: DotRounding | None = None) \
        -> list[Comparison]:
    """Compare backend `outputs` (a tensor or tuple, in output order) with the oracle on
    the same inputs (already rounded to `dtype` by the caller). `rounding`: the dot
    operands the backend rounds, when it does (fused Triton kernels)."""
    reference = evaluate(cascade, inputs, params, intermediates=True)
    scale = magnitude(reference.values())
    rounding_bounds = _rounding_bounds(rounding, inputs, dtype, params)
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    results = []
    for name, got in zip(cascade.outputs, outputs):
        got = _to_numpy(got)
        ref = reference[name]
        if got.shape != ref.shape:
            results.append(Comparison(name, float("inf"), 0.0, (), False))
            continue
        allowed = UNIT_ROUNDOFF[dtype] * np.abs(ref) + ACCUMULATION_FACTOR * \
            UNIT_ROUNDOFF["float32"] * scale * max(1.0, magnitude([ref]))
        if name in rounding_bounds:
            allowed = allowed + rounding_bounds[name]
        # Subnormal range of the output dtype: absolute precision only, possibly flushed.
        tiny = SMALLEST_NORMAL[dtype]
        allowed = np.where(np.abs(ref) < tiny, np.maximum(allowed, tiny), allowed)
        # A non-finite reference (NaN, +-inf) is matched exactly: NaN by NaN, an infinity
        # by the same infinity. (Its tolerance u*|ref| would be inf or NaN, passing any
        # value or none.)
        allowed = np.where(np.isfinite(ref), allowed, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            same = (got == ref) | (np.isnan(got) & np.isnan(ref))
            error = np.where(same, 0.0, np.abs(got - ref))
            error = np.where(np.isnan(error), np.inf, error)   # NaN against a number
            # A NaN tolerance (a rounding bound past float64's range) allows nothing.
            excess = np.where(np.isnan(allowed), np.inf, error - allowed)
        worst = np.unravel_index(int(np.nanargmax(excess)), excess.shape) if excess.size \
            else ()
        ok = bool(np.all(error <= allowed)) if error.size else True
        results.append(Comparison(name, float(np.nanmax(error)) if error.size else 0.0,
                                  float(allowed[worst]) if error.size else 0.0,
                                  tuple(int(i) for i in worst), ok))
    return results


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


# ------------------------------------------------------------------ the check runner

SIZES = (1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 17)
MAX_POINTS = 30_000     # the oracle materialises iteration spaces: keep them small
DTYPES = ("float32", "float16", "bfloat16")
SCALES = (1.0, 10.0, 100.0)   # 100 gives attention logits of order 1e4
# Triton's interpreter runs a kernel's programs one after another, each at about 0.1 s
# whatever its tiles hold (every operation is a numpy call on a whole block): a case's
# cost is its number of programs, at most the points of the ranks that index every
# output (batch, head, rows). Interpreted, cases keep those under this bound; each rank
# still takes every size in SIZES, only not all of them at their largest at once.
INTERPRETED_PROGRAMS = 128


@dataclass
class Case:
    sizes: dict
    dtype: str
    scale: float
    contiguous: bool
    seed: int
    # Inputs broadcast along their first rank (a stride-0 view of one slice, as
    # `x[:1].expand(...)` gives): one K/V shared by every batch, say.
    broadcast: bool = False

    def describe(self) -> str:
        sizes = ",".join(f"{k}={v}" for k, v in self.sizes.items())
        layout = "contiguous" if self.contiguous else "non-contiguous"
        if self.broadcast:
            layout += ", broadcast over the first rank"
        return f"sizes {sizes}, {self.dtype}, scale {self.scale:g}, {layout}, seed {self.seed}"


def case_inputs(cascade: Cascade, case: Case, device: str | None = None) -> dict:
    """Random inputs for a case: normal values times the scale, rounded to the dtype;
    non-contiguous ones are transposed views of a transposed copy; broadcast ones are
    stride-0 views of their first slice along the first rank."""
    import torch

    from .ir import bind

    binding = bind(cascade, sizes=case.sizes)
    generator = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    inputs = {}
    for tensor in cascade.inputs:
        shape = binding.extent(cascade, tensor.name)
        value = (torch.randn(shape, generator=generator, dtype=torch.float64) * case.scale)
        value = value.to(dtype)
        if device is not None:
            value = value.to(device)
        if not case.contiguous and value.dim() >= 2:
            value = value.transpose(-1, -2).contiguous().transpose(-1, -2)
        if case.broadcast and value.dim() >= 2:
            value = value[:1].expand(value.shape)
        inputs[tensor.name] = value
    return inputs


def drawn_ranks(cascade: Cascade) -> list[str]:
    """The ranks a case gives sizes to: neither fixed, nor a split's part, nor sized by
    other dims (`dims P = M` is computed from M, never drawn)."""
    return [r.name for r in cascade.ranks.values()
            if r.fixed is None and r.split_of is None and not r.sized]


def cases(cascade: Cascade, max_programs: int | None = None):
    """A hypothesis strategy of `Case`s for a cascade; with `max_programs`, only cases
    whose ranks common to every output span at most that many points (a bound on a
    kernel's grid: see INTERPRETED_PROGRAMS)."""
    from hypothesis import assume, strategies as st

    free = drawn_ranks(cascade)
    divisors = checked_divisors(cascade)
    sized = any(r.sized for r in cascade.ranks.values())

    @st.composite
    def build(draw):
        sizes = {r: draw(st.sampled_from(SIZES), label=r) for r in free}
        # Sizes the spec rules out (an index divisor H // KH below 1, a sized dim below
        # 1) are not a case.
        assume(not (divisors or sized) or _bindable(cascade, sizes))
        known = _bound_sizes(cascade, sizes) if sized else sizes
        points = 1
        for einsum in cascade.einsums:
            space = 1
            for var in einsum.variables:
                rank = cascade.var_rank(var)
                root = cascade.root_rank(rank)
                space *= known.get(root, cascade.ranks[root].fixed or 1)
            points = max(points, space)
        assume(points <= MAX_POINTS)
        if max_programs is not None:
            assume(_output_points(cascade, known) <= max_programs)
        return Case(sizes, draw(st.sampled_from(DTYPES), label="dtype"),
                    draw(st.sampled_from(SCALES), label="scale"),
                    draw(st.booleans(), label="contiguous"),
                    draw(st.integers(0, 2 ** 16), label="seed"),
                    draw(st.booleans(), label="broadcast"))
    return build()


def _output_points(cascade: Cascade, sizes: dict) -> int:
    """The points of the (root) ranks that index every output: a bound on the programs
    of the kernels that compute them, whichever schedule tiles them."""
    common = None
    for name in cascade.outputs:
        ranks = {cascade.root_rank(r) for r in cascade.tensors[name].ranks}
        common = ranks if common is None else common & ranks
    points = 1
    for root in common or ():
        points *= sizes.get(root, cascade.ranks[root].fixed or 1)
    return points


def _bound_sizes(cascade: Cascade, sizes: dict) -> dict:
    """Every rank's size at the drawn sizes (sized dims computed)."""
    from .ir import bind

    return bind(cascade, sizes=sizes).sizes


def _bindable(cascade: Cascade, sizes: dict) -> bool:
    from .diagnostics import BindError
    from .ir import bind

    try:
        bind(cascade, sizes=sizes)
    except BindError:
        return False
    return True


def _cotangents(cascade: Cascade, grad, inputs: dict, seed: int) -> dict:
    """A random cotangent per output (float32, on the inputs' device), by the
    gradient cascade's names: the loss is sum over outputs of <dO, O>."""
    import torch

    from .ir import bind

    first = next(iter(inputs.values()))
    generator = torch.Generator().manual_seed(seed)
    sizes = bind(cascade, shapes={k: tuple(v.shape) for k, v in inputs.items()}).sizes
    return {grad.cotangents[o]: torch.randn(
        tuple(sizes[r] + (cascade.tensors[o].iterative == i)
              for i, r in enumerate(cascade.tensors[o].ranks)),
        generator=generator).to(first.device) for o in cascade.outputs}


def _gradients(outputs, leaves: dict, cascade: Cascade, grad, inputs: dict,
               cotangents: dict) -> list:
    """`loss.backward()` from a backend's outputs (computed from `leaves`) against the
    gradient cascade (transform/grad.py) evaluated by the oracle, float32: the loss is
    sum over outputs of <dO, O> for the given cotangents."""
    import torch

    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((o.float() * cotangents[grad.cotangents[name]]).sum()
               for o, name in zip(outputs, cascade.outputs))
    loss.backward()
    got = tuple(leaves[x].grad if leaves[x].grad is not None else torch.zeros_like(leaves[x])
                for x in grad.gradients)
    return compare(grad.cascade, {**inputs, **cotangents}, got, "float32")


def finite_differences(cascade: Cascade, grad, sizes: dict, seed: int) \
        -> tuple[float, float, dict]:
    """(central difference, gradient cascade, the gradient cascade's values) of L = sum
    over outputs of <dO, O> along a random direction of every input the gradient covers,
    in float64 with the oracle: a check of the derivation that does not use it."""
    import numpy as np

    from .evaluate import evaluate

    rng = np.random.default_rng(seed)
    inputs = {name: value.double().numpy() for name, value in
              case_inputs(cascade, Case(sizes, "float32", 1.0, True, seed)).items()}
    outputs = evaluate(cascade, inputs)
    cotangents = {grad.cotangents[o]: rng.standard_normal(np.shape(outputs[o]))
                  for o in cascade.outputs}
    grads = evaluate(grad.cascade, {**inputs, **cotangents})
    direction = {k: rng.standard_normal(np.shape(v)) if k in grad.gradients
                 else np.zeros_like(v) for k, v in inputs.items()}

    def loss(t: float) -> float:
        moved = evaluate(cascade, {k: inputs[k] + t * direction[k] for k in inputs})
        return float(sum((moved[o] * cotangents[grad.cotangents[o]]).sum()
                         for o in cascade.outputs))

    step = 1e-6        # central differences in float64: O(step**2) + O(1e-16 / step)
    finite = (loss(step) - loss(-step)) / (2 * step)
    analytic = float(sum((grads[grad.gradients[k]] * direction[k]).sum()
                         for k in grad.gradients))
    return finite, analytic, grads


def _check_derivation(cascade: Cascade, grad, report) -> bool:
    """The gradient cascade against finite differences of the oracle at two small
    random points (relative 1e-6, the differences' own error at a step of 1e-6)."""
    sizes = {r: 3 for r in drawn_ranks(cascade)}
    import math

    worst, checked = 0.0, 0
    for seed in (0, 1):
        try:
            finite, analytic, _ = finite_differences(cascade, grad, sizes, seed)
        except Exception as error:  # noqa: BLE001 - sizes the spec cannot bind
            report(f"note: the gradient cascade is not checked against finite differences "
                   f"({type(error).__name__}: {str(error).splitlines()[0][:200]})")
            return True
        if not math.isfinite(finite):
            continue        # the spec's own value is not finite here (x ** y at x < 0)
        checked += 1
        error = abs(finite - analytic) / max(1.0, abs(finite))
        worst = max(worst, error)
        if not error <= 1e-6:
            report(f"gradient cascade vs central differences of the oracle (float64, sizes "
                   f"{sizes}, seed {seed}): MISMATCH: {analytic!r} against {finite!r}")
            return False
    if not checked:
        report("note: the gradient cascade is not checked against finite differences: the "
               "spec's value is not finite at the random points tried")
        return True
    report(f"gradient cascade vs central differences of the oracle (float64, {checked} "
           f"random point{'s' if checked > 1 else ''}): ok (relative error {worst:.1e})")
    return True


def _backward_kernels(module, training: dict, inputs: dict, case: Case):
    """A 16-bit case of a module compiled with train=True: its backward's kernels
    (_triton_backward) on what its training forward (_triton_saving) saved and a random
    cotangent, against the backward they compute (SCHEDULE["training"]["backward"])
    evaluated by the oracle on the same saved values, the tolerance widened by the first-
    order effect of the kernels' rounded dot operands, as for a forward. (The forward's
    own values are checked by the forward comparison.) Returns (the backward cascade,
    what it was fed, the comparisons)."""
    import torch

    from .diagnostics import Source
    from .loader import load_source

    backward = load_source(Source(training["backward"], "<SCHEDULE['training']>"))
    dtype = getattr(torch, case.dtype)
    outputs, saved = module._triton_saving(*inputs.values(), {})
    generator = torch.Generator().manual_seed(case.seed)
    cotangents = tuple(torch.randn(tuple(o.shape), generator=generator).to(o.device, dtype)
                       for o in outputs)
    grads = module._triton_backward(*inputs.values(), saved, cotangents, {})
    feed = {**inputs, **{training["cotangents"][o]: c
                         for o, c in zip(module.OUTPUTS, cotangents)},
            **{name: value for (name, _), value in zip(training["saved"], saved)}}
    gradient_of = {g: x for x, g in training["gradients"].items()}
    names = list(inputs)
    got = tuple(grads[names.index(gradient_of[o])].to(dtype) for o in backward.outputs)
    rounded = training["rounded"]
    return backward, feed, compare(backward, feed, got, case.dtype,
                                   rounding=DotRounding(backward, rounded) if rounded else None)


def merged_outputs(module, cascade: Cascade, inputs: dict):
    """The outputs of a module compiled with --merge, through its public pieces: the
    streamed rank cut into three ranges (fewer where it is shorter), `partial` on each,
    `merge` left to right, `finish` (for a prefix combine, each range's outputs from the
    merge of the states before it)."""
    import torch

    merge = module.MERGE
    rank = merge["rank"]
    holder = next(t for t in cascade.inputs if rank in t.ranks)
    size = inputs[holder.name].shape[holder.ranks.index(rank)]
    bounds = sorted({0, size // 3, 2 * size // 3, size})
    state = None
    pieces = []
    for start, stop in zip(bounds, bounds[1:]):
        shard = [value.narrow(t.ranks.index(rank), start, stop - start)
                 if rank in t.ranks else value
                 for t, value in zip(cascade.inputs, inputs.values())]
        keywords = {merge["start"]: start, merge["count"]: size}
        part = module.partial(*shard, **keywords)
        if merge["kind"] == "prefix":   # this range's outputs from the state before it
            entering = state if state is not None else \
                {name: torch.zeros_like(value) for name, value in part.items()}
            finished = module.finish(entering, *shard, **{
                k: v for k, v in keywords.items() if k in merge["finish_keywords"]})
            pieces.append(finished if isinstance(finished, tuple) else (finished,))
        state = part if state is None else module.merge(state, part)
    if merge["kind"] == "prefix":
        joined = tuple(torch.cat([p[n] for p in pieces], dim=merge["output_ranks"][o].index(
            rank)) for n, o in enumerate(cascade.outputs))
        return joined[0] if len(joined) == 1 else joined
    keywords = {name: {merge["start"]: 0, merge["count"]: size}[name]
                for name in merge["finish_keywords"]}
    return module.finish(state, *(inputs[name] for name in merge["finish_inputs"]),
                         **keywords)


def _detached(outputs):
    return tuple(o.detach() for o in outputs) if isinstance(outputs, tuple) else \
        outputs.detach()


def run_check(cascade: Cascade, module, backends: tuple[str, ...], examples: int = 50,
              report=print, shrink: bool = True, record=None, trying=None) -> bool:
    """Compare each backend with the oracle on `examples` hypothesis cases; report each
    case, and on a mismatch the smallest failing case hypothesis finds (with
    `shrink=False`, the first it meets: a test that expects a mismatch needs no smaller
    one). True if all pass. `record(dict)` receives each verdict as data (backend,
    case, sizes, dtype, check, verdict: ok / MISMATCH / skip / ERROR, detail);
    `trying(case)` is called as each case starts (a progress bar's text)."""
    import warnings

    from hypothesis import HealthCheck, Phase, given, reject, settings
    from hypothesis.errors import Unsatisfiable

    import torch

    from .transform.grad import GradientUnsupported, gradient

    cls = getattr(module, module.__all__[0])
    rounding = dot_rounding(cascade, module)
    failures: list[str] = []
    try:
        grad = gradient(cascade)
    except GradientUnsupported as why:
        grad = None
        report(f"note: gradients are not checked: {why}")
    if grad is not None and not _check_derivation(cascade, grad, report):
        return False
    # Kernels run where the data is: on the GPU when there is one.
    device = "cuda" if torch.cuda.is_available() else None
    training = module.SCHEDULE.get("training") if hasattr(module, "_triton_backward") \
        else None

    def note(backend: str, case: Case, check: str, verdict: str, detail: str = "") -> None:
        if record is not None:
            record({"backend": backend, "case": case.describe(), "sizes": dict(case.sizes),
                    "dtype": case.dtype, "check": check or "outputs", "verdict": verdict,
                    "detail": detail})

    def run(case: Case) -> None:
        if trying is not None:
            trying(case)
        inputs = case_inputs(cascade, case, device)
        if not representable(cascade, inputs, case.dtype):
            report(f"  skip   {case.describe()}: exact values exceed float32 / "
                   f"{case.dtype} range")
            note("", case, "", "skip", "exact values exceed the dtype's range")
            reject()
        # float32 cases check gradients too, from the same call: the inputs as leaves
        # (detached views: their strides and broadcasts stay).
        differentiate = grad is not None and case.dtype == "float32"
        for backend in backends:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                layer = cls(backend=backend)
            leaves = {k: v.detach().requires_grad_(differentiate and v.is_floating_point())
                      for k, v in inputs.items()}
            try:
                with torch.set_grad_enabled(differentiate):
                    outputs = layer(*leaves.values())
            except Exception as error:  # noqa: BLE001 - reported with its case, below
                detail = f"raised {type(error).__name__}: {str(error).splitlines()[0][:300]}" \
                    if str(error) else f"raised {type(error).__name__}"
                report(f"  {backend:<6} {case.describe()}: ERROR {detail}")
                note(backend, case, "", "ERROR", detail)
                failures.append(f"{backend}: {case.describe()}\n    {detail}")
                raise AssertionError(detail) from None
            results = compare(cascade, inputs, _detached(outputs), case.dtype,
                              rounding=rounding if backend == "triton" else None)
            judge(results, backend, case, "", cascade, inputs, case.dtype,
                  "ill-conditioned in float32 (the oracle run in float32, with or without "
                  "flushing subnormals to zero, disagrees with float64 too)")
            if differentiate:
                cotangents = _cotangents(cascade, grad, inputs, case.seed)
                feed = {**inputs, **cotangents}
                if not representable(grad.cascade, feed, "float32"):
                    # The gradient cascade's exact values leave float32's range (an
                    # exp(qk) of a scale-100 case without a max-shift): no answer.
                    report(f"  {backend:<6} {case.describe()}, gradients: skip, exact "
                           f"values exceed float32 range")
                    note(backend, case, "gradients", "skip",
                         "exact values exceed float32's range")
                    continue
                results = _gradients(outputs, leaves, cascade, grad, inputs, cotangents)
                judge(results, backend, case, " gradients", grad.cascade, feed, "float32",
                      "gradients ill-conditioned in float32")
            elif backend == "triton" and training is not None:
                probe, feed, results = _backward_kernels(module, training, inputs, case)
                judge(results, backend, case, " backward kernels", probe, feed, case.dtype,
                      "the backward ill-conditioned in float32")
        if getattr(module, "MERGE", None) is not None:
            results = compare(cascade, inputs, merged_outputs(module, cascade, inputs),
                              case.dtype)
            judge(results, "merge", case, " partial states of 3 ranges merged", cascade,
                  inputs, case.dtype, "ill-conditioned in float32")

    def judge(results, backend: str, case: Case, what: str, probe: Cascade, inputs: dict,
              dtype: str, why: str) -> None:
        """Report a comparison; skip the case where `probe` is ill-conditioned, else
        stop at a mismatch (hypothesis then looks for a smaller case)."""
        verdict = "ok" if all(r.ok for r in results) else "MISMATCH"
        if verdict != "ok" and not well_conditioned(probe, inputs, dtype):
            report(f"  skip   {case.describe()}: {why}")
            note(backend, case, what.strip(), "skip", why)
            reject()
        report(f"  {backend:<6} {case.describe()}{what and ','}{what}: {verdict}")
        detail = "; ".join(r.describe() for r in results if not r.ok)
        note(backend, case, what.strip(), verdict, detail)
        if verdict != "ok":
            failures.append(f"{backend}{what}: {case.describe()}\n    {detail}")
            raise AssertionError(detail)

    interpreted = device is None and any(b.startswith("triton") for b in backends)
    strategy = cases(cascade, INTERPRETED_PROGRAMS if interpreted else None)
    phases = tuple(Phase) if shrink else tuple(p for p in Phase if p != Phase.shrink)
    test = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), phases=phases)(given(strategy)(run))
    try:
        test()
    except Unsatisfiable:
        report("  could not draw cases small enough for the oracle")
        return False
    except AssertionError:
        report("smallest failing case:")
        report(f"  {failures[-1]}")
        return False
    return True
