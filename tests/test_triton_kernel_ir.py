"""The kernel-level IR (schedule/kernel_ir.py): the unfused schedule lowered to it
(schedule/lowering.py) and printed as Triton (backends/triton_ir.py). Tests read the IR,
the data every target's printer reads; the printed kernels are checked against the
oracle by test_codegen.py."""

import pytest

import einsumattn
from einsumattn.analysis.presence import absent_tensors
from einsumattn.backends import names
from einsumattn.backends.triton_unfused import TritonEmitter
from einsumattn.ir import expr as ir
from einsumattn.schedule import kernel_ir as k
from einsumattn.schedule.lowering import lower_unfused
from einsumattn.schedule.unfused import einsum_schedule
from einsumattn.verify import Case, case_inputs, compare

from conftest import ROOT


def _lowered(cascade, tensor):
    einsum = cascade.einsum(tensor)
    absent = absent_tensors(cascade)
    schedule = einsum_schedule(cascade, einsum, absent)
    return schedule, lower_unfused(cascade, einsum, schedule, absent, ())


def _of(kind, item):
    return [node for node in k.nodes(item) if isinstance(node, kind)]


def test_a_mask_is_a_set_of_conditions():
    live, ok = k.Var("live"), k.Load("S", (), flag=True)
    assert k.Mask((ok, live, ok)).conditions == (ok, live)
    assert k.Mask((ok, live)) != k.Mask((live,))


def test_an_unfused_kernel_reads_memory_only_through_its_schedules_loads():
    """Every read is a Load of a tensor the schedule says the kernel reads (or, for a
    recurrence, its own earlier steps); a coordinate is clamped only where it could leave
    its extent: the causal scores' Q and K reads are at their own ranks."""
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    for einsum in cascade.einsums:
        schedule, kernel = _lowered(cascade, einsum.tensor)
        loaded = {load.tensor for load in _of(k.Load, kernel) if not load.flag}
        own = {einsum.tensor} if einsum.iterative is not None else set()
        assert loaded <= set(schedule.inputs) | own
        assert set(schedule.inputs) <= loaded | {load.tensor for load in _of(k.Load, kernel)}
        assert not _of(ir.Read, kernel)
    _, scores = _lowered(cascade, "QK")
    for load in _of(k.Load, scores):
        assert all(c.clamp is None for c in load.coordinates)


def test_an_absent_tensor_is_tested_once_per_mask():
    """S is absent above the diagonal and read twice in T's terms: T's term mask holds
    S's presence flag once, and T stores its own flags (the filter of S carried on)."""
    cascade = einsumattn.load(
        "dims P, M\ninput X[p, m]\nS[p, m] = X[p, m] where m <= p\n"
        "T[p] = sum[m] S[p, m] * S[p, m]\noutput T\n")
    _, kernel = _lowered(cascade, "T")
    (ok,) = [s for s in _of(k.Let, kernel) if s.name == "ok"]
    flags = [load for load in _of(k.Load, ok.value) if load.flag]
    assert [load.tensor for load in flags] == ["S"]
    _, scores = _lowered(cascade, "S")
    (flag_store,) = [s for s in _of(k.Store, scores) if s.flag]
    tests = _of(k.Test, flag_store.value)
    assert [ir.to_text(t.expr) for t in tests] == ["m <= p"] and not tests[0].integer


def test_loops_of_a_reduction_and_a_recurrence():
    """A reduction loops over its reduced points in tiles of RBLOCK and accumulates with
    its own operation; a recurrence steps in order with a barrier before each step."""
    cascade = einsumattn.load(ROOT / "examples" / "gla_recurrent.attn")
    recurrences = [e for e in cascade.einsums if e.iterative is not None]
    assert recurrences
    schedule, kernel = _lowered(cascade, recurrences[0].tensor)
    (steps, *_) = _of(k.Loop, kernel)
    assert steps.var == "step" and isinstance(steps.body[0], k.Barrier)
    assert [loop.kind.value for loop in schedule.loops][0] == "recurrence steps"
    causal = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    _, maximum = _lowered(causal, "GM")
    (tiles,) = _of(k.Loop, maximum)
    (accumulate,) = _of(k.Accumulate, tiles)
    assert tiles.step == k.Var("RBLOCK") and accumulate.op == "max"
    assert _of(k.Reduce, accumulate)[0].axis == 1


@pytest.mark.parametrize("example", ["causal_softmax", "gla_recurrent", "eca"])
def test_lowered_unfused_kernels_agree_with_the_oracle(tmp_path, example):
    """The printed IR runs (Triton's interpreter) and computes what the spec says."""
    from einsumattn.codegen.compile import compile_to_file, import_file
    path = ROOT / "examples" / f"{example}.attn"
    cascade = einsumattn.load(path)
    module = import_file(compile_to_file(path, tmp_path, rewrite=False), f"ir_{example}")
    sizes = {r: 5 for r in cascade.ranks if not cascade.ranks[r].fixed}
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 3))
    layer = getattr(module, names.class_name(cascade.name))(backend="triton-unfused")
    results = compare(cascade, inputs, layer(*inputs.values()), "float32")
    assert all(r.ok for r in results), [r.describe() for r in results]
    emitter = TritonEmitter(names.rename(cascade))
    assert len(emitter.kernels()) == len(cascade.einsums)


def _loop_kernel(cascade):
    from einsumattn.schedule.lowering import lower_loops
    lowered = lower_loops(cascade)
    return lowered.schedule, lowered.body


def test_the_loop_schedule_lowers_to_the_same_ir():
    """GLA's recurrent kernel: one loop over the steps of t, S carried (its value before
    the step is `S_at`), every input read a Load of the schedule's inputs masked by the
    live lanes of its own tile dimensions, and the output stored in its live lanes."""
    cascade = einsumattn.load(ROOT / "examples" / "gla_recurrent.attn")
    schedule, kernel = _loop_kernel(cascade)
    (steps,) = [loop for loop in _of(k.Loop, kernel)]
    assert steps.var == "t" and schedule.carried == ("S",)
    assert [s.name for s in steps.body if isinstance(s, k.Let) and s.note] == ["S_at"]
    loads = _of(k.Load, kernel)
    assert {load.tensor for load in loads} == set(schedule.inputs)
    for load in loads:
        assert all(isinstance(c, k.Expand) and c.value.name.endswith("_live")
                   for c in load.mask.conditions)
    (store,) = _of(k.Store, kernel)
    assert store.tensor == "O" and store in steps.body
    assert [c.value.name for c in store.mask.conditions] == [f"{schedule.row}_live"]


def test_the_loop_schedules_tiles_accumulate_across_a_loop():
    """A pooled sum over (h, w) and a product with it: two passes over the flattened
    tiles of (h, w); the first accumulates the sum (a Reduce over the lanes' axis), the
    second recomputes the tile and stores O."""
    cascade = einsumattn.load(
        "dims B, C, H, W\ninput X[b, c, h, w]\nG[b, c] = sum[h, w] X[b, c, h, w]\n"
        "O[b, c, h, w] = X[b, c, h, w] * G[b, c]\noutput O\n")
    schedule, kernel = _loop_kernel(cascade)
    assert schedule.form.value == "tiles" and schedule.loops[0].over == ("h", "w")
    first, second = _of(k.Loop, kernel)
    (accumulate,) = _of(k.Accumulate, first)
    assert accumulate.name == "G" and accumulate.op == "sum"
    assert _of(k.Reduce, accumulate)[0].axis == 1 and not _of(k.Store, first)
    assert [store.tensor for store in _of(k.Store, second)] == ["O"]


@pytest.mark.parametrize("rewrite", [True, False], ids=["split", "passes"])
def test_every_triton_schedule_loads_through_the_ir(monkeypatch, rewrite):
    """One load path: the attention schedule's reads of Q, K and V (the split one and the
    spec's own passes), like the lowered schedules', are kernel IR Loads printed by the
    IR's printer, each masked unless it is one address per program or a TMA load (which
    reads 0 past the tensor)."""
    from einsumattn.backends import triton_ir
    from einsumattn.backends.module import Plan
    from einsumattn.backends.triton_fused import fuse
    seen = []
    real = triton_ir._NODES[k.Load]

    def recording(printer, node, context):
        seen.append(node)
        return real(printer, node, context)
    plan = Plan(einsumattn.load(ROOT / "examples" / "causal_softmax.attn"), rewrite=rewrite)
    monkeypatch.setitem(triton_ir._NODES, k.Load, recording)
    kernel = fuse(names.rename(plan.kernel))
    assert {load.tensor for load in seen} == set(kernel.schedule.inputs) == {"Q_", "K_", "V_"}
    assert all(isinstance(load.mask, k.Mask) or isinstance(load.address, k.Described)
               for load in seen)


def _fused(path, rewrite):
    from einsumattn.backends.module import Plan
    from einsumattn.backends.triton_fused import fuse
    plan = Plan(einsumattn.load(path), rewrite=rewrite)
    return fuse(names.rename(plan.kernel))


def test_the_split_attention_kernel_is_one_key_tile_loop_with_two_dots():
    """Causal softmax, online (split M -> M1, M0): the Q tile is loaded once, before the
    loop (hoisted); one Loop over the steps m1, its bounds the schedule's (a causal
    row tile stops at the diagonal: an upper bound); inside it Q K^T is a Dot of the
    hoisted Q tile and the K tile transposed, no operand rounded, and P V a Dot of the
    masked probabilities and the V tile, one operand rounded: the schedule's DotPlans."""
    kernel = _fused(ROOT / "examples" / "causal_softmax.attn", rewrite=True)
    plans = {d.tensor: d for d in kernel.schedule.dots}
    # The steps below the diagonal without masks (schedule/interior.py), then the rest.
    interior, loop = _of(k.Loop, kernel.body)
    assert interior.stop == loop.start and not _of(k.Test, interior.body)
    assert loop.var == "m1_" and loop in kernel.body and loop.step is None
    assert kernel.schedule.passes[0].bounds and _of(k.Extremum, loop.stop)
    (hoisted,) = [s for s in kernel.body[:kernel.body.index(interior)]
                  if isinstance(s, k.Let) and s.name == "QK_sum__rows"]
    assert [load.tensor for load in _of(k.Load, hoisted.value)] == ["Q_"]
    dots = {s.name: s.value for s in loop.body
            if isinstance(s, k.Let) and isinstance(s.value, k.Dot)}
    assert set(dots) == {"QK_sum_", "LSNV_"} == set(plans)
    scores, values = dots["QK_sum_"], dots["LSNV_"]
    assert scores.left == k.Var("QK_sum__rows") and scores.transposed
    assert (scores.rounded, values.rounded) == (plans["QK_sum_"].rounded,
                                                plans["LSNV_"].rounded) == (0, 1)
    # each tile read once per call: by TMA, or through pointers (the host's flag)
    for tile, tensor in ((scores.right, "K_"), (values.right, "V_")):
        assert isinstance(tile, k.Specialized) and tile.flag == "TMA"
        assert [load.tensor for load in _of(k.Load, tile.if_true)] == [tensor]
        assert [load.tensor for load in _of(k.Load, tile.if_false)] == [tensor]
    assert not values.transposed and values.left.op == "where"
    assert not _of(k.Load, values.left)      # probabilities: computed, so rounded


def test_the_spec_passes_are_one_key_tile_loop_each():
    """Causal softmax with its own three passes: per pass, a Loop over the key tiles with
    masks (start, in steps of the key tile knob, stopped at the diagonal) and one over the
    interior tiles without them, Q K^T recomputed as a Dot in each, the maximum and the
    sum accumulated across tiles, and P V a Dot summed into its accumulator in the last."""
    kernel = _fused(ROOT / "examples" / "causal_softmax.attn", rewrite=False)
    loops = _of(k.Loop, kernel.body)
    masked = [loop for loop in loops if any(isinstance(s, k.Let) and s.name == "lanes"
                                            for s in loop.body)]
    interior = [loop for loop in loops if loop not in masked]
    assert len(masked) == len(interior) == len(kernel.schedule.passes) == 3
    # per pass: the diagonal's tiles, then the interior ones (sums, maxima: any order)
    assert loops == [loop for pair in zip(masked, interior) for loop in pair]
    assert all(loop in kernel.body and loop.var == "start" for loop in loops)
    assert all(loop.step == k.Var("m__BLOCK") and _of(k.Extremum, loop.stop)
               for loop in masked)
    assert all(masked_loop.start == interior_loop.stop
               for masked_loop, interior_loop in zip(masked, interior))
    for loop in loops:
        (scores,) = [s.value for s in loop.body if isinstance(s, k.Let) and s.name == "QK_"]
        (dot,) = _of(k.Dot, scores)
        assert dot.transposed and dot.rounded == 0 and dot.left == k.Var("QK__rows")
    for group in (masked, interior):
        accumulated = [[(s.name, s.op, type(s.value).__name__) for s in loop.body
                        if isinstance(s, k.Accumulate)] for loop in group]
        assert accumulated == [[("GM_", "max", "Reduce")], [("SD_", "sum", "Reduce")],
                               [("AV_", "sum", "Dot")]]
        (av,) = [s.value for s in group[2].body if isinstance(s, k.Accumulate)]
        assert av.rounded == kernel.schedule.dot("AV_").rounded == 1
    # no masks of keys or rows in the interior (a held feature's end, `e < E`, stays)
    assert not any(isinstance(n, k.Test) or n in (k.Var("lanes"), k.Var("row_live"))
                   for loop in interior for n in k.nodes(loop.body))
    # every load reads at an address made before the loops (a base pointer the loop
    # carries, moved at the end of each step, plus a tile of offsets)
    for loop in interior:
        moved = {s.name for s in loop.body if isinstance(s, k.Let)
                 and isinstance(s.value, k.Advance) and s.value.pointers == k.Var(s.name)}
        loads = [n for n in k.nodes(loop.body) if isinstance(n, k.Load)]
        # (or, where the host's TMA flag says, through the GPU's tensor memory accelerator)
        assert moved and all(isinstance(n.address, k.Described) or n.address is not None and
                             {v.name for v in _of(k.Var, n.address)} & moved for n in loads)
        assert {n.tensor for n in loads if isinstance(n.address, k.Described)} == \
            {n.tensor for n in loads} <= {"K_", "V_"}


# The window without its sinks: every key a row sees is within W of it, so a pass starts
# at the window's first tile.
WINDOW = (ROOT / "examples" / "sliding_window_sinks.attn").read_text().replace(
    "(p - m < W or m < S)", "p - m < W")


@pytest.mark.parametrize("rewrite", [True, False], ids=["split", "passes"])
def test_a_window_starts_and_stops_its_key_tile_loops_at_its_bounds(rewrite):
    """Sliding window attention: every pass's loop starts at the tile of the window's
    first key (a kernel argument the host computes from W, rounded outwards) and stops
    at the diagonal, as the schedule's proved bounds say."""
    kernel = _fused(WINDOW, rewrite)
    loops = _of(k.Loop, kernel.body)
    if rewrite:
        # The split's one loop: the steps before the window's full tiles, those without
        # masks, the rest (schedule/interior.py); together the schedule's bounds.
        first, interior, rest = loops
        assert first.stop == interior.start and interior.stop == rest.start
        assert not _of(k.Test, interior.body) and _of(k.Test, first.body)
        loops = [k.Loop(first.var, first.start, rest.stop, None, first.body)]
    else:
        # Per pass: the tiles with masks before the window's full tiles and after them,
        # then those without masks; together the pass's bounds.
        passes = [loops[i:i + 3] for i in range(0, len(loops), 3)]
        loops = []
        for before, after, interior in passes:
            assert before.stop == interior.start and interior.stop == after.start
            assert not _of(k.Test, interior.body) and _of(k.Test, before.body)
            loops.append(k.Loop(before.var, before.start, after.stop, before.step,
                                before.body))
    assert len(loops) == len(kernel.schedule.passes)
    for loop, schedule_pass in zip(loops, kernel.schedule.passes):
        assert sorted(b.side for b in schedule_pass.bounds) == ["lower", "upper"]
        assert _of(k.Quotient, loop.start) and _of(k.Extremum, loop.stop)
        assert k.Var("lower_offset") in _of(k.Var, loop.start)


def test_the_attention_schedule_is_lowered_in_schedule_and_printed_as_it_is():
    """The window's lowering, read without a printer (schedule/lower_attention.py): the
    offset of the window's first key is an `Offset` the host computes, `1 - W` rounded
    down (a fractional W visits more tiles, never fewer). The printed kernel keeps the
    statements and the schedule it was printed from."""
    import sympy
    from einsumattn.backends.module import Plan
    from einsumattn.backends.triton_fused import fuse
    from einsumattn.schedule.lower_attention import lower_attention
    from einsumattn.schedule.lowering import Offset
    cascade = names.rename(Plan(einsumattn.load(WINDOW), rewrite=False).kernel)
    lowered = lower_attention(cascade)
    (offset,) = lowered.offsets
    assert isinstance(offset, Offset) and (offset.name, offset.rounding) == ("lower_offset",
                                                                            "floor")
    (W,) = offset.value.free_symbols
    assert W.name == "W_" and sympy.simplify(offset.value - (1 - W)) == 0
    kernel = fuse(cascade)
    assert kernel.body == lowered.body and kernel.schedule == lowered.schedule


@pytest.mark.parametrize("example", ["gla_recurrent", "eca"])
def test_every_fused_kernel_keeps_the_kernel_ir_it_was_printed_from(example):
    """The loop schedule is lowered once, in schedule/ (`lower_loops`), as the attention
    schedule is: the fused kernel's record holds those statements (GLA's one kernel,
    ECA's stages), so tests and other printers read the same IR. Its body was empty
    while the loop schedule's lowering happened inside its printer."""
    from einsumattn.backends.triton_fused import fuse_stages
    from einsumattn.schedule.lowering import lower_loops
    from einsumattn.schedule.stages import cut_stages
    cascade = names.rename(einsumattn.load(ROOT / "examples" / f"{example}.attn"))
    kernels, _ = fuse_stages(cascade)
    lowered, _ = cut_stages(cascade, lower_loops)
    assert [k.schedule.form.value for k in kernels] == \
        [lk.schedule.form.value for lk in lowered]
    assert all(kernel.schedule.form.value in ("steps", "tiles") for kernel in kernels)
    for kernel, lowered_kernel in zip(kernels, lowered):
        assert kernel.body and kernel.body == lowered_kernel.body
        assert kernel.schedule == lowered_kernel.schedule
        assert {load.tensor for load in _of(k.Load, kernel.body)} == \
            set(kernel.schedule.inputs)
